"""AtlanSink through the real pyatlan client against a stand-in Atlan server on 127.0.0.1.

No Atlan tenant is reachable from the build machines: the stand-in records every request pyatlan sends (method,
path, query, headers, JSON body) and answers as Atlas's entity API does, so these tests check the requests
themselves, the batching, the retries and that the API key stays out of errors and logs.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from pgmeta_publisher.atlan import AtlanConfigurationError, AtlanSettings, AtlanSink, BatchResult
from pgmeta_transformer.atlas import to_entities

from .records import CONNECTION_QN, column, sample_catalog

API_KEY = f"atlan-test-key-{secrets.token_hex(16)}"
BULK = "/api/meta/entity/bulk/"
BY_GUID = "/api/meta/entity/guid/"
BY_QUALIFIED_NAME = "/api/meta/entity/uniqueAttribute/type/"
SCHEMA_QN = f"{CONNECTION_QN}/shop/sales"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: Any

    def qualified_names(self) -> list[str]:
        return [entity["attributes"]["qualifiedName"] for entity in (self.body or {}).get("entities", [])]


@dataclass
class Fault:
    """An answer the stand-in gives instead of the real one, to requests ``matches`` accepts, ``times`` times."""

    matches: Callable[[RecordedRequest], bool]
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    times: int | None = None  # None: always


@dataclass
class StoredEntity:
    type_name: str
    guid: str
    attributes: dict[str, Any]
    status: str = "ACTIVE"

    def header(self) -> dict[str, Any]:
        """An AtlasEntityHeader, as Atlas lists mutated entities."""
        name = self.attributes.get("name")
        return {
            "typeName": self.type_name,
            "guid": self.guid,
            "status": self.status,
            "displayText": name,
            "attributes": {"qualifiedName": self.attributes["qualifiedName"], "name": name},
        }


class StandInAtlan:
    """Atlas's entity REST API as pyatlan calls it: bulk upsert, read by GUID or qualifiedName, bulk soft delete."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self.faults: list[Fault] = []
        self.entities: dict[tuple[str, str], StoredEntity] = {}
        self._server = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="stand-in-atlan", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.faults.clear()
            self.entities.clear()

    def seed(self, type_name: str, qualified_name: str, status: str = "ACTIVE") -> StoredEntity:
        stored = StoredEntity(type_name, str(uuid.uuid4()), {"qualifiedName": qualified_name, "name": "seeded"}, status)
        with self._lock:
            self.entities[(type_name, qualified_name)] = stored
        return stored

    def calls(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [
                r for r in self.requests if (method is None or r.method == method) and (path is None or r.path == path)
            ]

    def answer(self, request: RecordedRequest) -> tuple[int, dict[str, str], Any]:
        with self._lock:
            self.requests.append(request)
            for fault in self.faults:
                if (fault.times is None or fault.times > 0) and fault.matches(request):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault.status, fault.headers, fault.body
            return self._route(request)

    def _route(self, request: RecordedRequest) -> tuple[int, dict[str, str], Any]:
        if request.method == "POST" and request.path == BULK:
            return 200, {}, self._upsert(request.body["entities"])
        if request.method == "DELETE" and request.path == BULK:
            return 200, {}, self._soft_delete(request.query.get("guid", []))
        if request.method == "GET" and request.path.startswith(BY_GUID):
            guid = request.path.removeprefix(BY_GUID)
            found = next((e for e in self.entities.values() if e.guid == guid), None)
            return self._entity_or_404(found, f"Given instance guid {guid} is invalid/not found")
        if request.method == "GET" and request.path.startswith(BY_QUALIFIED_NAME):
            type_name = request.path.removeprefix(BY_QUALIFIED_NAME)
            qualified_name = request.query["attr:qualifiedName"][0]
            return self._entity_or_404(
                self.entities.get((type_name, qualified_name)),
                f"Instance {type_name} with unique attribute {{qualifiedName={qualified_name}}} does not exist",
            )
        return 404, {}, {"errorCode": "ATLAS-404-00-000", "errorMessage": f"no route {request.method} {request.path}"}

    def _upsert(self, entities: list[dict[str, Any]]) -> dict[str, Any]:
        created, updated, assignments = [], [], {}
        for entity in entities:
            key = (entity["typeName"], entity["attributes"]["qualifiedName"])
            stored = self.entities.get(key)
            if stored is None:
                stored = self.entities[key] = StoredEntity(key[0], str(uuid.uuid4()), dict(entity["attributes"]))
                created.append(stored.header())
            else:
                stored.attributes.update(entity["attributes"])
                stored.status = "ACTIVE"
                updated.append(stored.header())
            if "guid" in entity:
                assignments[entity["guid"]] = stored.guid
        mutated = {kind: headers for kind, headers in (("CREATE", created), ("UPDATE", updated)) if headers}
        return {"mutatedEntities": mutated, "guidAssignments": assignments}

    def _soft_delete(self, guids: list[str]) -> dict[str, Any]:
        deleted = []
        for stored in self.entities.values():
            if stored.guid in guids and stored.status == "ACTIVE":
                stored.status = "DELETED"
                deleted.append(stored.header())
        return {"mutatedEntities": {"DELETE": deleted}} if deleted else {}

    @staticmethod
    def _entity_or_404(found: StoredEntity | None, missing: str) -> tuple[int, dict[str, str], Any]:
        if found is None:
            return 404, {}, {"errorCode": "ATLAS-404-00-005", "errorMessage": missing}
        entity = {
            "typeName": found.type_name,
            "guid": found.guid,
            "status": found.status,
            "attributes": dict(found.attributes),
        }
        return 200, {}, {"entity": entity, "referredEntities": {}}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # httpx drops pooled keep-alive connections when a sink closes: a reset there is not a test failure.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(stand_in: StandInAtlan) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            request = RecordedRequest(
                method=self.command,
                path=url.path,
                query=parse_qs(url.query),
                headers={name.lower(): value for name, value in self.headers.items()},
                body=json.loads(raw) if raw else None,
            )
            status, headers, body = stand_in.answer(request)
            payload = json.dumps(body).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = do_PUT = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

    return Handler


@pytest.fixture(scope="module")
def stand_in_server() -> Iterator[StandInAtlan]:
    server = StandInAtlan()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def atlan(stand_in_server: StandInAtlan) -> StandInAtlan:
    stand_in_server.reset()
    return stand_in_server


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def make_sink(
    atlan: StandInAtlan, waits: list[float], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., AtlanSink]]:
    # pyatlan hands HTTP(S)_PROXY to its transport itself, without NO_PROXY: keep the stand-in on loopback.
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    sinks: list[AtlanSink] = []

    def make(base_url: str | None = None, **settings: Any) -> AtlanSink:
        sink = AtlanSink(AtlanSettings(base_url=base_url or atlan.url, **settings), API_KEY, sleep=waits.append)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()


def realistic_entities() -> list[dict[str, Any]]:
    """The transformer's entities for the sample catalog plus 25 more columns: 45, Connection first."""
    records = sample_catalog() + [column("sales", "customers", f"extra_{n:02d}", ordinal=n + 3) for n in range(25)]
    entities = [e for e in to_entities(CONNECTION_QN, records) if "typeName" in e]
    assert len(entities) == 45 and entities[0]["typeName"] == "Connection"
    return entities


def first_qn_is(qualified_name: str) -> Callable[[RecordedRequest], bool]:
    """Matches the bulk upsert whose first entity is ``qualified_name``: one batch, however often it is sent."""
    return lambda r: r.method == "POST" and r.path == BULK and r.qualified_names()[:1] == [qualified_name]


def test_upsert_sends_batches_as_pyatlan_shapes_them(atlan: StandInAtlan, make_sink: Callable[..., AtlanSink]) -> None:
    entities = realistic_entities()
    already_there = entities[5:15]  # Atlan knows these: they come back as UPDATE
    for entity in already_there:
        atlan.seed(entity["typeName"], entity["attributes"]["qualifiedName"])

    results = make_sink().upsert(entities)

    posts = atlan.calls("POST", BULK)
    assert len(posts) == math.ceil(45 / 20) == 3
    for post in posts:
        assert post.headers["authorization"] == f"Bearer {API_KEY}"
        assert post.headers["content-type"] == "application/json"
        assert post.query == {
            "replaceTags": ["false"],
            "appendTags": ["false"],
            "replaceBusinessAttributes": ["false"],
            "overwriteBusinessAttributes": ["false"],
        }
    sent = [entity for post in posts for entity in post.body["entities"]]
    assert [len(post.body["entities"]) for post in posts] == [20, 20, 5]
    assert [(e["typeName"], e["attributes"]["qualifiedName"]) for e in sent] == [
        (e["typeName"], e["attributes"]["qualifiedName"]) for e in entities
    ]
    by_qn = {e["attributes"]["qualifiedName"]: e for e in sent}
    # Parents travel as references by unique attribute; pyatlan adds an empty ``attributes``.
    assert by_qn[SCHEMA_QN]["attributes"]["database"] == {
        "typeName": "Database",
        "attributes": {},
        "uniqueAttributes": {"qualifiedName": f"{CONNECTION_QN}/shop"},
    }
    assert by_qn[f"{SCHEMA_QN}/customers"]["attributes"]["atlanSchema"] == {
        "typeName": "Schema",
        "attributes": {},
        "uniqueAttributes": {"qualifiedName": SCHEMA_QN},
    }
    assert by_qn[f"{SCHEMA_QN}/customers/extra_07"]["attributes"]["table"] == {
        "typeName": "Table",
        "attributes": {},
        "uniqueAttributes": {"qualifiedName": f"{SCHEMA_QN}/customers"},
    }
    assert by_qn[f"{SCHEMA_QN}/orders_2025/order_id"]["attributes"]["tablePartition"]["typeName"] == "TablePartition"
    assert by_qn[f"{SCHEMA_QN}/v_orders/one"]["attributes"]["view"]["uniqueAttributes"] == {
        "qualifiedName": f"{SCHEMA_QN}/v_orders"
    }
    assert by_qn[f"{SCHEMA_QN}/customers/name"]["attributes"]["dataType"] == "character varying(80)"
    # No GUIDs, no tags; pyatlan's custom-metadata flush adds ``businessAttributes: null``, which leaves custom
    # metadata alone because replaceBusinessAttributes and overwriteBusinessAttributes are false.
    assert all(set(e) == {"typeName", "attributes", "businessAttributes"} for e in sent)
    assert all(e["businessAttributes"] is None for e in sent)

    # Counts are what the stand-in answered: 10 of batch 0's 20 were known already.
    assert [(r.entities, r.created, r.updated, r.failed) for r in results] == [
        (20, 10, 10, 0),
        (20, 20, 0, 0),
        (5, 5, 0, 0),
    ]
    assert all(r.ok and r.http_status == 200 for r in results)
    # pyatlan reads a newly created Connection back (its policy wait): one GET, counted in batch 0's attempts.
    connection_guid = atlan.entities[("Connection", CONNECTION_QN)].guid
    assert [(r.method, r.path) for r in atlan.calls("GET")] == [("GET", f"{BY_GUID}{connection_guid}")]
    assert [r.attempts for r in results] == [2, 1, 1]
    assert len(atlan.requests) == 4
    assert results[0].to_report() == {
        "operation": "upsert",
        "index": 0,
        "entities": 20,
        "created": 10,
        "updated": 10,
        "archived": 0,
        "skipped": 0,
        "failed": 0,
        "attempts": 2,
        "waited_seconds": 0.0,
        "http_status": 200,
        "error": None,
    }

    again = make_sink().upsert(entities)
    assert [(r.created, r.updated) for r in again] == [(0, 20), (0, 20), (0, 5)]


def test_429_with_retry_after_waits_as_told_then_succeeds(
    atlan: StandInAtlan, make_sink: Callable[..., AtlanSink], waits: list[float]
) -> None:
    entities = realistic_entities()
    second_batch = first_qn_is(entities[20]["attributes"]["qualifiedName"])
    atlan.faults.append(Fault(second_batch, 429, {"Retry-After": "2"}, {"message": "rate limited"}, times=1))

    results = make_sink().upsert(entities)

    assert waits == [2.0]
    assert len([r for r in atlan.requests if second_batch(r)]) == 2
    assert all(r.ok for r in results)
    assert (results[1].created, results[1].attempts, results[1].waited_seconds) == (20, 2, 2.0)
    assert len(atlan.calls("POST", BULK)) == 4


def test_503_always_fails_the_batch_after_max_retries_and_the_next_is_sent(
    atlan: StandInAtlan, make_sink: Callable[..., AtlanSink], waits: list[float]
) -> None:
    entities = realistic_entities()
    first_batch = first_qn_is(CONNECTION_QN)
    atlan.faults.append(Fault(first_batch, 503, body={"message": "Service Unavailable"}))

    results = make_sink(max_retries=5, max_backoff_seconds=10).upsert(entities)

    assert len([r for r in atlan.requests if first_batch(r)]) == 6
    failed = results[0]
    assert (failed.ok, failed.failed, failed.created, failed.attempts, failed.http_status) == (False, 20, 0, 6, 503)
    assert failed.error == f'HTTP 503 from POST {BULK} after 6 attempts: {{"message": "Service Unavailable"}}'
    # Exponential backoff with jitter (each wait between half and all of 1, 2, 4, 8, 16 s), capped at 10 s.
    assert len(waits) == 5
    for number, wait in enumerate(waits, start=1):
        assert min(0.5 * 2 ** (number - 1), 10) <= wait <= min(2 ** (number - 1), 10)
    assert failed.waited_seconds == pytest.approx(sum(waits), abs=0.01)
    assert [(r.ok, r.created) for r in results[1:]] == [(True, 20), (True, 5)]
    assert len(atlan.calls("POST", BULK)) == 8


def test_400_is_not_retried(atlan: StandInAtlan, make_sink: Callable[..., AtlanSink], waits: list[float]) -> None:
    entities = realistic_entities()
    third_batch = first_qn_is(entities[40]["attributes"]["qualifiedName"])
    rejection = {"errorCode": "ATLAS-400-00-08D", "errorMessage": "invalid attribute value for Column.order"}
    atlan.faults.append(Fault(third_batch, 400, body=rejection))

    results = make_sink().upsert(entities)

    assert len([r for r in atlan.requests if third_batch(r)]) == 1
    assert waits == []
    assert [r.ok for r in results] == [True, True, False]
    failed = results[2]
    assert (failed.failed, failed.attempts, failed.http_status) == (5, 1, 400)
    assert failed.error is not None
    assert failed.error.startswith(f"HTTP 400 from POST {BULK} after 1 attempt: ")
    assert "ATLAS-400-00-08D" in failed.error and "invalid attribute value for Column.order" in failed.error


def test_connection_errors_are_retried_like_5xx(make_sink: Callable[..., AtlanSink], waits: list[float]) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    results = make_sink(base_url=f"http://127.0.0.1:{closed_port}", max_retries=2).upsert(realistic_entities()[:3])

    assert len(waits) == 2
    assert [(r.ok, r.attempts, r.http_status) for r in results] == [(False, 3, None)]
    assert results[0].error is not None
    assert results[0].error.startswith(f"no answer from POST {BULK} after 3 attempts: ConnectError: ")


def test_archive_resolves_guids_then_soft_deletes_in_bulk(
    atlan: StandInAtlan, make_sink: Callable[..., AtlanSink]
) -> None:
    table = atlan.seed("Table", f"{SCHEMA_QN}/customers")
    name_column = atlan.seed("Column", f"{SCHEMA_QN}/customers/name")
    references = [("Table", f"{SCHEMA_QN}/customers"), ("Column", f"{SCHEMA_QN}/customers/name")]

    results = make_sink().archive([*references, ("Column", f"{SCHEMA_QN}/customers/gone")])

    assert [(r.method, r.path) for r in atlan.requests] == [
        ("GET", f"{BY_QUALIFIED_NAME}Table"),
        ("GET", f"{BY_QUALIFIED_NAME}Column"),
        ("GET", f"{BY_QUALIFIED_NAME}Column"),  # not in Atlan: 404, skipped
        ("GET", f"{BY_GUID}{table.guid}"),  # pyatlan checks each asset may be archived
        ("GET", f"{BY_GUID}{name_column.guid}"),
        ("DELETE", BULK),
        ("GET", f"{BY_GUID}{table.guid}"),  # and reads each back until it is DELETED
        ("GET", f"{BY_GUID}{name_column.guid}"),
    ]
    lookups = atlan.requests[:3]
    assert [r.query["attr:qualifiedName"] for r in lookups] == [
        [f"{SCHEMA_QN}/customers"],
        [f"{SCHEMA_QN}/customers/name"],
        [f"{SCHEMA_QN}/customers/gone"],
    ]
    assert lookups[0].query["minExtInfo"] == ["true"] and lookups[0].query["ignoreRelationships"] == ["true"]
    delete = atlan.requests[5]
    assert delete.query == {"deleteType": ["SOFT"], "guid": [table.guid, name_column.guid]}
    assert all(r.headers["authorization"] == f"Bearer {API_KEY}" for r in atlan.requests)
    assert (table.status, name_column.status) == ("DELETED", "DELETED")
    assert [(r.entities, r.archived, r.skipped, r.failed, r.attempts, r.ok) for r in results] == [(3, 2, 1, 0, 8, True)]

    atlan.requests.clear()
    again = make_sink().archive(references)  # archived already: looked up, nothing deleted
    assert [(r.archived, r.skipped) for r in again] == [(0, 2)]
    assert [r.method for r in atlan.requests] == ["GET", "GET"]


def test_pyatlans_own_read_back_loop_cannot_multiply_the_retries(
    atlan: StandInAtlan, make_sink: Callable[..., AtlanSink], waits: list[float]
) -> None:
    table = atlan.seed("Table", f"{SCHEMA_QN}/customers")
    # After the DELETE, pyatlan reads the asset back up to 20 times, 1 s apart, on any AtlanError: with a 500
    # there, each of its tries would get all of pgmeta's retries again (20 x 3 requests, 19 s of pauses).
    read_back = Fault(
        lambda r: r.method == "GET" and r.path == f"{BY_GUID}{table.guid}" and table.status == "DELETED",
        500,
        body={"errorCode": "ATLAS-500-00-001", "errorMessage": "boom"},
    )
    atlan.faults.append(read_back)

    started = time.monotonic()
    results = make_sink(max_retries=2).archive([("Table", f"{SCHEMA_QN}/customers")])

    assert time.monotonic() - started < 1  # not even pyatlan's first 1 s pause
    assert [(r.method, r.path) for r in atlan.requests] == [
        ("GET", f"{BY_QUALIFIED_NAME}Table"),
        ("GET", f"{BY_GUID}{table.guid}"),
        ("DELETE", BULK),
        *[("GET", f"{BY_GUID}{table.guid}")] * 3,
    ]
    assert len(waits) == 2
    assert [(r.ok, r.attempts, r.http_status, r.error) for r in results] == [
        (
            False,
            6,
            500,
            f"HTTP 500 from GET {BY_GUID}{table.guid} after 3 attempts: "
            '{"errorCode": "ATLAS-500-00-001", "errorMessage": "boom"}',
        )
    ]


def test_api_key_never_appears_in_errors_or_logs(
    atlan: StandInAtlan, make_sink: Callable[..., AtlanSink], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    entities = realistic_entities()
    # A server that echoes the credential back in its error message, and one that keeps failing.
    echo = {"errorCode": "ATLAS-401-00-001", "errorMessage": f"token Bearer {API_KEY} is not valid here"}
    atlan.faults.append(Fault(first_qn_is(CONNECTION_QN), 400, body=echo))
    atlan.faults.append(Fault(first_qn_is(entities[20]["attributes"]["qualifiedName"]), 503))
    sink = make_sink(max_retries=1)

    results: list[BatchResult] = sink.upsert(entities) + sink.archive([("Table", f"{SCHEMA_QN}/nowhere")])
    with pytest.raises(AtlanConfigurationError) as bad_url:
        AtlanSink(AtlanSettings(base_url="not a url"), API_KEY)

    assert all(post.headers["authorization"] == f"Bearer {API_KEY}" for post in atlan.calls("POST", BULK))
    assert [r.ok for r in results] == [False, False, True, True]
    assert results[0].error is not None and "token Bearer *** is not valid here" in results[0].error
    texts = [json.dumps([r.to_report() for r in results]), str(bad_url.value), repr(bad_url.value)]
    texts += [record.getMessage() for record in caplog.records]
    texts += [repr(record.args) for record in caplog.records]
    texts += [caplog.text]
    assert any("pyatlan" in record.name for record in caplog.records)  # pyatlan's own DEBUG logs were captured
    assert not [text for text in texts if API_KEY in text]


def test_settings_read_atlans_documented_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAN_BASE_URL", "https://tenant.atlan.com")
    monkeypatch.setenv("PGMETA_ATLAN_BATCH_SIZE", "10")
    settings = AtlanSettings()
    assert (settings.base_url, settings.batch_size, settings.enabled) == ("https://tenant.atlan.com", 10, True)
    monkeypatch.delenv("ATLAN_BASE_URL")
    monkeypatch.setenv("PGMETA_ATLAN_BASE_URL", "https://other.atlan.com")
    assert AtlanSettings().base_url == "https://other.atlan.com"
    monkeypatch.delenv("PGMETA_ATLAN_BASE_URL")
    assert not AtlanSettings().enabled
    assert all(info.description for info in AtlanSettings.model_fields.values())
