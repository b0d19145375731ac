"""The web console in Debian's Chromium against the whole stack: a user's path from sign-in to a comparison.

The steps share one browser page and one stack and run in order (each test builds on the last), like a
user's session. Screenshots of every page land in docs/console/ (docs/console.md shows them).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest

from pgmeta_devstack.stack import DEMO_CONNECTION, DEMO_DATABASE, DEMO_SECRET, LocalStack
from tests.browser.session import api_client, create_token, open_sign_in, sign_in_as, submit_token

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADDED_COLUMN = "loyalty_tier"


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="pgmeta-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1280, "height": 860},
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(browser_context: Any, full_stack: LocalStack) -> Any:
    page = browser_context.new_page()
    page.set_default_timeout(30_000)
    return page


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def fill_source(page: Any, stack: LocalStack, password: str) -> None:
    page.get_by_label("Host", exact=True).fill("127.0.0.1")
    page.get_by_label("Port", exact=True).fill(str(stack.layout.postgres_port))
    page.get_by_label("Username", exact=True).fill("postgres")
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("Database", exact=False).fill(DEMO_DATABASE)


def new_extraction(page: Any) -> None:
    page.get_by_role("link", name="New extraction").first.click()
    page.get_by_role("heading", name="New extraction").wait_for()


def test_sign_in(page: Any, full_stack: LocalStack) -> None:
    open_sign_in(page, full_stack)
    shot(page, "sign-in")
    submit_token(page, full_stack)
    page.get_by_text("No runs yet").wait_for()
    shot(page, "runs-empty")


def test_wrong_password_is_a_clear_error_on_the_form(page: Any, full_stack: LocalStack) -> None:
    new_extraction(page)
    fill_source(page, full_stack, "not-the-password")
    page.get_by_role("button", name="Test connection").click()
    alert = page.locator("#form-message .alert.error")
    alert.wait_for()
    assert "rejected the username or password" in alert.inner_text()
    assert page.get_by_label("Password", exact=True).get_attribute("aria-invalid") == "true"
    assert page.locator('#checks li[data-check="auth"]').get_attribute("data-state") == "failed"
    shot(page, "wrong-password")


def test_connection_checks_pass_and_two_schemas_are_picked(page: Any, full_stack: LocalStack) -> None:
    new_extraction(page)
    fill_source(page, full_stack, full_stack.demo_password())
    page.get_by_role("button", name="Test connection").click()
    page.get_by_role("heading", name="Every check passed").wait_for()
    states = page.locator("#checks li").evaluate_all("items => items.map(i => i.dataset.state)")
    assert states == ["passed"] * 5, states
    page.get_by_label("sales", exact=True).check()
    page.get_by_label("inventory", exact=True).check()
    assert '"shop": [\n      "inventory",\n      "sales"\n    ]' in page.locator("#filter-json").inner_text()
    shot(page, "new-extraction")


def run_and_watch(page: Any, name: str | None) -> str:
    """Starts the run from the filled form and watches it reach COMPLETED on the same page (no reload);
    screenshots of it as ``name`` (None: none)."""
    page.evaluate("window.__noReload = true")
    page.get_by_role("button", name="Run extraction").click()
    page.wait_for_url(re.compile(r".*#/runs/run-[0-9a-f]+$"))
    run_id: str = page.url.rsplit("/", 1)[-1]
    page.locator("#run-status .badge.RUNNING, #run-status .badge.QUEUED, #run-status .badge.COMPLETED").first.wait_for()
    if name and page.locator("#progress").count():
        shot(page, f"{name}-progress")
    page.locator("#run-status .badge.COMPLETED").wait_for(timeout=120_000)
    assert page.evaluate("window.__noReload") is True, "the page reloaded"
    page.locator("#changes").wait_for()
    if name:
        shot(page, name)
    return run_id


def test_run_reaches_completed_live(page: Any) -> None:
    run_id = run_and_watch(page, "run")
    page.set_viewport_size({"width": 1024, "height": 760})
    try:  # the README's picture: one small screen of the run page, not the whole page
        page.screenshot(path=str(SCREENSHOTS / "readme.png"))
    finally:
        page.set_viewport_size({"width": 1280, "height": 860})
    counts = page.locator(".stats").first.inner_text()
    assert "Table" in counts and "Column" in counts
    assert page.get_by_role("button", name="Download").count() > 2
    page.get_by_role("link", name="Runs").first.click()
    page.get_by_role("link", name=run_id).wait_for()
    shot(page, "runs")


def test_open_a_table_and_its_columns(page: Any) -> None:
    page.get_by_role("link", name=re.compile(r"run-")).first.click()
    page.get_by_role("link", name="Entities").click()
    page.get_by_label("Search entities").fill("customers")
    page.get_by_label("Type").select_option("Table")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="customers", exact=True).click()
    page.get_by_role("heading", name="customers", exact=True).wait_for()
    children = page.locator("#children").inner_text()
    assert "email" in children and "Column" in children, children
    shot(page, "entity-table")
    page.locator("#children").get_by_role("link", name="email", exact=True).click()
    page.get_by_role("heading", name="email", exact=True).wait_for()
    assert "customers" in page.locator("#attributes").inner_text()


def test_a_view_shows_its_lineage(page: Any) -> None:
    page.get_by_role("link", name="Entities").click()
    page.get_by_label("Type").select_option("View")
    page.get_by_role("link", name="customer_orders", exact=True).click()
    lineage = page.locator("#lineage")
    lineage.wait_for()
    assert "customers" in lineage.inner_text() and "orders" in lineage.inner_text()
    shot(page, "entity-view")


def test_an_altered_table_is_exactly_the_change_in_the_comparison(page: Any, full_stack: LocalStack) -> None:
    with psycopg.connect(**full_stack.postgres.connect_kwargs(DEMO_DATABASE), autocommit=True) as conn:
        conn.execute(f"ALTER TABLE sales.customers ADD COLUMN {ADDED_COLUMN} text")
    new_extraction(page)
    fill_source(page, full_stack, full_stack.demo_password())
    page.get_by_role("button", name="Test connection").click()
    page.get_by_role("heading", name="Every check passed").wait_for()
    page.get_by_label("sales", exact=True).check()
    page.get_by_label("inventory", exact=True).check()
    run_and_watch(page, "run-again")
    page.get_by_role("link", name="Compare").click()
    kinds = page.locator("#compare-kinds")
    kinds.wait_for()
    assert kinds.inner_text().split("\n") == ["Created (1)", "Updated (1)", "Deleted (0)"], kinds.inner_text()
    updated = page.locator("#compare-items").inner_text()
    assert "sales/customers" in updated and "columnCount" in updated, updated
    shot(page, "compare")
    page.get_by_role("link", name="Created (1)").click()
    page.locator(f'#compare-items tr[data-qn$="/sales/customers/{ADDED_COLUMN}"]').wait_for()


def next_three_am_in_paris() -> datetime:
    """When "0 3 * * *" in Europe/Paris next fires, as UTC (03:00 exists on every day, DST included)."""
    paris = ZoneInfo("Europe/Paris")
    now = datetime.now(paris)
    due = now.replace(hour=3, minute=0, second=0, microsecond=0)
    if due <= now:
        due += timedelta(days=1)  # aware arithmetic keeps the wall time; the offset is that day's
    return due.astimezone(UTC)


def schedule_row(page: Any, schedule_id: str) -> Any:
    return page.locator(f'#schedule-list tr[data-schedule="{schedule_id}"]')


def test_a_schedule_is_created_shows_its_next_run_and_pauses(page: Any, full_stack: LocalStack) -> None:
    page.get_by_role("link", name="Schedules").click()
    page.get_by_role("heading", name="Schedules", exact=True).wait_for()
    page.get_by_text("No schedules yet").wait_for()
    shot(page, "schedules-empty")

    # A cron the API cannot read is named next to its field while it is typed, before anything is sent.
    cron = page.get_by_label("Cron expression")
    cron.fill("every day")
    page.locator("#sched-cron-error").get_by_text("is not a schedule").wait_for()
    assert cron.get_attribute("aria-invalid") == "true"
    cron.fill("0 3 * * *")
    page.locator("#sched-preview").get_by_text("Next runs:").wait_for()
    assert cron.get_attribute("aria-invalid") == "false"

    page.get_by_label("Schedule id").fill("nightly-shop")
    # The stack registers the demo server as the connection "demo"; the picker lists what is registered.
    page.locator(f'#sched-connection option[value="{DEMO_CONNECTION}"]').wait_for(state="attached")
    page.get_by_label("Connection", exact=True).select_option(DEMO_CONNECTION)
    page.get_by_label("If the previous run is still going").select_option("queue")

    # The server's refusal lands on the field it is about, too (here sent before the preview could answer).
    zone = page.get_by_label("Time zone")
    zone.fill("Mars/Olympus")
    page.get_by_role("button", name="Create schedule").click()
    page.locator("#sched-tz-error").get_by_text("unknown time zone").wait_for()
    assert schedule_row(page, "nightly-shop").count() == 0
    shot(page, "schedule-error")

    zone.fill("Europe/Paris")
    page.get_by_role("button", name="Create schedule").click()
    row = schedule_row(page, "nightly-shop")
    row.wait_for()
    expected = next_three_am_in_paris()
    with api_client(full_stack) as client:
        stored = client.get("/schedules/nightly-shop").json()
    assert datetime.fromisoformat(stored["next_due"]) == expected, stored
    assert stored["spec"]["overlap"] == "queue" and stored["spec"]["connection"] == DEMO_CONNECTION
    next_run = row.locator("td.next-run")
    assert datetime.fromisoformat(next_run.get_attribute("data-next") or "") == expected
    assert "03:00" in next_run.inner_text() and "(in " in next_run.inner_text(), next_run.inner_text()
    assert "never ran" in row.inner_text() and "Active" in row.inner_text()
    shot(page, "schedules")

    row.get_by_role("button", name="Pause").click()
    row.locator("td.state").get_by_text("Paused", exact=True).wait_for()
    assert "paused" in row.locator("td.next-run").inner_text()
    with api_client(full_stack) as client:
        paused = client.get("/schedules/nightly-shop").json()
    assert paused["paused"] is True and paused["next_due"] is None, paused

    row.get_by_role("button", name="Resume").click()
    row.get_by_text("Active").wait_for()
    assert datetime.fromisoformat(row.locator("td.next-run").get_attribute("data-next") or "") == expected

    delete = row.get_by_role("button", name="Delete")
    delete.click()
    row.get_by_role("button", name="Confirm delete").click()
    page.get_by_text("No schedules yet").wait_for()
    with api_client(full_stack) as client:
        assert client.get("/schedules/nightly-shop").status_code == 404


def focus_path(page: Any, stop: str, presses: int = 60) -> list[str]:
    """What the Tab key visits, by accessible name (label, text or aria-label), until ``stop`` is reached."""
    names: list[str] = []
    for _ in range(presses):
        page.keyboard.press("Tab")
        name = page.evaluate(
            """() => {
                const el = document.activeElement;
                if (!el || el === document.body) return "";
                const label = el.labels && el.labels.length ? el.labels[0].textContent : "";
                return (el.getAttribute("aria-label") || label || el.textContent || "").trim().split("\\n")[0];
            }"""
        )
        names.append(name)
        if name == stop:
            break
    return names


def visited_in_order(path: list[str], names: list[str]) -> bool:
    """Each of ``names`` was focused (by its name's start), in this order."""
    positions = [next((i for i, name in enumerate(path) if name.startswith(each)), -1) for each in names]
    return -1 not in positions and positions == sorted(positions)


def test_the_keyboard_reaches_every_control_in_reading_order(page: Any) -> None:
    new_extraction(page)
    page.get_by_label("Host", exact=True).wait_for()
    first = "a[href], button:not([hidden]), input, select, textarea, [tabindex]:not([tabindex='-1'])"
    assert page.evaluate(f"document.querySelector({first!r}).textContent") == "Skip to content"
    page.locator("a.skip").focus()
    path = focus_path(page, "Run extraction")
    assert path[-1] == "Run extraction", f"Tab never reached Run extraction: {path}"
    order = ["Runs", "New extraction", "Schedules", "A new source", "Host", "Port", "Database", "Username", "Password"]
    positions = [
        next(i for i, name in enumerate(path) if name.startswith(each)) for each in [*order, "Test connection"]
    ]
    assert positions == sorted(positions), path
    # The skip link jumps over the navigation (without leaving the page: routes live in the URL's hash).
    page.locator("a.skip").focus()
    page.keyboard.press("Enter")
    assert focus_path(page, "A new source", presses=1) == ["A new source"]  # the form's first control
    assert "#/new" in page.url

    page.get_by_role("link", name="Schedules").click()
    page.get_by_role("heading", name="New schedule").wait_for()
    page.locator("a.skip").focus()
    path = focus_path(page, "Create schedule")
    assert path[-1] == "Create schedule", path
    form = ["Cron expression", "Time zone", "Schedule id", "Connection", "Create schedule"]
    assert visited_in_order(path, form), path


def test_pages_fit_a_narrow_screen(page: Any) -> None:
    """At 400 px nothing scrolls sideways except wide tables inside their own scroll box."""
    page.get_by_role("link", name="Runs").first.click()
    run_link = page.get_by_role("link", name=re.compile(r"^run-")).first
    run_link.wait_for()
    run = run_link.get_attribute("href") or ""
    page.set_viewport_size({"width": 400, "height": 844})
    try:
        for name, fragment, ready in (
            ("narrow-runs", "#/runs", "main table"),
            ("narrow-new-extraction", "#/new", "main form .panel"),
            ("narrow-schedules", "#/schedules", "#new-schedule"),
            ("narrow-run", run, "#changes"),
            ("narrow-entities", f"{run}/entities?type=Table", "main table"),
            ("narrow-compare", f"{run}/compare", "#compare-kinds"),
        ):
            page.evaluate(f"location.hash = {fragment!r}")
            page.locator(ready).first.wait_for()
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"{name}: the page is {overflow} px wider than the screen"
            if name in ("narrow-runs", "narrow-new-extraction", "narrow-schedules"):
                shot(page, name)
        page.locator("main table a").first.click()  # an entity page, at the same width
        page.locator("#attributes").wait_for()
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"entity page: the page is {overflow} px wider than the screen"
    finally:
        page.set_viewport_size({"width": 1280, "height": 860})


def test_an_outsider_gets_the_sign_in_page_and_401s(browser_context: Any, full_stack: LocalStack) -> None:
    api = full_stack.layout.api_url
    outsider = browser_context.new_page()  # a tab of its own: no token in its sessionStorage
    try:
        outsider.set_default_timeout(30_000)
        outsider.goto(f"{api}/console/#/runs")
        outsider.get_by_role("heading", name="Sign in").wait_for()
        assert outsider.locator("#nav").is_hidden() and not outsider.locator("table").count()
        outsider.get_by_label("API token").fill("pgm_000000000000_not-a-token")
        outsider.get_by_role("button", name="Sign in").click()
        assert "not accepted" in outsider.locator(".alert.error").inner_text()
        assert outsider.evaluate("sessionStorage.getItem('pgmeta.token')") is None
    finally:
        outsider.close()
    for path in ("/console/api/runs", "/console/api/whoami", "/runs"):
        assert httpx.get(f"{api}{path}", timeout=10).status_code == 401
        bogus = {"Authorization": "Bearer pgm_000000000000_not-a-token"}
        assert httpx.get(f"{api}{path}", headers=bogus, timeout=10).status_code == 401


def test_a_viewer_browses_but_cannot_run_or_cancel(browser_context: Any, full_stack: LocalStack) -> None:
    api = full_stack.layout.api_url
    viewer_token = create_token(full_stack, "auditor", "viewer")
    viewer = {"Authorization": f"Bearer {viewer_token}"}
    run_id = httpx.get(f"{api}/runs", headers=viewer, timeout=10).json()[0]["run_id"]
    tab = browser_context.new_page()
    try:
        sign_in_as(tab, full_stack, viewer_token)
        assert tab.locator("#whoami").inner_text() == "token:auditor · viewer"
        run_link = tab.get_by_role("link", name=run_id, exact=True).first
        run_link.wait_for()  # the runs a viewer may read
        assert tab.get_by_role("link", name="New extraction").count() == 0
        run_link.click()
        tab.get_by_role("heading", name=re.compile(f"Run {run_id}")).wait_for()
        assert tab.get_by_role("button", name="Cancel run").count() == 0
        tab.goto(f"{api}/console/#/new")
        tab.get_by_text("may browse runs, not start them").wait_for()
        assert tab.get_by_role("button", name="Run extraction").count() == 0
        shot(tab, "viewer")
        tab.get_by_role("button", name="Sign out").click()
        tab.get_by_role("heading", name="Sign in").wait_for()
        assert tab.evaluate("sessionStorage.getItem('pgmeta.token')") is None
        tab.goto(f"{api}/console/#/runs")
        tab.get_by_role("heading", name="Sign in").wait_for()
    finally:
        tab.close()
    # The page only hides what the API itself refuses.
    run = {"source": {"host": "127.0.0.1", "port": full_stack.layout.postgres_port, "username": "postgres"}}
    assert httpx.post(f"{api}/runs", json=run | {"password": "x"}, headers=viewer, timeout=10).status_code == 403
    assert httpx.post(f"{api}/runs/{run_id}/cancel", headers=viewer, timeout=10).status_code == 403
    assert httpx.post(f"{api}/preflight", json=run | {"password": "x"}, headers=viewer, timeout=10).status_code == 403


# -- sources: registered connections, IAM ------------------------------------------------------------

FORM_CONNECTION = "shop-form"
IAM_CONNECTION = "rds-iam"
IAM_SECRET = "rds-iam-reader"  # not in the local secret store: the extractor names it, with no call to AWS
ROLE_ARN = "arn:aws:iam::123456789012:role/pgmeta-reader"


def fill_server(page: Any, stack: LocalStack) -> None:
    page.get_by_label("Host", exact=True).fill("127.0.0.1")
    page.get_by_label("Port", exact=True).fill(str(stack.layout.postgres_port))
    page.get_by_label("Username", exact=True).fill("postgres")
    page.get_by_label("Database", exact=False).fill(DEMO_DATABASE)


def sent(request_info: Any) -> Any:
    return request_info.value.post_data_json


def test_an_admin_saves_the_source_as_a_connection_and_runs_it(page: Any, full_stack: LocalStack) -> None:
    new_extraction(page)
    fill_server(page, full_stack)
    page.get_by_label("Connection name").fill(FORM_CONNECTION)
    page.get_by_label("Secret name").fill(DEMO_SECRET)
    with page.expect_request(lambda r: r.method == "PUT" and "/connections/" in r.url) as saved:
        page.get_by_role("button", name="Save as connection").click()
    port = full_stack.layout.postgres_port
    assert sent(saved) == {
        "source": {"host": "127.0.0.1", "port": port, "username": "postgres", "sslmode": "prefer", "database": "shop"},
        "secret": {"store": "secretstore", "key": DEMO_SECRET},
    }
    page.locator("#form-message .alert.ok").get_by_text(f"Connection {FORM_CONNECTION} saved").wait_for()
    # From now on the form names the connection: no password field, the connection picked.
    assert page.get_by_label("Connection", exact=True).input_value() == FORM_CONNECTION
    assert page.get_by_label("Password", exact=True).is_hidden()
    with api_client(full_stack) as client:
        stored = client.get(f"/connections/{FORM_CONNECTION}").json()
    assert stored["created_by"] == "bootstrap-admin" and stored["secret"]["key"] == DEMO_SECRET, stored

    page.get_by_role("button", name="Test connection").click()
    page.get_by_role("heading", name="Every check passed").wait_for()
    page.get_by_label("sales", exact=True).check()
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/runs")) as started:
        run_id = run_and_watch(page, None)
    assert sent(started) == {
        "connection": FORM_CONNECTION,
        "database": DEMO_DATABASE,
        "filters": {"include": {DEMO_DATABASE: ["sales"]}},
    }
    with api_client(full_stack) as client:
        run = client.get(f"/console/api/runs/{run_id}").json()
    assert run["status"] == "COMPLETED"
    assert run["connection_qualified_name"] == f"default/postgres/{FORM_CONNECTION}", run


def test_an_operator_picks_a_registered_connection_and_cannot_save_one(
    browser_context: Any, full_stack: LocalStack
) -> None:
    api = full_stack.layout.api_url
    operator_token = create_token(full_stack, "ingest", "operator")
    tab = browser_context.new_page()
    try:
        sign_in_as(tab, full_stack, operator_token, "/#/new")
        new_extraction(tab)
        tab.get_by_label("Host", exact=True).wait_for()
        # An operator types a password (ad hoc) or picks a connection: nothing to register, no IAM to set up.
        assert tab.get_by_role("button", name="Save as connection").count() == 0
        assert tab.get_by_label("Authentication").is_hidden()
        tab.get_by_label("A registered connection").check()
        tab.locator(f'#connection option[value="{DEMO_CONNECTION}"]').wait_for(state="attached")
        tab.get_by_label("Connection", exact=True).select_option(DEMO_CONNECTION)
        assert tab.get_by_label("Host", exact=True).is_hidden()
        assert tab.get_by_label("Password", exact=True).is_hidden()
        with tab.expect_request(lambda r: r.url.endswith("/preflight")) as asked:
            tab.get_by_role("button", name="Test connection").click()
        assert sent(asked) == {"connection": DEMO_CONNECTION}
        tab.get_by_role("heading", name="Every check passed").wait_for()
        states = tab.locator("#checks li").evaluate_all("items => items.map(i => i.dataset.state)")
        assert states == ["passed"] * 5, states
        tab.get_by_label("inventory", exact=True).wait_for()  # the schema tree, listed through the connection
        shot(tab, "registered-connection")
        # A link can open the form on a connection.
        tab.evaluate(f"location.hash = '#/runs'; location.hash = '#/new?connection={DEMO_CONNECTION}'")
        tab.locator(f'#connection option[value="{DEMO_CONNECTION}"]').wait_for(state="attached")
        tab.wait_for_function(f"document.getElementById('connection').value === {DEMO_CONNECTION!r}")
        assert tab.get_by_label("A registered connection").is_checked()
        assert tab.get_by_label("Host", exact=True).is_hidden()
    finally:
        tab.close()
    # The page only hides what the API itself refuses.
    operator = {"Authorization": f"Bearer {operator_token}"}
    spec = {"source": {"host": "127.0.0.1", "username": "postgres"}, "secret": {"key": DEMO_SECRET}}
    assert httpx.put(f"{api}/connections/sneaky", json=spec, headers=operator, timeout=10).status_code == 403
    assert httpx.get(f"{api}/connections", headers=operator, timeout=10).status_code == 200


def test_iam_role_shows_its_fields_and_the_servers_error(page: Any, full_stack: LocalStack) -> None:
    new_extraction(page)
    assert page.get_by_label("Role ARN").is_hidden() and page.get_by_label("AWS region").is_hidden()
    fill_server(page, full_stack)
    page.get_by_label("Authentication").select_option(label="IAM role")
    # The extractor sends an IAM token only over verify-full: the form switches to it; no password to type.
    assert page.get_by_label("TLS mode").input_value() == "verify-full"
    assert page.get_by_label("Password", exact=True).is_hidden()
    page.get_by_label("AWS region").fill("eu-west-1")
    page.get_by_label("Role ARN").fill(ROLE_ARN)
    page.get_by_label("External id").fill("pgmeta-test")
    page.get_by_label("CA bundle").select_option("system")
    # IAM keys live in a secret-store entry, which an ad-hoc request cannot name: the form says so, sends nothing.
    page.get_by_role("button", name="Test connection").click()
    assert "only a registered connection" in page.locator("#form-message .alert.error").inner_text()
    page.get_by_label("Connection name").fill(IAM_CONNECTION)
    page.get_by_label("Secret name").fill(IAM_SECRET)
    shot(page, "new-connection-iam")
    with page.expect_request(lambda r: r.method == "PUT" and "/connections/" in r.url) as saved:
        page.get_by_role("button", name="Save as connection").click()
    auth = {"method": "iam_role", "aws_region": "eu-west-1", "role_arn": ROLE_ARN, "external_id": "pgmeta-test"}
    source = {
        "host": "127.0.0.1",
        "port": full_stack.layout.postgres_port,
        "username": "postgres",
        "sslmode": "verify-full",
        "database": DEMO_DATABASE,
        "sslrootcert": "system",
        "auth": auth,
    }
    assert sent(saved) == {"source": source, "secret": {"store": "secretstore", "key": IAM_SECRET}}
    page.locator("#form-message .alert.ok").get_by_text(f"Connection {IAM_CONNECTION} saved").wait_for()
    with api_client(full_stack) as client:
        stored = client.get(f"/connections/{IAM_CONNECTION}").json()
    assert stored["source"]["auth"] == auth and stored["source"]["sslmode"] == "verify-full", stored

    # Not a fake success: the extractor's own refusal, named on the form.
    with page.expect_request(lambda r: r.url.endswith("/preflight")) as asked:
        page.get_by_role("button", name="Test connection").click()
    assert sent(asked) == {"connection": IAM_CONNECTION, "database": DEMO_DATABASE}
    page.get_by_role("heading", name="A check failed").wait_for()
    assert page.locator('#checks li[data-check="auth"]').get_attribute("data-state") == "failed"
    # The secret is read before any connection: the server was not reached, and the page does not say it was.
    assert page.locator('#checks li[data-check="reach"]').get_attribute("data-state") == "skipped"
    error = page.locator("#form-message .alert.error").inner_text()
    assert IAM_SECRET in error, error
    shot(page, "iam-error")
