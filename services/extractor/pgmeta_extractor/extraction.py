"""The extractor's work: preflight (which databases, how much), metadata listings, and the catalog of
one database written as claim-check chunks."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Generator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from sqlalchemy import Connection, text
from sqlalchemy import exc as sa_exc

from pgmeta_extractor.ahead import FingerprintsAhead
from pgmeta_extractor.auth import check_ssl_files, password_provider
from pgmeta_extractor.catalog_sql import (
    CATALOG_QUERIES,
    COUNT_QUERY,
    DATABASE_QUERY,
    DATABASES_QUERY,
    RELATION_COUNT_QUERY,
    SERVER_QUERY,
    SYSTEM_SCHEMA_FILTER,
    VIEW_DEFINITIONS_QUERY,
    VIEW_LIST_QUERY,
)
from pgmeta_extractor.change_sql import schema_fingerprints_query
from pgmeta_extractor.selection import (
    FilterPatterns,
    choose_databases,
    relation_params,
    schema_patterns_matching_nowhere,
)
from pgmeta_extractor.source import (
    PasswordProvider,
    connect,
    fetch_all,
    fetch_one,
    rows_in_background,
    server_version_num,
    stream_queries,
    stream_rows,
)
from pgmeta_shared.claimcheck import Record, batch_records
from pgmeta_shared.errors import (
    CredentialsNotFoundError,
    InvalidRequestError,
    SourceUnreachableError,
)
from pgmeta_shared.events import (
    SERVER_UNIT,
    ChunkReady,
    CredentialRef,
    DatabaseSelection,
    ExtractCompleted,
    ExtractionProgress,
    ExtractRequested,
    FilterSpec,
    MetadataRequested,
    PreflightCompleted,
    PreflightRequested,
    SourceSpec,
    Stage,
    TopicName,
)
from pgmeta_shared.keys import (
    baseline_scopes_key,
    credentials_key,
    extract_chunk_unit,
    extract_scopes_key,
    snapshot_key,
    stage_report_key,
    stage_result_key,
)
from pgmeta_shared.platform import Platform
from pgmeta_shared.progress import ProgressReporter
from pgmeta_shared.scopes import INCREMENTAL_FORMAT, Baseline, ScopeIndex, ScopePlan, request_scope

log = logging.getLogger(__name__)

MIN_SERVER_VERSION_NUM = 120000
CONNECTION_ATTEMPTS = 3

# Fingerprint queries a preflight started for the extract stage that follows in this process.
fingerprints_ahead = FingerprintsAhead()


def resolve_secret(platform: Platform, ref: CredentialRef, *, run_id: str) -> dict[str, str]:
    """The referenced secret (never logged, never put in an event).

    A state entry is a password given inline for one run: only that run's own key may be read.
    """
    if ref.kind == "secret":
        return platform.get_secret(ref.store, ref.key)
    if ref.key != credentials_key(run_id):
        raise InvalidRequestError(f"state credentials {ref.key!r} belong to another run, not {run_id!r}")
    entry = platform.get_state_json(ref.store, ref.key)
    if not isinstance(entry, dict):
        raise CredentialsNotFoundError(
            f"no credentials under state key {ref.key!r} in store {ref.store!r}",
            hint="an entry written by POST /runs lives only as long as its run",
        )
    return {str(k): str(v) for k, v in entry.items()}


def provider_for(platform: Platform, source: SourceSpec, ref: CredentialRef, *, run_id: str) -> PasswordProvider:
    check_ssl_files(source)
    secret = resolve_secret(platform, ref, run_id=run_id)
    check_secret_binding(ref, secret, source)
    return password_provider(source, secret)


def check_secret_binding(ref: CredentialRef, secret: dict[str, str], source: SourceSpec) -> None:
    """A secret that names its server (``host``, optionally ``port``) is refused for any other, before connecting."""
    bound_host = secret.get("host")
    if bound_host is None:
        return
    bound_port = int(secret.get("port") or 5432)
    if bound_host.strip().lower() != source.host.strip().lower() or bound_port != source.port:
        raise InvalidRequestError(
            f"secret {ref.key!r} is bound to {bound_host}:{bound_port}, not {source.host}:{source.port}",
            hint="a stored credential is usable only for the server it was registered for",
        )


# -- preflight ----------------------------------------------------------------------------------------


def _validate_regexes(connection: Connection, patterns: FilterPatterns, filters: FilterSpec) -> None:
    """PostgreSQL is the authority on its regex dialect: compile every pattern once, name the bad one."""
    labelled = patterns.all_regexes()
    if filters.temp_table_regex:
        labelled.append(("temp_table_regex", filters.temp_table_regex))
    for label, pattern in labelled:
        try:
            with connection.begin_nested():
                connection.execute(text("SELECT '' ~ CAST(:p AS text)"), {"p": f"^(?:{pattern})$"})
        except sa_exc.DBAPIError as exc:
            if isinstance(exc.orig, pg_errors.InvalidRegularExpression):
                detail = str(exc.orig).strip().splitlines()[0]
                raise InvalidRequestError(f"{label} is not a valid regular expression: {detail}") from None
            raise


def preflight(command: PreflightRequested, platform: Platform) -> PreflightCompleted:
    """Connects, checks version, privileges and filters, and counts what the filters select (columns only when
    the command asks: a run's extract stage counts what it reads).

    Selecting nothing is a failure, with a message saying so: an empty extraction reported as success
    would hide a wrong filter.
    """
    recorded = platform.get_json(stage_result_key(command.run_id, Stage.PREFLIGHT))
    if recorded is not None:
        return PreflightCompleted.model_validate(recorded)
    password = provider_for(platform, command.source, command.credentials, run_id=command.run_id)
    filters = command.filters
    patterns = FilterPatterns.of(filters)
    warnings: list[str] = []
    counted = ("schemas", "tables", "views", "columns") if command.count_columns else ("schemas", "tables", "views")
    counts = {"databases": 0} | dict.fromkeys(counted, 0)
    count_query = COUNT_QUERY if command.count_columns else RELATION_COUNT_QUERY
    database_records: dict[str, Record] = {}
    unmatched_schema_patterns: dict[str, set[str]] = {}

    def count_selection(connection: Connection, selection: DatabaseSelection) -> None:
        database_records[selection.database] = {"kind": "database", **fetch_one(connection, DATABASE_QUERY)}
        selected = fetch_one(connection, count_query, relation_params(selection, filters))
        for key in counted:
            counts[key] += int(selected[key])
        unmatched_schema_patterns[selection.database] = _unmatched_schema_patterns(connection, selection)

    discovery = command.source.discovery_database
    with connect(command.source, password) as connection:
        server = fetch_one(connection, SERVER_QUERY)
        if server["server_version_num"] < MIN_SERVER_VERSION_NUM:
            raise InvalidRequestError(f"PostgreSQL {server['server_version']} is not supported (12 or later is needed)")
        _validate_regexes(connection, patterns, filters)
        rows = list(stream_rows(connection, DATABASES_QUERY, patterns.database_params()))
        choice = choose_databases(rows, filters, command.source.database, patterns)
        if command.incremental_for is not None:  # as soon as the selection is known: it runs while preflight counts
            try:
                _start_fingerprints_ahead(command, command.incremental_for, choice.selected, platform, password)
            except Exception as exc:  # a speed-up only: the extract stage sends the query itself
                log.warning("run %s: fingerprints not started ahead (%s)", command.run_id, type(exc).__name__)
        # The database connected to for discovery is counted on the same connection (one connection less on
        # the usual run of one database, i.e. on every re-run's critical path).
        for selection in choice.selected:
            if selection.database == discovery:
                count_selection(connection, selection)
    problems = [f"include key {k!r} matches no database" for k in choice.unmatched_include_keys]
    warnings.extend(choice.skipped)
    counts["databases"] = len(choice.selected)
    for selection in choice.selected:
        if selection.database != discovery:
            with connect(command.source, password, selection.database) as connection:
                count_selection(connection, selection)
    problems.extend(schema_patterns_matching_nowhere(rows, choice.selected, patterns, unmatched_schema_patterns))
    if not choice.selected:
        problems.append(
            "the filters select no database" + (f" ({'; '.join(choice.skipped)})" if choice.skipped else "")
        )
    elif counts["tables"] + counts["views"] == 0:
        problems.append(
            f"the filters select 0 tables and 0 views in {counts['databases']} database(s): nothing to extract"
        )
    if problems:
        raise InvalidRequestError("; ".join(problems))  # the workflow says "preflight failed (…):"
    server_record = {"kind": "server", **server, "host": command.source.host, "port": command.source.port}
    databases = [database_records[selection.database] for selection in choice.selected]
    platform.save_chunk(command.run_id, Stage.EXTRACT, SERVER_UNIT, 0, [server_record, *databases])
    completed = PreflightCompleted(
        run_id=command.run_id,
        server_version=str(server["server_version"]),
        databases=choice.selected,
        counts=counts,
        warnings=warnings,
    )
    platform.save_json(stage_result_key(command.run_id, Stage.PREFLIGHT), completed.model_dump(mode="json"))
    return completed


def _start_fingerprints_ahead(
    command: PreflightRequested,
    connection_qn: str,
    selected: list[DatabaseSelection],
    platform: Platform,
    password: PasswordProvider,
) -> None:
    """Starts the discovered database's fingerprint query when its extract will compare them with a baseline (one
    database: a server's worth of queries at once would not be light on it). Should preflight fail after this,
    the query still ends on its own and its rows are forgotten (``AHEAD_TTL_SECONDS``)."""
    discovered = [s for s in selected if s.database == command.source.discovery_database]
    if not discovered:
        return
    selection = discovered[0]
    baseline = baseline_for(platform, connection_qn, command.filters, command.source, selection)
    if isinstance(baseline, str):
        return
    fingerprints_ahead.start(
        command.run_id, command.source, password, selection.database, schema_params(selection, command.filters)
    )


def schema_params(selection: DatabaseSelection, filters: FilterSpec) -> dict[str, Any]:
    """The fingerprint query's parameters: the selection's schema filters."""
    params = relation_params(selection, filters)
    return {"schema_include": params["schema_include"], "schema_exclude": params["schema_exclude"]}


UNMATCHED_SCHEMA_PATTERNS_QUERY = f"""
SELECT k.p AS pattern
FROM unnest(CAST(:patterns AS text[])) AS k(p)
WHERE NOT EXISTS (SELECT 1 FROM pg_namespace n WHERE {SYSTEM_SCHEMA_FILTER} AND n.nspname ~ k.p)
"""


def _unmatched_schema_patterns(connection: Connection, selection: DatabaseSelection) -> set[str]:
    """The selection's anchored include patterns that match no schema of the connected database."""
    rows = stream_rows(connection, UNMATCHED_SCHEMA_PATTERNS_QUERY, {"patterns": selection.schema_include})
    return {r["pattern"] for r in rows}


# -- metadata for filter pickers -----------------------------------------------------------------------

SCHEMA_LIST_QUERY = f"""
SELECT n.nspname AS schema_name FROM pg_namespace n WHERE {SYSTEM_SCHEMA_FILTER} ORDER BY 1
"""


def list_metadata(command: MetadataRequested, platform: Platform) -> dict[str, Any]:
    password = provider_for(platform, command.source, command.credentials, run_id=command.run_id)
    if command.listing == "databases":
        patterns = FilterPatterns.of(FilterSpec())
        with connect(command.source, password) as connection:
            rows = stream_rows(connection, DATABASES_QUERY, patterns.database_params())
            return {
                "databases": [
                    {"name": r["database_name"], "can_connect": r["can_connect"], "comment": r["comment"]} for r in rows
                ]
            }
    with connect(command.source, password) as connection:
        return {"schemas": [r["schema_name"] for r in stream_rows(connection, SCHEMA_LIST_QUERY)]}


# -- one database's catalog -----------------------------------------------------------------------------


def iter_catalog(
    connection: Connection,
    selection: DatabaseSelection,
    filters: FilterSpec,
    report: list[dict[str, str]],
    only_schemas: list[str] | None = None,
) -> Generator[Record, None, None]:
    """Every catalog record of the connected database (of ``only_schemas``, when given), tagged with its kind,
    streamed query by query (the next query computed on the server meanwhile: ``stream_queries``).

    A query that fails on the server (other than by losing the connection) is recorded in the run report
    and the other kinds are still extracted: one bad object kind does not abort the database.
    """
    params = relation_params(selection, filters) | {"only_schemas": only_schemas}
    with contextlib.closing(stream_queries(connection, list(CATALOG_QUERIES.items()), params)) as queries:
        for kind, rows in queries:
            try:
                if kind == "relation":
                    rows = with_view_definitions(rows, connection, params, selection.database, report)
                for row in rows:
                    row["kind"] = kind
                    row["database_name"] = selection.database
                    yield row
            except sa_exc.DBAPIError as exc:
                if exc.connection_invalidated:
                    raise
                report.append(_query_problem(selection.database, f"all {kind}s", exc))


VIEW_DEFINITION_BATCH = 500


def with_view_definitions(
    relations: Iterator[Record],
    connection: Connection,
    params: dict[str, Any],
    database: str,
    report: list[dict[str, str]],
) -> Iterator[Record]:
    """Adds ``view_definition`` to view rows, merged in from batches read on a second connection.

    Both streams are ordered by (schema, name). A batch that fails (say a lock timeout behind DDL on a
    view's table) is reported, and the remaining views keep no definition rather than the run failing.
    """
    definitions = view_definitions(connection, params, database, report)
    pending: tuple[str, str, str | None] | None = next(definitions, None)
    for row in relations:
        if row["relkind"] in {"v", "m"}:
            key = (row["schema_name"], row["relation_name"])
            while pending is not None and (pending[0], pending[1]) < key:
                pending = next(definitions, None)
            if pending is not None and (pending[0], pending[1]) == key:
                row["view_definition"] = pending[2]
                pending = next(definitions, None)
            else:
                row["view_definition"] = None
        yield row


def view_definitions(
    connection: Connection, params: dict[str, Any], database: str, report: list[dict[str, str]]
) -> Iterator[tuple[str, str, str | None]]:
    """(schema, name, definition) of every selected view, in the relation query's order, read on a second
    connection: the views listed once, then their definitions a batch at a time, each batch in a transaction
    of its own (its locks go when it ends)."""
    with connection.engine.connect() as side:
        try:
            with side.begin():
                views = [
                    (row["oid"], row["schema_name"], row["relation_name"])
                    for row in stream_rows(side, VIEW_LIST_QUERY, params)
                ]
        except (sa_exc.DBAPIError, psycopg.Error) as exc:  # stream_rows raises psycopg's own errors
            report.append(_query_problem(database, "the list of views", _statement_error(VIEW_LIST_QUERY, exc)))
            return
        for start in range(0, len(views), VIEW_DEFINITION_BATCH):
            batch = views[start : start + VIEW_DEFINITION_BATCH]
            try:
                with side.begin():
                    rows = stream_rows(side, VIEW_DEFINITIONS_QUERY, {"oids": [oid for oid, _, _ in batch]})
                    definitions = [row["view_definition"] for row in rows]
            except (sa_exc.DBAPIError, psycopg.Error) as exc:
                _, schema, name = batch[0]
                failure = _statement_error(VIEW_DEFINITIONS_QUERY, exc)
                report.append(_query_problem(database, f"view definitions from {schema}.{name}", failure))
                return
            for (_, schema, name), definition in zip(batch, definitions, strict=True):
                yield schema, name, definition


def _statement_error(sql: str, exc: sa_exc.DBAPIError | psycopg.Error) -> sa_exc.StatementError:
    return exc if isinstance(exc, sa_exc.DBAPIError) else sa_exc.DBAPIError.instance(sql, None, exc, psycopg.Error)


def _query_problem(database: str, what: str, exc: sa_exc.StatementError) -> dict[str, str]:
    if isinstance(exc.orig, pg_errors.InsufficientPrivilege):
        hint = "grant the role pg_read_all_stats or ownership of the objects"
    elif isinstance(exc.orig, pg_errors.LockNotAvailable):
        hint = "DDL held a lock longer than lock_timeout; run again"
    else:
        hint = "see the extractor log"
    message = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    log.warning("database %s: reading %s failed: %s", database, what, message)
    return {"object": f"{database}: {what}", "error": message, "hint": hint}


def extract_database(command: ExtractRequested, platform: Platform) -> ExtractCompleted:
    """Extracts one database into chunks; idempotent per run and unit, retried on a lost connection."""
    unit = command.selection.unit
    recorded = platform.get_json(stage_result_key(command.run_id, Stage.EXTRACT, unit))
    if recorded is not None:
        log.info("run %s: %s already extracted, re-announcing", command.run_id, unit)
        return ExtractCompleted.model_validate(recorded)
    password = provider_for(platform, command.source, command.credentials, run_id=command.run_id)
    for attempt in range(1, CONNECTION_ATTEMPTS + 1):
        try:
            completed = _extract_once(command, platform, password, attempt)
            break
        except sa_exc.OperationalError as exc:
            # Lost mid-stream (restart, failover, network): start the database again; chunks are
            # rewritten under the same keys, so nothing is duplicated.
            if attempt == CONNECTION_ATTEMPTS:
                raise SourceUnreachableError(
                    f"lost the connection to database {command.selection.database!r} {attempt} times: "
                    f"{str(exc.orig or exc).strip().splitlines()[0]}"
                ) from None
            delay = 2 ** (attempt - 1)
            log.warning("run %s: connection lost extracting %s, retrying in %d s", command.run_id, unit, delay)
            time.sleep(delay)
    platform.save_json(stage_result_key(command.run_id, Stage.EXTRACT, unit), completed.model_dump(mode="json"))
    return completed


@dataclass(frozen=True)
class ComparableBaseline:
    """The previous successful run's schemas of this database, to compare fingerprints with."""

    run_id: str
    index: ScopeIndex


def comparable_baseline(command: ExtractRequested, platform: Platform) -> ComparableBaseline | str:
    """The baseline this database's schemas are compared with, or why every schema is read: the request says
    ``full``, there is no usable baseline, or it was taken under other filters."""
    if command.full:
        return "full run requested"
    return baseline_for(platform, command.connection_qualified_name, command.filters, command.source, command.selection)


def baseline_for(
    platform: Platform, connection_qn: str, filters: FilterSpec, source: SourceSpec, selection: DatabaseSelection
) -> ComparableBaseline | str:
    """The connection's last baseline of ``selection``'s database, or why it cannot be compared with."""
    recorded = platform.get_json(snapshot_key(connection_qn))
    if recorded is None:
        return "no baseline"
    baseline = Baseline.model_validate(recorded)
    if baseline.format != INCREMENTAL_FORMAT:
        return "the baseline was written by another version"
    if baseline.scope != request_scope(filters, source.database):
        return "the filters differ from the baseline's"
    stored = platform.get_json(baseline_scopes_key(baseline.run_id, selection.database))
    if stored is None:
        return "the baseline has no schemas of this database"
    index = ScopeIndex.model_validate(stored)
    if index.unit != selection.unit:
        return "the database's unit differs from the baseline's"
    return ComparableBaseline(baseline.run_id, index)


def plan_scopes(
    command: ExtractRequested, baseline: ComparableBaseline | str, fingerprints: dict[str, str]
) -> ScopePlan:
    """Which schemas to read: those whose fingerprint differs from the baseline's, or all of them."""
    selection = command.selection
    if isinstance(baseline, str):
        return ScopePlan(
            database=selection.database,
            unit=selection.unit,
            fingerprints=fingerprints,
            extracted=sorted(fingerprints),
            reason=baseline,
        )
    carried = sorted(
        schema
        for schema, fingerprint in fingerprints.items()
        if schema in baseline.index.schemas and baseline.index.schemas[schema].fingerprint == fingerprint
    )
    return ScopePlan(
        database=selection.database,
        unit=selection.unit,
        fingerprints=fingerprints,
        extracted=sorted(set(fingerprints) - set(carried)),
        carried=carried,
        baseline_run_id=baseline.run_id,
        reason="incremental",
    )


def _planned(
    command: ExtractRequested, platform: Platform, baseline: ComparableBaseline | str, fingerprints: dict[str, str]
) -> ScopePlan:
    """The database's plan, logged and recorded for the publisher (which carries the schemas not read)."""
    plan = plan_scopes(command, baseline, fingerprints)
    log.info(
        "run %s: %s: %d schema(s) read, %d carried over (%s)",
        command.run_id,
        command.selection.unit,
        len(plan.extracted),
        len(plan.carried),
        plan.reason,
    )
    platform.save_json(extract_scopes_key(command.run_id, command.selection.unit), plan.model_dump(mode="json"))
    return plan


def _fingerprint_rows(
    connection: Connection, ahead: Future[list[dict[str, Any]]] | None, query: str, schemas: dict[str, Any]
) -> list[dict[str, Any]]:
    """The fingerprints, as started ahead by the run's preflight when it did (and succeeded), else asked now."""
    if ahead is not None:
        try:
            return ahead.result()
        except Exception as exc:
            log.warning("fingerprints started ahead failed (%s): asking again", type(exc).__name__)
    return fetch_all(connection, query, schemas)  # at once, not by cursor: the query may then run in parallel


def _extract_once(
    command: ExtractRequested, platform: Platform, password: PasswordProvider, generation: int
) -> ExtractCompleted:
    selection = command.selection
    chunk_unit = extract_chunk_unit(selection.unit, generation)
    report: list[dict[str, str]] = []
    counts: dict[str, int] = {}
    chunk_count = 0
    params = relation_params(selection, command.filters)
    schemas = schema_params(selection, command.filters)
    ahead = fingerprints_ahead.take(command.run_id, selection.database, schemas)
    baseline = comparable_baseline(command, platform)
    with connect(command.source, password, selection.database) as connection, contextlib.ExitStack() as side:
        fingerprints_query = schema_fingerprints_query(server_version_num(connection))
        # The fingerprints are taken before the catalog is read: a change made meanwhile leaves a fingerprint
        # older than what was read, so the next run reads the schema again (never the other way round).
        pending_fingerprints: Future[list[dict[str, Any]]] | None = None
        pending_total: Future[list[dict[str, Any]]] | None = None
        if isinstance(baseline, str):
            # Every schema is read whatever they say: they are kept for the next run, computed meanwhile (the
            # query is declared, its snapshot taken, before the catalog is read), as is the progress total.
            pending_fingerprints, pending_total = side.enter_context(
                rows_in_background(
                    connection, [(fingerprints_query, schemas), (COUNT_QUERY, params | {"only_schemas": None})]
                )
            )
            plan = None
            only = None
        else:
            fingerprints = {
                r["schema_name"]: r["change_fingerprint"]
                for r in _fingerprint_rows(connection, ahead, fingerprints_query, schemas)
            }
            connection.commit()  # the extraction's own connection waits outside a transaction, not idle in one
            plan = _planned(command, platform, baseline, fingerprints)
            only = plan.extracted if plan.carried else None
        if plan is None or plan.extracted:
            if pending_total is None:  # the schemas the plan reads, counted meanwhile
                (pending_total,) = side.enter_context(
                    rows_in_background(connection, [(COUNT_QUERY, params | {"only_schemas": only})])
                )
            with contextlib.closing(iter_catalog(connection, selection, command.filters, report, only)) as records:
                # A database is read again from the start on another replica: finish it if the drain allows.
                progress = ProgressReporter(platform, resumable=False)
                total: int | None = None
                for chunk_count, batch in enumerate(batch_records(records), start=1):
                    platform.save_chunk(command.run_id, Stage.EXTRACT, chunk_unit, chunk_count - 1, batch)
                    platform.publish(
                        TopicName.EXTRACT_CHUNK_READY,
                        ChunkReady(
                            run_id=command.run_id,
                            unit=selection.unit,
                            generation=generation,
                            index=chunk_count - 1,
                            connection_qualified_name=command.connection_qualified_name,
                        ),
                    )
                    for record in batch:
                        counts[record["kind"]] = counts.get(record["kind"], 0) + 1
                    done = sum(v for k, v in counts.items() if k in {"schema", "relation", "column"})
                    if total is None and pending_total.done():  # progress without a total until it is counted
                        (totals,) = pending_total.result()
                        total = sum(int(totals[k]) for k in ("schemas", "tables", "views", "columns"))
                    progress.report(
                        ExtractionProgress(
                            run_id=command.run_id, stage=Stage.EXTRACT, done=done, total=total, work_unit=selection.unit
                        )
                    )
        if pending_fingerprints is not None:
            fingerprints = {r["schema_name"]: r["change_fingerprint"] for r in pending_fingerprints.result()}
            plan = _planned(command, platform, baseline, fingerprints)
    assert plan is not None
    platform.save_json(stage_report_key(command.run_id, Stage.EXTRACT, selection.unit), report)
    return ExtractCompleted(
        run_id=command.run_id,
        unit=selection.unit,
        generation=generation,
        chunk_count=chunk_count,
        counts=counts,
        problems=len(report),
        schemas_extracted=len(plan.extracted),
        schemas_skipped=len(plan.carried),
    )
