// pgmeta console: one ES module, no dependencies. Hash routes; every API call carries the Bearer token.

const TOKEN_KEY = "pgmeta.token";
// Who the token belongs to and its role (GET /console/api/whoami): the page hides what the role may not do.
// Only a convenience: the API checks every call itself and answers 403 to a viewer who tries anyway.
const WHO_KEY = "pgmeta.who";
const OPERATOR_ROLES = ["operator", "admin"];

function who() {
  try {
    return JSON.parse(sessionStorage.getItem(WHO_KEY) || "null");
  } catch {
    return null;
  }
}

const mayOperate = () => OPERATOR_ROLES.includes((who() || {}).role);

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(WHO_KEY);
}
const main = document.getElementById("main");
let routeSerial = 0; // a page left behind stops updating (its live stream is aborted)
let pageAbort = new AbortController();

// -- tiny DOM helpers ------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const fmtInt = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
const fmtTime = (iso) =>
  iso ? new Date(iso).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" }) : "—";

function fmtDuration(start, end) {
  if (!start) return "—";
  const ms = (end ? new Date(end) : new Date()) - new Date(start);
  if (!(ms >= 0)) return "—";
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${Math.round(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

// Node.replaceChildren would render null as the text "null": drop empty children first.
function put(el, ...children) {
  el.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
}

const badge = (text, kind = text) => h("span", { class: `badge ${kind}` }, text);

function emptyState(title, hint, ...actions) {
  return h("div", { class: "empty" }, h("strong", {}, title), h("p", {}, hint), ...actions);
}

function errorBox(message, ...extra) {
  return h("div", { class: "alert error", role: "alert" }, message, ...extra);
}

function tableOf(headers, rows, emptyMessage) {
  if (!rows.length) return h("div", { class: "table-wrap" }, emptyMessage);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, headers.map((head) => h("th", { class: head.num ? "num" : null, scope: "col" }, head.label ?? head)))),
      h("tbody", {}, rows),
    ),
  );
}

// -- API -------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function detailText(body, status) {
  if (!body) return `HTTP ${status}`;
  if (typeof body.detail === "string") return body.detail;
  if (Array.isArray(body.detail)) {
    return body.detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  if (body.error) return body.error;
  return `HTTP ${status}`;
}

async function api(path, { method = "GET", body, signal, raw = false } = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "The pgmeta API did not answer. Is the stack up? (`make up`, then reload this page.)");
  }
  if (response.status === 401 || response.status === 403) {
    const payload = await response.json().catch(() => null);
    if (response.status === 401) {
      signOut();
      location.hash = "#/sign-in";
    }
    throw new ApiError(response.status, detailText(payload, response.status), payload);
  }
  if (raw) {
    if (!response.ok) throw new ApiError(response.status, detailText(await response.json().catch(() => null), response.status));
    return response;
  }
  const payload = await response.json().catch(() => null);
  if (!response.ok && !(payload && payload.ok === false)) throw new ApiError(response.status, detailText(payload, response.status), payload);
  return payload;
}

let openapiPaths = null;
async function apiHasRoute(path, method) {
  if (openapiPaths === null) {
    try {
      const doc = await (await fetch("/openapi.json")).json();
      openapiPaths = doc.paths || {};
    } catch {
      openapiPaths = {};
    }
  }
  return Boolean(openapiPaths[path] && openapiPaths[path][method]);
}

// Server-sent events over fetch (EventSource cannot send the Authorization header).
async function streamEvents(path, onEvent, signal) {
  const response = await api(path, { raw: true, signal });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

// -- routing ---------------------------------------------------------------------------------------

function parseHash() {
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query) };
}

function link(parts, params) {
  const query = params && [...new URLSearchParams(params)].length ? `?${new URLSearchParams(params)}` : "";
  return `#/${parts.map(encodeURIComponent).join("/")}${query}`;
}

async function route() {
  pageAbort.abort();
  pageAbort = new AbortController();
  const serial = ++routeSerial;
  const { parts, params } = parseHash();
  const signedIn = Boolean(sessionStorage.getItem(TOKEN_KEY));
  if (signedIn && !who()) {
    try {
      sessionStorage.setItem(WHO_KEY, JSON.stringify(await api("/console/api/whoami")));
    } catch {
      return; // a 401 has signed out and gone to the sign-in page
    }
  }
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("sign-out").hidden = !signedIn;
  document.querySelector('[data-nav="new"]').hidden = !mayOperate();
  const whoami = document.getElementById("whoami");
  whoami.hidden = !signedIn;
  whoami.textContent = signedIn ? `${who().name} · ${who().role}` : "";
  if (!signedIn && parts[0] !== "sign-in") {
    location.hash = "#/sign-in";
    return;
  }
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === (parts[0] || "runs")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const page = h("div", {});
  const render = (...nodes) => {
    if (serial === routeSerial) put(page, ...nodes);
  };
  put(main, page);
  try {
    if (parts[0] === "sign-in") await signInPage(render);
    else if (parts[0] === "new") await newExtractionPage(render, params);
    else if (parts[0] === "schedules") await schedulesPage(render);
    else if (parts[0] === "runs" && parts[1] && parts[2] === "entity") await entityPage(render, parts[1], params);
    else if (parts[0] === "runs" && parts[1]) await runPage(render, parts[1], parts[2] || "overview", params, pageAbort.signal);
    else await runsPage(render);
  } catch (err) {
    if (err.name === "AbortError") return;
    render(
      h("h1", {}, "Something went wrong"),
      errorBox(err.message),
      h("p", { class: "muted" }, err.status >= 500 ? "The API failed on this request; its log (make logs, or the orchestrator pod's) says why." : "Check the address, or try again."),
      h("div", { class: "actions" }, h("button", { type: "button", onclick: route }, "Try again"), h("a", { class: "button", href: "#/runs" }, "All runs")),
    );
  }
  if (serial === routeSerial && document.activeElement === document.body) main.focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
// The skip link's own "#main" would be read as a route: move the focus instead of the URL.
document.querySelector("a.skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});
document.getElementById("sign-out").addEventListener("click", () => {
  signOut();
  location.hash = "#/sign-in";
});

// -- sign in ---------------------------------------------------------------------------------------

async function signInPage(render) {
  document.title = "Sign in · pgmeta";
  const token = h("input", { type: "password", id: "token", name: "token", autocomplete: "off", required: true });
  const message = h("div", { "aria-live": "polite" });
  const form = h(
    "form",
    {
      class: "panel signin",
      onsubmit: async (event) => {
        event.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, token.value.trim());
        try {
          // The API's own check of the token (the same code as every other route), and its role.
          sessionStorage.setItem(WHO_KEY, JSON.stringify(await api("/console/api/whoami")));
          location.hash = "#/runs";
        } catch (err) {
          signOut();
          put(message, errorBox(err.status === 401 ? "That token was not accepted. Ask an admin for an API token." : err.message));
        }
      },
    },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste an API token (a local stack keeps its admin token in .pgmeta/stack/api-token). It stays in this browser tab only and is sent with every request."),
    h("div", { class: "field" }, h("label", { for: "token" }, "API token"), token),
    message,
    h("div", { class: "actions" }, h("button", { class: "primary", type: "submit" }, "Sign in")),
  );
  render(form);
  token.focus();
}

// -- runs list -------------------------------------------------------------------------------------

function sourceText(run) {
  const source = run.request && run.request.source;
  if (!source) return run.connection_qualified_name || "—";
  return `${source.username}@${source.host}:${source.port}/${source.database || "*"}`;
}

function changesText(changes) {
  if (!changes) return "—";
  return `+${fmtInt(changes.created)} ~${fmtInt(changes.updated)} −${fmtInt(changes.deleted)}`;
}

const totalCount = (counts) => Object.values(counts || {}).reduce((a, b) => a + b, 0);

async function runsPage(render) {
  document.title = "Runs · pgmeta";
  const head = h(
    "div",
    { class: "page-head" },
    h("div", {}, h("h1", {}, "Runs"), h("p", { class: "muted" }, "Every extraction, newest first.")),
    mayOperate() ? h("a", { class: "button", href: "#/new" }, "New extraction") : null,
  );
  render(head, h("p", { class: "muted" }, "Loading runs…"));
  const runs = await api("/console/api/runs?limit=100");
  const rows = runs.map((run) =>
    h(
      "tr",
      { class: "clickable" },
      h("td", {}, badge(run.status)),
      h("td", { class: "nowrap" }, h("a", { href: link(["runs", run.run_id]) }, run.run_id)),
      h("td", { class: "source" }, sourceText(run).split("@").flatMap((part, i) => (i ? [h("wbr"), part] : [part.length ? `${part}@` : part]))),
      h("td", {}, run.started_by || "—"),
      h("td", { class: "nowrap" }, fmtTime(run.created_at || run.started_at)),
      h("td", { class: "nowrap" }, fmtTime(run.finished_at || (run.status === "FAILED" ? run.updated_at : null))),
      h("td", { class: "num nowrap" }, fmtDuration(run.created_at || run.started_at, run.finished_at || (run.status === "RUNNING" || run.status === "QUEUED" ? null : run.updated_at))),
      h("td", { class: "num" }, fmtInt(totalCount(run.counts))),
      h("td", { class: "num nowrap", title: "created ~updated −deleted" }, changesText(run.changes)),
    ),
  );
  const headers = ["Status", "Run", "Source", "Started by", "Started", "Finished", { label: "Duration", num: true }, { label: "Entities", num: true }, { label: "Changes", num: true }];
  render(
    head,
    tableOf(
      headers,
      rows,
      emptyState("No runs yet", "Register a PostgreSQL source, test the connection, pick what to extract and run it.", mayOperate() ? h("a", { class: "button", href: "#/new" }, "New extraction") : null),
    ),
  );
}

// -- new extraction: source form, preflight checks, picker -----------------------------------------

const CHECKS = [
  { id: "reach", label: "Server reachable", codes: ["source_unreachable", "timeout"] },
  { id: "auth", label: "Credentials accepted", codes: ["authentication_failed", "credentials_not_found"] },
  { id: "db", label: "Database exists and may be read", codes: ["database_not_found", "insufficient_privilege"] },
  { id: "version", label: "PostgreSQL version supported (12+)", codes: [], match: /not supported/ },
  { id: "select", label: "Filters valid and select something", codes: ["invalid_request"] },
];

function checksOf(answer) {
  if (answer.ok) {
    const c = answer.counts || {};
    const facts = {
      reach: `connected, PostgreSQL ${answer.server_version}`,
      auth: "signed in",
      db: `${fmtInt(c.databases)} database(s): ${(answer.databases || []).map((d) => d.database).join(", ")}`,
      version: `PostgreSQL ${answer.server_version}`,
      select: `${fmtInt(c.schemas)} schemas, ${fmtInt(c.tables)} tables, ${fmtInt(c.views)} views, ${fmtInt(c.columns)} columns`,
    };
    return CHECKS.map((check) => ({ ...check, state: "passed", detail: facts[check.id] }));
  }
  let failed = CHECKS.findIndex((check) => check.match && check.match.test(answer.error || ""));
  if (failed < 0) failed = CHECKS.findIndex((check) => check.codes.includes(answer.error_code));
  if (failed < 0) failed = 0;
  // A secret that cannot be read fails before any connection is tried: the checks before it did not run either.
  const before = answer.error_code === "credentials_not_found" ? "skipped" : "passed";
  return CHECKS.map((check, i) => ({
    ...check,
    state: i < failed ? before : i === failed ? "failed" : "skipped",
    detail: i < failed ? (before === "passed" ? "" : "not checked") : i === failed ? answer.error : "not checked",
  }));
}

function regexLiteral(name) {
  return name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

// How a source authenticates (SourceSpec.auth.method). IAM sends an RDS auth token, signed with AWS keys that
// live in a secret-store entry: only a registered connection names one, so IAM sources are registered first.
const AUTH_METHODS = [
  ["basic", "Password"],
  ["iam_user", "IAM user"],
  ["iam_role", "IAM role"],
];
const TLS_MODES = ["prefer", "disable", "allow", "require", "verify-ca", "verify-full"];
const CONNECTION_NAME = /^[a-z][a-z0-9-]{0,62}$/;
const isAdmin = () => (who() || {}).role === "admin";

async function newExtractionPage(render, params) {
  document.title = "New extraction · pgmeta";
  if (!mayOperate()) {
    render(
      h("h1", {}, "New extraction"),
      emptyState(`Your token's role (${(who() || {}).role}) may browse runs, not start them.`, "Ask an admin for an operator token to test connections and run extractions.", h("a", { class: "button", href: "#/runs" }, "All runs")),
    );
    return;
  }
  const admin = isAdmin();
  // Where the source comes from: typed here (ad hoc), or a connection an admin registered.
  const kindNew = h("input", { type: "radio", name: "source-kind", id: "kind-new", value: "new", checked: true });
  const kindRegistered = h("input", { type: "radio", name: "source-kind", id: "kind-registered", value: "registered" });
  const connection = h("select", { id: "connection", name: "connection" }, h("option", { value: "" }, "Loading connections…"));
  const host = h("input", { type: "text", id: "host", name: "host", required: true, autocomplete: "off", placeholder: "db.example.internal" });
  const port = h("input", { type: "number", id: "port", name: "port", value: "5432", min: "1", max: "65535", required: true });
  const username = h("input", { type: "text", id: "username", name: "username", required: true, autocomplete: "off" });
  const password = h("input", { type: "password", id: "password", name: "password", required: true, autocomplete: "new-password" });
  const database = h("input", { type: "text", id: "database", name: "database", autocomplete: "off", placeholder: "all databases" });
  const auth = h("select", { id: "auth", name: "auth" }, AUTH_METHODS.map(([value, label]) => h("option", { value }, label)));
  const awsRegion = h("input", { type: "text", id: "aws-region", name: "aws-region", autocomplete: "off", placeholder: "e.g. eu-west-1" });
  const roleArn = h("input", { type: "text", id: "role-arn", name: "role-arn", autocomplete: "off", placeholder: "arn:aws:iam::123456789012:role/pgmeta-reader" });
  const externalId = h("input", { type: "text", id: "external-id", name: "external-id", autocomplete: "off" });
  const sslmode = h("select", { id: "sslmode", name: "sslmode" }, TLS_MODES.map((mode) => h("option", { value: mode }, mode)));
  const sslrootcert = h(
    "select",
    { id: "sslrootcert", name: "sslrootcert" },
    h("option", { value: "" }, "none (libpq's default)"),
    h("option", { value: "system" }, "system trust store"),
  );
  const caHint = h("p", { class: "hint", id: "ca-hint" });
  const iamHint = h(
    "p",
    { class: "hint wide-hint", id: "iam-hint" },
    "The IAM token is sent as a cleartext password, so TLS mode must be verify-full (with the RDS CA bundle). The secret holds aws_access_key_id and aws_secret_access_key (IAM role: optional, else the extractor's own AWS credentials assume the role). IAM sources run as a registered connection: save it below.",
  );
  // Save as connection (admins): the source above plus the secret-store entry that replaces a typed password.
  const connectionName = h("input", { type: "text", id: "connection-name", name: "connection-name", autocomplete: "off", placeholder: "e.g. sales", pattern: CONNECTION_NAME.source });
  const secretStore = h("input", { type: "text", id: "secret-store", name: "secret-store", autocomplete: "off", value: "secretstore" });
  const secretKey = h("input", { type: "text", id: "secret-key", name: "secret-key", autocomplete: "off", placeholder: "e.g. sales-db" });
  const saveButton = h("button", { type: "button" }, "Save as connection");
  const saveMessage = h("div", { "aria-live": "polite", id: "save-message" });
  const tempRegex = h("input", { type: "text", id: "temp-regex", placeholder: "e.g. tmp_.*" });
  const excludeViews = h("input", { type: "checkbox", id: "exclude-views" });
  const excludeEmpty = h("input", { type: "checkbox", id: "exclude-empty" });
  const formMessage = h("div", { "aria-live": "polite", id: "form-message" });
  const checksBox = h("div", { "aria-live": "polite" });
  const tree = h("div", {});
  const filterJson = h("pre", { class: "json", id: "filter-json" });
  const testButton = h("button", { type: "button" }, "Test connection");
  const runButton = h("button", { type: "submit", class: "primary" }, "Run extraction");
  const picked = new Map(); // database -> Set of schemas (empty set: whole database)
  const listed = new Map(); // database -> list of schemas
  let registered = []; // GET /connections
  let replaceArmed = ""; // a connection name the admin pressed Save for once: the second press replaces it

  const third = admin ? "wide" : ""; // Username, Authentication, Password in a row (operators: no Authentication)
  const fields = {
    connection: fieldOf("Connection", connection),
    host: fieldOf("Host", host, { cls: "wide" }),
    port: fieldOf("Port", port, { cls: "narrow" }),
    database: fieldOf("Database", database, { hint: "(empty: every database)" }),
    username: fieldOf("Username", username, { cls: third }),
    auth: fieldOf("Authentication", auth, { cls: third }),
    password: fieldOf("Password", password, { cls: third }),
    awsRegion: fieldOf("AWS region", awsRegion, { cls: third }),
    roleArn: fieldOf("Role ARN", roleArn),
    externalId: fieldOf("External id", externalId, { hint: "(optional)" }),
    sslmode: fieldOf("TLS mode", sslmode),
    sslrootcert: fieldOf("CA bundle", sslrootcert),
  };
  fields.sslrootcert.append(caHint);
  const databaseHint = fields.database.querySelector(".hint");
  const savePanel = h(
    "fieldset",
    { class: "subpanel", id: "save-connection" },
    h("legend", {}, "Save as connection"),
    h("p", { class: "hint" }, "Registers this source for everyone's runs and schedules: the password (or the AWS keys) stays in the secret store, named here instead of typed. Runs of the connection choose their own filters."),
    h(
      "div",
      { class: "fields" },
      fieldOf("Connection name", connectionName, { hint: "(a-z, 0-9, -)" }),
      fieldOf("Secret store", secretStore, { cls: "narrow" }),
      fieldOf("Secret name", secretKey, { cls: "wide" }),
    ),
    saveMessage,
    h("div", { class: "actions" }, saveButton),
  );

  const usesConnection = () => kindRegistered.checked;
  const iam = () => auth.value !== "basic";
  const chosen = () => registered.find((item) => item.name === connection.value) || null;

  // Every field exists once and is shown or hidden (not rebuilt): the focus stays where it is.
  function showFields() {
    const adHoc = !usesConnection();
    fields.connection.hidden = adHoc;
    for (const name of ["host", "port", "username", "sslmode", "sslrootcert"]) fields[name].hidden = !adHoc;
    fields.auth.hidden = !adHoc || !admin;
    fields.password.hidden = !adHoc || iam();
    fields.awsRegion.hidden = !adHoc || !iam();
    fields.roleArn.hidden = fields.externalId.hidden = !adHoc || auth.value !== "iam_role";
    iamHint.hidden = !adHoc || !iam();
    savePanel.hidden = !adHoc || !admin;
    const registeredDatabase = (chosen() || {}).database;
    databaseHint.textContent = adHoc ? " (empty: every database)" : registeredDatabase ? ` (the connection's: ${registeredDatabase})` : " (empty: every database)";
    database.placeholder = adHoc ? "all databases" : registeredDatabase || "all databases";
  }

  function resetTree() {
    picked.clear();
    listed.clear();
    put(tree, h("p", { class: "muted" }, "Test the connection to list databases and schemas."));
    put(checksBox);
    showFilters();
  }

  async function loadConnections(select) {
    try {
      registered = await api("/connections");
    } catch (err) {
      connection.replaceChildren(h("option", { value: "" }, "Connections could not be listed"));
      setFieldError(connection, err.message);
      return;
    }
    connection.replaceChildren(
      h("option", { value: "" }, registered.length ? "Choose a connection" : "No connections registered"),
      ...registered.map((item) => h("option", { value: item.name }, `${item.name} — ${item.username}@${item.host}:${item.port}/${item.database || "*"}`)),
    );
    setFieldError(connection, registered.length ? "" : admin ? "None yet: fill in a new source and Save as connection." : "None yet: an admin registers connections.");
    if (select && registered.some((item) => item.name === select)) connection.value = select;
    showFields();
  }

  async function loadCaBundles() {
    try {
      const answer = await api("/console/api/ca-bundles");
      sslrootcert.append(...answer.files.map((file) => h("option", { value: file }, file)));
      caHint.textContent = answer.directory_configured
        ? `Files of the orchestrator's CA directory (${answer.files.length}).`
        : "Only the system trust store: an admin sets PGMETA_SSLROOTCERT_DIR to offer CA files.";
    } catch {
      caHint.textContent = "";
    }
  }

  function sourceSpec() {
    const spec = { host: host.value.trim(), port: Number(port.value), username: username.value.trim(), sslmode: sslmode.value };
    if (database.value.trim()) spec.database = database.value.trim();
    if (sslrootcert.value) spec.sslrootcert = sslrootcert.value;
    if (iam()) {
      spec.auth = { method: auth.value, aws_region: awsRegion.value.trim() };
      if (auth.value === "iam_role") {
        spec.auth.role_arn = roleArn.value.trim();
        if (externalId.value.trim()) spec.auth.external_id = externalId.value.trim();
      }
    }
    return spec;
  }

  // What every request names: a registered connection (its server and secret stay with it), or the source
  // with its password inline.
  function sourceChoice(db) {
    if (usesConnection()) {
      const body = { connection: connection.value };
      const chosenDatabase = db || database.value.trim();
      if (chosenDatabase) body.database = chosenDatabase;
      return body;
    }
    const source = sourceSpec();
    if (db) source.database = db;
    return { source, password: password.value };
  }

  function filters() {
    const spec = {};
    if (picked.size) {
      spec.include = {};
      for (const [db, schemas] of picked) spec.include[regexLiteral(db)] = schemas.size ? [...schemas].sort().map(regexLiteral) : "*";
    }
    if (tempRegex.value.trim()) spec.temp_table_regex = tempRegex.value.trim();
    if (excludeViews.checked) spec.exclude_views = true;
    if (excludeEmpty.checked) spec.exclude_empty_tables = true;
    return spec;
  }

  // No filters chosen: none sent, so that a connection registered with fixed filters runs with them.
  function withFilters(body) {
    const spec = filters();
    return Object.keys(spec).length ? { ...body, filters: spec } : body;
  }

  const showFilters = () => {
    filterJson.textContent = JSON.stringify(filters(), null, 2);
  };

  function markMissing(pairs) {
    const missing = [];
    for (const [input, label, bad] of pairs) {
      setFieldError(input, bad ? `${label} is required.` : "");
      if (bad) missing.push(label);
    }
    return missing;
  }

  function validate() {
    let missing;
    if (usesConnection()) missing = markMissing([[connection, "Connection", !connection.value]]);
    else {
      if (iam()) {
        put(formMessage, errorBox("IAM authentication reads its AWS keys from a secret-store entry, which only a registered connection names: fill in Save as connection below, then test or run the connection."));
        return false;
      }
      missing = markMissing([[host, "Host", !host.value.trim()], [port, "Port", !port.value.trim()], [username, "Username", !username.value.trim()], [password, "Password", !password.value]]);
    }
    if (missing.length) {
      put(formMessage, errorBox(`Fill in ${missing.join(", ")}.`));
      return false;
    }
    return true;
  }

  function renderTree() {
    const items = [...listed.keys()].sort().map((db) => {
      const dbBox = h("input", { type: "checkbox", id: `db-${db}`, checked: picked.has(db) });
      const schemas = listed.get(db) || [];
      dbBox.addEventListener("change", () => {
        if (dbBox.checked) picked.set(db, new Set());
        else picked.delete(db);
        renderTree();
      });
      const children = schemas.map((schema) => {
        const box = h("input", { type: "checkbox", id: `schema-${db}-${schema}`, checked: picked.has(db) && picked.get(db).has(schema) });
        box.addEventListener("change", () => {
          if (!picked.has(db)) picked.set(db, new Set());
          if (box.checked) picked.get(db).add(schema);
          else picked.get(db).delete(schema);
          renderTree();
        });
        return h("li", {}, h("label", { class: "check", for: box.id }, box, schema));
      });
      return h(
        "li",
        {},
        h("label", { class: "check", for: dbBox.id }, dbBox, h("strong", {}, db), h("span", { class: "hint" }, schemas.length ? `${schemas.length} schemas` : "")),
        children.length ? h("ul", { role: "group" }, children) : null,
      );
    });
    put(tree,
      items.length ? h("ul", { class: "tree", role: "tree", "aria-label": "Databases and schemas" }, items) : h("p", { class: "muted" }, "No databases listed."),
      h("p", { class: "hint" }, "Nothing ticked: everything the role can read. A database ticked without schemas: all its schemas."),
    );
    showFilters();
  }

  async function loadTree() {
    let databases = [];
    const fixed = database.value.trim() || (usesConnection() && (chosen() || {}).database);
    if (fixed) databases = [fixed];
    else {
      const answer = await api("/metadata/databases", { method: "POST", body: sourceChoice() });
      if (!answer.ok) return;
      databases = answer.databases.filter((d) => d.can_connect).map((d) => d.name);
    }
    for (const db of databases) {
      const answer = await api("/metadata/schemas", { method: "POST", body: sourceChoice(db) });
      if (answer.ok) listed.set(db, answer.schemas);
    }
    renderTree();
  }

  async function testConnection() {
    put(formMessage);
    if (!validate()) return;
    testButton.disabled = true;
    put(checksBox, h("p", { class: "muted" }, "Testing the connection…"));
    try {
      const answer = await api("/preflight", { method: "POST", body: withFilters(sourceChoice()) });
      const checks = checksOf(answer);
      put(checksBox,
        h("h3", {}, answer.ok ? "Every check passed" : "A check failed"),
        h(
          "ul",
          { class: "checks", id: "checks" },
          checks.map((check) => h("li", { "data-check": check.id, "data-state": check.state }, h("span", {}, badge(check.state)), h("span", {}, h("strong", {}, check.label), check.detail ? h("div", { class: "muted" }, check.detail) : null))),
        ),
        answer.warnings && answer.warnings.length ? h("div", { class: "alert info" }, answer.warnings.join("; ")) : null,
      );
      if (!answer.ok) {
        const authFailed = answer.error_code === "authentication_failed";
        password.setAttribute("aria-invalid", authFailed && !usesConnection() ? "true" : "false");
        const rejected = usesConnection() ? "The server rejected the connection's credentials" : "The server rejected the username or password";
        put(formMessage, errorBox(authFailed ? `${rejected}: ${answer.error}` : answer.error));
        return;
      }
      put(formMessage, h("div", { class: "alert ok" }, "Connection works. Pick what to extract, then run."));
      if (!listed.size) await loadTree();
    } catch (err) {
      put(formMessage, errorBox(err.message));
      put(checksBox);
    } finally {
      testButton.disabled = false;
    }
  }

  async function runExtraction(event) {
    event.preventDefault();
    put(formMessage);
    if (!validate()) return;
    runButton.disabled = true;
    try {
      const answer = await api("/runs", { method: "POST", body: withFilters(sourceChoice()) });
      location.hash = link(["runs", answer.run_id]);
    } catch (err) {
      put(formMessage, errorBox(err.message));
    } finally {
      runButton.disabled = false;
    }
  }

  // An API refusal (422 with locations) lands on the fields it names; anything else in the save message.
  function showSaveErrors(err) {
    const inputs = { host, port, username, database, sslmode, sslrootcert, aws_region: awsRegion, role_arn: roleArn, external_id: externalId, key: secretKey, store: secretStore, name: connectionName };
    const details = Array.isArray(err.body && err.body.detail) ? err.body.detail : [];
    const loose = [];
    for (const detail of details) {
      const loc = (detail.loc || []).filter((part) => part !== "body" && part !== "path");
      const input = inputs[loc[loc.length - 1]];
      if (input) setFieldError(input, String(detail.msg || "").replace(/^Value error, /, ""));
      else loose.push(`${loc.join(".")}: ${detail.msg}`);
    }
    const text = details.length ? `The connection was not saved: ${details.length === 1 ? "one field needs" : `${details.length} fields need`} a change (marked above). ${loose.join("; ")}` : `The connection was not saved: ${err.message}`;
    put(saveMessage, errorBox(text.trim()));
  }

  async function saveConnection() {
    put(saveMessage);
    put(formMessage);
    const name = connectionName.value.trim();
    const missing = markMissing([
      [host, "Host", !host.value.trim()],
      [port, "Port", !port.value.trim()],
      [username, "Username", !username.value.trim()],
      [awsRegion, "AWS region", iam() && !awsRegion.value.trim()],
      [roleArn, "Role ARN", auth.value === "iam_role" && !roleArn.value.trim()],
      [connectionName, "Connection name", !name],
      [secretKey, "Secret name", !secretKey.value.trim()],
    ]);
    if (missing.length) {
      put(saveMessage, errorBox(`Fill in ${missing.join(", ")}.`));
      return;
    }
    if (!CONNECTION_NAME.test(name)) {
      setFieldError(connectionName, "A lower-case letter first, then letters, digits or '-' (63 at most).");
      put(saveMessage, errorBox("The connection name is not valid."));
      return;
    }
    if (registered.some((item) => item.name === name) && replaceArmed !== name) {
      replaceArmed = name;
      setFieldError(connectionName, `A connection named ${name} exists: press Save as connection again to replace it, or pick another name.`);
      return;
    }
    const body = { source: sourceSpec(), secret: { store: secretStore.value.trim() || "secretstore", key: secretKey.value.trim() } };
    saveButton.disabled = true;
    try {
      const saved = await api(`/connections/${encodeURIComponent(name)}`, { method: "PUT", body });
      replaceArmed = "";
      await loadConnections(saved.name);
      // The same server: what was picked stays picked; Test connection and Run extraction now name the connection.
      kindRegistered.checked = true;
      showFields();
      put(formMessage, h("div", { class: "alert ok" }, `Connection ${saved.name} saved (${saved.qualified_name}). Test connection and Run extraction now use it.`));
      connection.focus();
    } catch (err) {
      showSaveErrors(err);
    } finally {
      saveButton.disabled = false;
    }
  }

  function switchKind() {
    for (const input of Object.values(fields).map((field) => field.querySelector("input, select"))) setFieldError(input, "");
    put(formMessage);
    resetTree();
    showFields();
  }

  kindNew.addEventListener("change", switchKind);
  kindRegistered.addEventListener("change", switchKind);
  connection.addEventListener("change", () => {
    setFieldError(connection, "");
    database.value = "";
    resetTree();
    showFields();
  });
  auth.addEventListener("change", () => {
    if (iam() && sslmode.value !== "verify-full") sslmode.value = "verify-full"; // the extractor refuses an IAM token over anything less
    showFields();
  });
  testButton.addEventListener("click", testConnection);
  saveButton.addEventListener("click", saveConnection);
  // Enter in the save fields saves; it must not submit the form around them (that is Run extraction).
  for (const input of [connectionName, secretStore, secretKey]) {
    input.addEventListener("keydown", (event) => {
      if (event.key !== "Enter") return;
      event.preventDefault();
      saveConnection();
    });
  }
  for (const input of [tempRegex, excludeViews, excludeEmpty]) input.addEventListener("input", showFilters);
  for (const input of [excludeViews, excludeEmpty]) input.addEventListener("change", showFilters);
  resetTree();

  const startFrom = params && params.get("connection");
  if (startFrom) kindRegistered.checked = true;
  showFields();
  render(
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "New extraction"), h("p", { class: "muted" }, "A PostgreSQL source typed here (its password is stored encrypted for the run only), or a registered connection."))),
    h(
      "form",
      { onsubmit: runExtraction, novalidate: true, "aria-label": "Source" },
      h(
        "div",
        { class: "panel" },
        h("h2", {}, "Source"),
        h(
          "div",
          { class: "kinds", role: "radiogroup", "aria-label": "Start from" },
          h("label", { class: "check", for: kindNew.id }, kindNew, "A new source"),
          h("label", { class: "check", for: kindRegistered.id }, kindRegistered, "A registered connection"),
        ),
        h(
          "div",
          { class: "fields" },
          fields.connection,
          fields.host,
          fields.port,
          fields.database,
          fields.username,
          fields.auth,
          fields.password,
          fields.awsRegion,
          fields.roleArn,
          fields.externalId,
          iamHint,
          fields.sslmode,
          fields.sslrootcert,
        ),
        formMessage,
        checksBox,
        h("div", { class: "actions" }, testButton),
        savePanel,
      ),
      h(
        "div",
        { class: "grid2" },
        h("div", { class: "panel" }, h("h2", {}, "What to extract"), tree),
        h(
          "div",
          { class: "panel" },
          h("h2", {}, "Options"),
          h("div", { class: "field" }, h("label", { for: tempRegex.id }, "Skip tables matching", h("span", { class: "hint" }, " (regex, whole name)")), tempRegex),
          h("p", {}, h("label", { class: "check", for: excludeViews.id }, excludeViews, "Exclude views")),
          h("p", {}, h("label", { class: "check", for: excludeEmpty.id }, excludeEmpty, "Exclude empty tables")),
          h("h3", {}, "Filters sent with the run"),
          filterJson,
          h("p", { class: "hint" }, "Test connection again to count what these filters select."),
        ),
      ),
      h("div", { class: "actions" }, runButton),
    ),
  );
  (startFrom ? connection : host).focus();
  await Promise.all([loadConnections(startFrom), loadCaBundles()]);
}

// -- a run -----------------------------------------------------------------------------------------

function stats(items) {
  return h("div", { class: "stats" }, items.map(([label, value]) => h("div", { class: "stat" }, h("b", {}, fmtInt(value)), h("span", {}, label))));
}

function progressPanel(view, units) {
  const p = view.progress;
  const rows = [...units.values()].map((u) =>
    h("tr", {}, h("td", {}, u.work_unit || "server"), h("td", {}, u.stage), h("td", { class: "num" }, `${fmtInt(u.done)}${u.total ? ` / ${fmtInt(u.total)}` : ""} ${u.measure}`), h("td", { class: "muted" }, u.message || "")),
  );
  return h(
    "div",
    { class: "panel", id: "progress" },
    h("h2", {}, "Progress"),
    h("dl", { class: "facts" }, h("dt", {}, "Status"), h("dd", { id: "run-status" }, badge(view.status)), h("dt", {}, "Stage"), h("dd", { id: "run-stage" }, view.stage || (p && p.stage) || "—")),
    p && p.total ? h("progress", { max: p.total, value: p.done, "aria-label": "Progress of the current stage" }) : null,
    rows.length ? h("h3", {}, "Per database") : null,
    rows.length ? tableOf(["Unit", "Stage", { label: "Done", num: true }, "Message"], rows, "") : null,
    Object.keys(view.counts || {}).length ? h("h3", {}, "Records so far") : null,
    Object.keys(view.counts || {}).length ? stats(Object.entries(view.counts)) : null,
  );
}

async function downloadFile(runId, name) {
  const response = await api(`/runs/${encodeURIComponent(runId)}/files/${name.split("/").map(encodeURIComponent).join("/")}`, { raw: true });
  const url = URL.createObjectURL(await response.blob());
  const a = h("a", { href: url, download: name.split("/").pop() });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function runTabs(runId, current, completed) {
  const tab = (id, label) => h("a", { href: link(["runs", runId, id]), "aria-current": current === id ? "page" : null }, label);
  return h("nav", { class: "tabs", "aria-label": "Run" }, tab("overview", "Overview"), completed ? tab("entities", "Entities") : null, completed ? tab("compare", "Compare") : null);
}

async function runPage(render, runId, tabName, params, signal) {
  document.title = `${runId} · pgmeta`;
  let run = await api(`/console/api/runs/${encodeURIComponent(runId)}`, { signal }).catch((err) => {
    if (err.status === 404) return null;
    throw err;
  });
  if (!run) {
    render(h("h1", {}, "Run not found"), emptyState(`There is no run ${runId}.`, "It may have been started on another stack, or aged out of the runs index.", h("a", { class: "button", href: "#/runs" }, "All runs")));
    return;
  }
  const cancellable = mayOperate() && (await apiHasRoute("/runs/{run_id}/cancel", "post"));
  const head = () =>
    h(
      "div",
      { class: "page-head" },
      h(
        "div",
        {},
        h("p", { class: "crumbs" }, h("a", { href: "#/runs" }, "Runs"), " / ", runId),
        h("h1", {}, `Run ${runId} `, badge(run.status)),
        h("p", { class: "muted mono" }, sourceText(run)),
      ),
      h(
        "div",
        { class: "actions" },
        run.trace_url ? h("a", { class: "button", href: run.trace_url, target: "_blank", rel: "noopener" }, "Trace") : null,
        cancellable && (run.status === "RUNNING" || run.status === "QUEUED")
          ? h("button", { class: "danger", type: "button", onclick: async () => { await api(`/runs/${encodeURIComponent(runId)}/cancel`, { method: "POST" }); } }, "Cancel run")
          : null,
      ),
    );
  const completed = run.status === "COMPLETED";
  if (tabName === "entities" && completed) return entitiesTab(render, head(), runTabs(runId, "entities", true), runId, params);
  if (tabName === "compare" && completed) return compareTab(render, head(), runTabs(runId, "compare", true), run, params);

  if (run.status === "RUNNING" || run.status === "QUEUED") {
    const units = new Map();
    const live = (view) => {
      run = { ...run, ...view };
      if (view.progress) units.set(view.progress.work_unit || view.progress.stage, view.progress);
      render(head(), runTabs(runId, "overview", false), progressPanel(run, units));
    };
    live(run);
    let finished = false;
    await streamEvents(`/runs/${encodeURIComponent(runId)}/events`, (name, view) => {
      if (name !== "run") return;
      live(view);
      finished = view.status === "COMPLETED" || view.status === "FAILED";
    }, signal);
    if (!finished || signal.aborted) return;
    run = await api(`/console/api/runs/${encodeURIComponent(runId)}`, { signal });
  }
  render(head(), runTabs(runId, "overview", run.status === "COMPLETED"), ...overview(run));
}

function overview(run) {
  const sections = [];
  const m = run.manifest;
  sections.push(
    h(
      "div",
      { class: "panel" },
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Status"), h("dd", { id: "run-status" }, badge(run.status)),
        h("dt", {}, "Started"), h("dd", {}, fmtTime(run.created_at || run.started_at)),
        h("dt", {}, "Finished"), h("dd", {}, fmtTime(run.finished_at || (run.status === "FAILED" ? run.updated_at : null))),
        h("dt", {}, "Duration"), h("dd", {}, fmtDuration(run.created_at || run.started_at, run.finished_at || run.updated_at)),
        h("dt", {}, "Started by"), h("dd", {}, run.started_by || "—"),
        h("dt", {}, "Connection"), h("dd", { class: "mono" }, run.connection_qualified_name || (run.request && run.request.connection_qualified_name) || "—"),
        h("dt", {}, "Baseline"), h("dd", {}, run.previous_run_id ? h("a", { href: link(["runs", run.previous_run_id]) }, run.previous_run_id) : "none (first run of this connection)"),
        h("dt", {}, "Output"), h("dd", { class: "mono" }, run.location || "—"),
      ),
    ),
  );
  if (run.status === "FAILED") {
    sections.push(
      errorBox(
        `The run failed: ${run.error || "no reason recorded"}. `,
        h("a", { href: "#/new" }, "Check the source with Test connection"),
        " and run it again.",
      ),
    );
  }
  if (m) {
    sections.push(h("h2", {}, "Entities"), stats(Object.entries(m.counts || {}).sort()), h("p", {}, ""));
    const changes = m.changes || {};
    sections.push(
      h("h2", {}, "Changes since the baseline"),
      h("div", { id: "changes" }, stats([["created", changes.created], ["updated", changes.updated], ["unchanged", changes.unchanged], ["deleted", changes.deleted]])),
      h("p", {}, run.previous_run_id ? h("a", { href: link(["runs", run.run_id, "compare"]) }, "See what changed, entity by entity") : ""),
    );
    const problems = (run.report && run.report.problems) || [];
    sections.push(
      h("h2", {}, `Problems (${problems.length})`),
      tableOf(
        ["Stage", "Unit", "Object", "Error", "Hint"],
        problems.map((p) => h("tr", {}, h("td", {}, p.stage || ""), h("td", {}, p.unit || ""), h("td", { class: "mono" }, p.object || ""), h("td", {}, p.error || ""), h("td", { class: "muted" }, p.hint || ""))),
        emptyState("No problems", "Every selected object was extracted."),
      ),
      h("h2", { style: "margin-top:20px" }, `Output files (${(m.files || []).length + 1})`),
      tableOf(
        ["File", "Kind", { label: "Lines", num: true }, { label: "Bytes", num: true }, ""],
        [{ name: "manifest.json" }, ...(m.files || [])].map((f) =>
          h(
            "tr",
            {},
            h("td", { class: "mono" }, f.name),
            h("td", {}, f.type || f.extra || ""),
            h("td", { class: "num" }, fmtInt(f.entities ?? f.records ?? f.lines ?? null)),
            h("td", { class: "num" }, fmtInt(f.bytes ?? null)),
            h("td", {}, h("button", { type: "button", class: "link", onclick: () => downloadFile(run.run_id, f.name) }, "Download")),
          ),
        ),
        "",
      ),
    );
  } else if (run.status === "COMPLETED") {
    sections.push(errorBox("The run completed but its manifest could not be read from the object store."));
  }
  return sections;
}

// -- entities --------------------------------------------------------------------------------------

const PAGE = 50;

// Pages are cursors (the API seeks to them), so the URL of a page says where it starts, not how far in.
function pager(page, go) {
  const first = page.position + 1;
  const end = page.position + page.items.length;
  return h(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    h("span", { class: "muted" }, page.total ? `${fmtInt(first)}–${fmtInt(end)} of ${fmtInt(page.total)}` : "0 results"),
    h("button", { type: "button", disabled: !page.prev, onclick: () => go({ before: page.prev }) }, "Previous"),
    h("button", { type: "button", disabled: !page.next, onclick: () => go({ after: page.next }) }, "Next"),
  );
}

// The cursor a page URL carries, as API query parameters.
function cursorOf(params) {
  const cursor = {};
  if (params.get("after")) cursor.after = params.get("after");
  else if (params.get("before")) cursor.before = params.get("before");
  return cursor;
}

function entityLink(runId, qn, text) {
  return h("a", { href: link(["runs", runId, "entity"], { qn }) }, text ?? qn);
}

async function entitiesTab(render, head, tabs, runId, params) {
  const q = params.get("q") || "";
  const type = params.get("type") || "";
  render(head, tabs, h("p", { class: "muted" }, "Loading entities…"));
  const query = new URLSearchParams({ q, limit: PAGE, ...cursorOf(params) });
  if (type) query.set("type", type);
  const page = await api(`/runs/${encodeURIComponent(runId)}/entities?${query}`);
  const search = h("input", { type: "search", id: "entity-search", value: q, placeholder: "name or qualifiedName", "aria-label": "Search entities" });
  const typeSelect = h(
    "select",
    { id: "entity-type", "aria-label": "Type" },
    h("option", { value: "" }, "All types"),
    Object.entries(page.types).map(([name, count]) => h("option", { value: name, selected: name === type }, `${name} (${fmtInt(count)})`)),
  );
  const go = (cursor, newQ = q, newType = type) => {
    const next = { q: newQ, ...cursor };
    if (newType) next.type = newType;
    location.hash = link(["runs", runId, "entities"], next);
  };
  const form = h(
    "form",
    { class: "toolbar", role: "search", onsubmit: (e) => { e.preventDefault(); go({}, search.value.trim(), typeSelect.value); } },
    h("div", { class: "grow" }, search),
    typeSelect,
    h("button", { type: "submit" }, "Search"),
  );
  typeSelect.addEventListener("change", () => go({}, search.value.trim(), typeSelect.value));
  const rows = page.items.map((item) =>
    h("tr", { class: "clickable" }, h("td", {}, entityLink(runId, item.qualifiedName, item.name)), h("td", {}, item.typeName), h("td", { class: "mono" }, item.qualifiedName)),
  );
  render(
    head,
    tabs,
    form,
    tableOf(["Name", "Type", "qualifiedName"], rows, emptyState("No entity matches", q ? `Nothing named like “${q}”${type ? ` of type ${type}` : ""}. Try part of a name.` : "This run published no entities of this type.")),
    pager(page, (cursor) => go(cursor)),
  );
  if (q || type) search.focus();
}

function renderValue(runId, value) {
  if (value && typeof value === "object" && value.uniqueAttributes && value.uniqueAttributes.qualifiedName) {
    return h("span", {}, entityLink(runId, value.uniqueAttributes.qualifiedName), h("span", { class: "muted" }, ` (${value.typeName})`));
  }
  if (Array.isArray(value) && value.every((v) => v && v.uniqueAttributes)) return h("div", {}, value.map((v) => h("div", {}, renderValue(runId, v))));
  if (value !== null && typeof value === "object") return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
  return h("span", { class: typeof value === "string" && value.length > 60 ? "mono" : null }, String(value));
}

async function entityPage(render, runId, params) {
  const qn = params.get("qn") || "";
  document.title = `${qn.split("/").pop()} · pgmeta`;
  const data = await api(`/runs/${encodeURIComponent(runId)}/entity?${new URLSearchParams({ qualified_name: qn, limit: 100, ...cursorOf(params) })}`).catch((err) => {
    if (err.status === 404) return null;
    throw err;
  });
  const crumbs = h("p", { class: "crumbs" }, h("a", { href: "#/runs" }, "Runs"), " / ", h("a", { href: link(["runs", runId]) }, runId), " / ", h("a", { href: link(["runs", runId, "entities"]) }, "Entities"));
  if (!data) {
    render(crumbs, h("h1", {}, "Entity not found"), emptyState(`Run ${runId} has no entity ${qn}.`, "Search the run's entities instead.", h("a", { class: "button", href: link(["runs", runId, "entities"]) }, "Search entities")));
    return;
  }
  const entity = data.entity;
  const attributes = entity.attributes || {};
  const rows = Object.keys(attributes).sort().map((key) => h("tr", {}, h("th", { scope: "row" }, key), h("td", {}, renderValue(runId, attributes[key]))));
  const children = data.children;
  const childRows = children.items.map((c) => h("tr", {}, h("td", {}, entityLink(runId, c.qualifiedName, c.name)), h("td", {}, c.typeName)));
  const childGo = (cursor) => { location.hash = link(["runs", runId, "entity"], { qn, ...cursor }); };
  render(
    crumbs,
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, attributes.name || qn), h("p", { class: "muted" }, badge(entity.typeName, "QUEUED"), " ", h("span", { class: "mono" }, qn)))),
    h(
      "div",
      { class: "grid2" },
      h(
        "div",
        {},
        h("h2", {}, "Attributes"),
        h("div", { class: "table-wrap" }, h("table", { id: "attributes" }, h("tbody", {}, rows))),
      ),
      h(
        "div",
        {},
        h("h2", {}, "Parent"),
        h("div", { class: "panel" }, data.parent ? h("span", {}, entityLink(runId, data.parent.qualifiedName, data.parent.name), h("span", { class: "muted" }, ` (${data.parent.typeName})`)) : h("span", { class: "muted" }, "None: this is a top-level entity.")),
        data.lineage_inputs.length
          ? h("div", {}, h("h2", {}, "Lineage"), h("div", { class: "panel", id: "lineage" }, h("p", { class: "muted" }, "Inputs read by this view:"), h("ul", {}, data.lineage_inputs.map((input) => h("li", {}, entityLink(runId, input.qualifiedName), h("span", { class: "muted" }, ` (${input.typeName})`)))), h("p", {}, "→ ", h("strong", {}, attributes.name || qn))))
          : null,
        h("h2", {}, `Children (${fmtInt(children.total)})`),
        h("div", { id: "children" }, tableOf(["Name", "Type"], childRows, emptyState("No children", "Columns, tables and schemas list their parts here."))),
        children.next || children.prev ? pager(children, childGo) : null,
      ),
    ),
  );
}

// -- compare ---------------------------------------------------------------------------------------

function shortValue(value) {
  if (value === undefined || value === null) return h("span", { class: "muted" }, "—");
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > 160 ? `${text.slice(0, 160)}…` : text;
}

async function compareTab(render, head, tabs, run, params) {
  const runId = run.run_id;
  const kind = params.get("kind") || "updated";
  const runs = await api("/console/api/runs?limit=200");
  const sameConnection = runs.filter((r) => r.run_id !== runId && r.status === "COMPLETED" && r.connection_qualified_name === run.connection_qualified_name);
  const base = params.get("base") || run.previous_run_id || (sameConnection[0] && sameConnection[0].run_id) || "";
  if (!base) {
    render(head, tabs, emptyState("Nothing to compare with", "This is the only completed run of its connection. Run the same source again, then compare.", mayOperate() ? h("a", { class: "button", href: "#/new" }, "New extraction") : null));
    return;
  }
  render(head, tabs, h("p", { class: "muted" }, "Comparing…"));
  const query = new URLSearchParams({ base, kind, limit: PAGE, ...cursorOf(params) });
  const result = await api(`/runs/${encodeURIComponent(runId)}/compare?${query}`);
  const go = (next) => { location.hash = link(["runs", runId, "compare"], { base, kind, ...next }); };
  const baseSelect = h(
    "select",
    { id: "compare-base", "aria-label": "Compare with run" },
    sameConnection.map((r) => h("option", { value: r.run_id, selected: r.run_id === base }, `${r.run_id} · ${fmtTime(r.created_at || r.started_at)}`)),
  );
  baseSelect.addEventListener("change", () => go({ base: baseSelect.value }));
  const kindTab = (name) => h("a", { href: link(["runs", runId, "compare"], { base, kind: name }), "aria-current": kind === name ? "page" : null }, `${name[0].toUpperCase()}${name.slice(1)} (${fmtInt(result.totals[name])})`);
  const rows = result.items.map((item) =>
    h(
      "tr",
      { "data-qn": item.qualifiedName },
      h("td", {}, badge(kind, kind)),
      h("td", {}, item.typeName),
      h("td", {}, kind === "deleted" ? h("span", { class: "mono" }, item.qualifiedName) : h("span", { class: "mono" }, entityLink(runId, item.qualifiedName))),
      kind === "updated"
        ? h("td", {}, h("table", { class: "diff" }, h("tbody", {}, (item.diff || []).map((d) => h("tr", {}, h("th", { scope: "row" }, d.attribute), h("td", { class: "diff-before" }, shortValue(d.before)), h("td", {}, "→"), h("td", { class: "diff-after" }, shortValue(d.after)))))))
        : null,
    ),
  );
  const headers = kind === "updated" ? ["Change", "Type", "qualifiedName", "Attributes (before → after)"] : ["Change", "Type", "qualifiedName"];
  render(
    head,
    tabs,
    h("div", { class: "toolbar" }, h("div", {}, h("label", { for: baseSelect.id }, "Compare with"), baseSelect), h("p", { class: "muted grow" }, `What changed from ${base} to ${runId}.`)),
    h("nav", { class: "tabs", "aria-label": "Change kind", id: "compare-kinds" }, kindTab("created"), kindTab("updated"), kindTab("deleted")),
    h("div", { id: "compare-items" }, tableOf(headers, rows, emptyState(`Nothing ${kind}`, `No entity was ${kind} between these two runs.`))),
    pager(result, (cursor) => go(cursor)),
  );
}

// -- schedules -------------------------------------------------------------------------------------

// A labelled input with a slot for its own error message (announced, and tied to the input for readers).
function fieldOf(label, input, { cls = "", hint = "" } = {}) {
  const error = h("p", { class: "field-error", id: `${input.id}-error`, "aria-live": "polite" });
  input.setAttribute("aria-describedby", error.id);
  input.fieldError = error;
  return h("div", { class: `field ${cls}` }, h("label", { for: input.id }, label, hint ? h("span", { class: "hint" }, ` ${hint}`) : null), input, error);
}

function setFieldError(input, message) {
  input.setAttribute("aria-invalid", message ? "true" : "false");
  if (input.fieldError) input.fieldError.textContent = message || "";
}

function fmtIn(iso, timeZone) {
  if (!iso) return "—";
  const when = new Date(iso);
  let text;
  try {
    text = when.toLocaleString([], { timeZone, month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZoneName: "short" });
  } catch {
    text = fmtTime(iso);
  }
  const minutes = Math.round((when - new Date()) / 60000);
  const rel = minutes < 1 ? "due now" : minutes < 90 ? `in ${minutes} min` : minutes < 48 * 60 ? `in ${Math.round(minutes / 60)} h` : `in ${Math.round(minutes / 1440)} days`;
  return `${text} (${rel})`;
}

// The schedule's source: what to read and where its password is. The only part of the schedule form that
// knows how a schedule names its source, so that naming a registered connection instead changes this alone.
function scheduleSourcePart() {
  // A schedule names a registered connection (an admin registers it: `pgmeta connections add`); the
  // connection brings the server and its credentials, so a schedule stores no password and names no secret.
  const connection = h("select", { id: "sched-connection", name: "sched-connection", required: true }, h("option", { value: "" }, "Loading connections…"));
  const database = h("input", { type: "text", id: "sched-database", name: "sched-database", autocomplete: "off", placeholder: "the connection's" });
  const hint = h("p", { class: "hint" }, "A schedule runs a registered connection: the server and its credentials stay with the connection.");
  api("/connections")
    .then((items) => {
      connection.replaceChildren(
        h("option", { value: "" }, items.length ? "Choose a connection" : "No connections registered"),
        ...items.map((item) => h("option", { value: item.name }, `${item.name} — ${item.username}@${item.host}:${item.port}/${item.database || "*"}`)),
      );
      if (!items.length) hint.textContent = "No connection is registered yet: an admin registers one with `pgmeta connections add` (docs/security.md).";
    })
    .catch((err) => {
      connection.replaceChildren(h("option", { value: "" }, "Connections could not be listed"));
      setFieldError(connection, err.message);
    });
  const element = h(
    "fieldset",
    { class: "subpanel" },
    h("legend", {}, "Source"),
    hint,
    h("div", { class: "fields" }, fieldOf("Connection", connection, { cls: "wide" }), fieldOf("Database", database, { hint: "(empty: the connection's)" })),
  );
  return {
    element,
    // The body fields this part contributes to POST /schedules.
    value() {
      const body = { connection: connection.value };
      if (database.value.trim()) body.database = database.value.trim();
      return body;
    },
    // Marks empty required fields; returns their labels.
    missing() {
      const bad = !connection.value;
      setFieldError(connection, bad ? "Connection is required." : "");
      return bad ? ["Connection"] : [];
    },
    // The input an API error location (after "body") points at, if it is one of ours.
    inputFor(loc) {
      return { connection, database }[loc[0]] || null;
    },
    focus() {
      connection.focus();
    },
  };
}

function lastRunCell(schedule) {
  const tick = (schedule.last_runs || [])[0];
  if (!tick) return h("span", { class: "muted" }, "never ran");
  const when = h("div", { class: "muted" }, fmtTime(tick.due));
  if (!tick.run_id) return h("div", {}, badge(tick.outcome.replace(/_/g, " "), "QUEUED"), when);
  return h("div", {}, h("a", { href: link(["runs", tick.run_id]) }, tick.run_id), " ", badge(tick.status || "QUEUED"), when);
}

async function schedulesPage(render) {
  document.title = "Schedules · pgmeta";
  const head = h(
    "div",
    { class: "page-head" },
    h("div", {}, h("h1", {}, "Schedules"), h("p", { class: "muted" }, "Extractions that start on a timetable (cron), in a time zone.")),
  );
  if (!(await apiHasRoute("/schedules", "get"))) {
    render(head, emptyState("Schedules are not available", "This orchestrator's API has no /schedules routes. Upgrade it, or use the CLI."));
    return;
  }
  const listBox = h("div", { id: "schedule-list", "aria-live": "polite" }, h("p", { class: "muted" }, "Loading schedules…"));
  const message = h("div", { id: "schedule-message", "aria-live": "polite" });
  const form = scheduleForm(async (created) => {
    put(message, h("div", { class: "alert ok" }, `Schedule ${created.schedule_id} created. Next run: ${fmtIn(created.next_due, created.spec.time_zone)}.`));
    await refresh();
  });

  async function act(button, path, method, done) {
    button.disabled = true;
    try {
      await api(path, { method });
      put(message, h("div", { class: "alert ok" }, done));
      await refresh();
    } catch (err) {
      put(message, errorBox(err.message));
      button.disabled = false;
    }
  }

  function row(schedule) {
    const id = schedule.schedule_id;
    const path = `/schedules/${encodeURIComponent(id)}`;
    const spec = schedule.spec;
    const toggle = schedule.paused
      ? h("button", { type: "button", onclick: (e) => act(e.currentTarget, `${path}/resume`, "POST", `Schedule ${id} resumed.`) }, "Resume")
      : h("button", { type: "button", onclick: (e) => act(e.currentTarget, `${path}/pause`, "POST", `Schedule ${id} paused: no run starts until it is resumed.`) }, "Pause");
    // Two steps instead of a modal dialog: the second press confirms, Escape or leaving the button cancels.
    const remove = h("button", { type: "button", class: "danger" }, "Delete");
    const disarm = () => {
      remove.textContent = "Delete";
      delete remove.dataset.armed;
    };
    remove.addEventListener("click", (e) => {
      if (remove.dataset.armed) act(e.currentTarget, path, "DELETE", `Schedule ${id} deleted.`);
      else {
        remove.dataset.armed = "1";
        remove.textContent = "Confirm delete";
      }
    });
    remove.addEventListener("blur", disarm);
    remove.addEventListener("keydown", (e) => e.key === "Escape" && disarm());
    const source = `connection ${spec.connection}${spec.database ? ` / ${spec.database}` : ""}`;
    return h(
      "tr",
      { "data-schedule": id },
      h("td", {}, h("strong", {}, id), h("div", { class: "muted source" }, source)),
      h("td", {}, h("span", { class: "mono" }, spec.schedule), h("div", { class: "muted" }, spec.time_zone), h("div", { class: "muted" }, `overlap: ${spec.overlap}`)),
      h("td", { class: "next-run", "data-next": schedule.next_due || "" }, schedule.paused ? h("span", { class: "muted" }, "— (paused)") : fmtIn(schedule.next_due, spec.time_zone)),
      h("td", {}, lastRunCell(schedule)),
      h("td", { class: "state" }, schedule.paused ? badge("Paused", "QUEUED") : badge("Active", "COMPLETED")),
      h("td", {}, h("div", { class: "row-actions" }, toggle, remove)),
    );
  }

  async function refresh() {
    let schedules;
    try {
      schedules = await api("/schedules");
    } catch (err) {
      put(listBox, errorBox(`Could not list the schedules: ${err.message}`, " ", h("button", { type: "button", class: "link", onclick: refresh }, "Try again")));
      return;
    }
    put(
      listBox,
      tableOf(
        ["Schedule", "When", "Next run", "Last run", "State", ""],
        schedules.map(row),
        emptyState(
          "No schedules yet",
          "A schedule starts an extraction on a timetable. Fill in the form below: a cron expression, a time zone and the source.",
          h("button", { type: "button", onclick: () => form.focus() }, "Create a schedule"),
        ),
      ),
    );
  }

  render(head, listBox, message, form.element);
  await refresh();
}

function scheduleForm(onCreated) {
  const scheduleId = h("input", { type: "text", id: "sched-id", autocomplete: "off", placeholder: "e.g. nightly-sales", pattern: "[a-z0-9][a-z0-9-]{0,62}" });
  const cron = h("input", { type: "text", id: "sched-cron", autocomplete: "off", required: true, placeholder: "0 2 * * *", class: "mono-input" });
  const zoneList = h("datalist", { id: "time-zones" }, (Intl.supportedValuesOf ? Intl.supportedValuesOf("timeZone") : ["UTC"]).map((z) => h("option", { value: z })));
  const timeZone = h("input", { type: "text", id: "sched-tz", autocomplete: "off", list: zoneList.id, value: "UTC", required: true });
  const overlap = h(
    "select",
    { id: "sched-overlap" },
    h("option", { value: "skip" }, "skip the tick"),
    h("option", { value: "queue" }, "queue one run for when it ends"),
  );
  const missed = h(
    "select",
    { id: "sched-missed" },
    h("option", { value: "run_once" }, "run once at start-up"),
    h("option", { value: "skip" }, "skip the missed tick"),
  );
  const preview = h("p", { class: "hint", id: "sched-preview", "aria-live": "polite" }, "Five fields (minute hour day month weekday), six with seconds first, or @every 15m, @hourly, @daily.");
  const source = scheduleSourcePart();
  const message = h("div", { "aria-live": "polite", id: "schedule-form-message" });
  const submit = h("button", { type: "submit", class: "primary" }, "Create schedule");
  let previewSerial = 0;
  let timer = null;

  async function checkTiming() {
    const serial = ++previewSerial;
    if (!cron.value.trim()) {
      setFieldError(cron, "");
      return;
    }
    try {
      const answer = await api(`/console/api/schedule-preview?${new URLSearchParams({ schedule: cron.value.trim(), time_zone: timeZone.value.trim() || "UTC" })}`);
      if (serial !== previewSerial) return;
      setFieldError(cron, "");
      setFieldError(timeZone, "");
      preview.textContent = `Next runs: ${answer.next.map((iso) => fmtIn(iso, answer.time_zone).replace(/ \(.*\)$/, "")).join(" · ")}`;
    } catch (err) {
      if (serial !== previewSerial) return;
      preview.textContent = ""; // no next runs to show for what is there now; the error says why
      const problem = Array.isArray(err.body && err.body.detail) ? err.body.detail[0] : null;
      if (problem && problem.loc[1] === "time_zone") setFieldError(timeZone, problem.msg);
      else setFieldError(cron, problem ? problem.msg : err.message);
    }
  }
  const schedulePreview = () => {
    clearTimeout(timer);
    timer = setTimeout(checkTiming, 300);
  };
  cron.addEventListener("input", schedulePreview);
  timeZone.addEventListener("input", schedulePreview);

  function showApiErrors(err) {
    const details = Array.isArray(err.body && err.body.detail) ? err.body.detail : [];
    const loose = [];
    for (const detail of details) {
      const loc = (detail.loc || []).filter((part) => part !== "body");
      const msg = String(detail.msg || "").replace(/^Value error, /, "");
      const input = loc[0] === "schedule" || (!loc.length && /cron|schedule|@every/i.test(msg)) ? cron
        : loc[0] === "time_zone" || (!loc.length && /time zone/i.test(msg)) ? timeZone
        : loc[0] === "schedule_id" ? scheduleId
        : source.inputFor(loc);
      if (input) setFieldError(input, msg);
      else loose.push(msg);
    }
    if (err.status === 409) setFieldError(scheduleId, err.message);
    const fields = details.length === 1 ? "one field needs a change" : `${details.length} fields need a change`;
    const extra = loose.length ? ` ${loose.join("; ")}` : "";
    put(message, errorBox(details.length ? `The schedule was not created: ${fields} (marked above).${extra}` : err.message));
  }

  async function create(event) {
    event.preventDefault();
    put(message);
    for (const input of [scheduleId, cron, timeZone]) setFieldError(input, "");
    const missing = source.missing();
    if (!cron.value.trim()) {
      setFieldError(cron, "A cron expression is required.");
      missing.unshift("Cron expression");
    }
    if (missing.length) {
      put(message, errorBox(`Fill in ${missing.join(", ")}.`));
      return;
    }
    const body = { schedule: cron.value.trim(), time_zone: timeZone.value.trim() || "UTC", overlap: overlap.value, missed: missed.value, ...source.value() };
    if (scheduleId.value.trim()) body.schedule_id = scheduleId.value.trim();
    submit.disabled = true;
    try {
      const created = await api("/schedules", { method: "POST", body });
      await onCreated(created);
    } catch (err) {
      showApiErrors(err);
    } finally {
      submit.disabled = false;
    }
  }

  // The next runs (or the problem) right under the expression, and read out with it.
  const cronField = fieldOf("Cron expression", cron);
  cronField.append(preview);
  cron.setAttribute("aria-describedby", `${cron.fieldError.id} ${preview.id}`);
  const element = h(
    "form",
    { class: "panel", id: "new-schedule", onsubmit: create, novalidate: true, "aria-labelledby": "new-schedule-title" },
    h("h2", { id: "new-schedule-title" }, "New schedule"),
    h(
      "div",
      { class: "fields" },
      cronField,
      fieldOf("Time zone", timeZone),
      fieldOf("Schedule id", scheduleId, { cls: "wide", hint: "(optional)" }),
      fieldOf("If the previous run is still going", overlap, { cls: "wide" }),
      fieldOf("After downtime", missed, { cls: "wide" }),
    ),
    zoneList,
    source.element,
    message,
    h("div", { class: "actions" }, submit),
  );
  return { element, focus: () => cron.focus() };
}

route();
