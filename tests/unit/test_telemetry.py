"""Telemetry: exporter choice from OTEL_*, JSON logs with trace and run, trace context across Dapr calls,
deliveries and workflow activities, and the tree `pgmeta trace` prints."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pgmeta_cli.observe import render_tree
from pgmeta_orchestrator.dapr_metadata import describe_metadata, sidecar_urls
from pgmeta_orchestrator.run_traces import RunTraces, WorkflowLogTraces
from pgmeta_shared.delivery import Delivery
from pgmeta_shared.errors import AuthenticationFailedError
from pgmeta_shared.events import ExtractionProgress
from pgmeta_shared.keys import run_trace_key as trace_key
from pgmeta_shared.settings import DaprSettings
from pgmeta_shared.subscriptions import deliver
from pgmeta_shared.telemetry import (
    DaprCallTracing,
    JsonLogFormatter,
    TelemetryConfigError,
    metric_exporter_names,
    quiet_when_unreachable,
    run_span,
    trace_carrier,
    trace_exporter_names,
    trace_workflow_calls,
)
from tests.fakes import InMemoryPlatform

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="session", autouse=True)
def _tracer_provider() -> None:
    # The global provider can be set once per process: one, recording into memory, for the whole session.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


PRODUCER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_exporters_follow_the_standard_variables() -> None:
    assert trace_exporter_names({}) == []
    assert trace_exporter_names({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == ["otlp"]
    assert trace_exporter_names({"OTEL_EXPORTER_ZIPKIN_ENDPOINT": "http://z:9411/api/v2/spans"}) == ["zipkin"]
    assert trace_exporter_names({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}) == []
    assert metric_exporter_names({"OTEL_EXPORTER_PROMETHEUS_PORT": "9464"}) == ["prometheus"]
    assert metric_exporter_names({}) == []
    with pytest.raises(TelemetryConfigError, match="jaeger"):
        trace_exporter_names({"OTEL_TRACES_EXPORTER": "jaeger"})


def _json_line(message: str) -> dict[str, Any]:
    record = logging.LogRecord("pgmeta.test", logging.INFO, __file__, 1, message, None, None)
    parsed: dict[str, Any] = json.loads(JsonLogFormatter("extractor").format(record))
    return parsed


def test_log_lines_inside_a_run_carry_its_trace_run_and_unit(spans: InMemorySpanExporter) -> None:
    with run_span("extract shop", "run-1", "db:shop") as span:
        inside = _json_line("working")
        context = span.get_span_context()
    outside = _json_line("idle")
    assert inside["trace_id"] == trace.format_trace_id(context.trace_id)
    assert inside["span_id"] == trace.format_span_id(context.span_id)
    assert (inside["run_id"], inside["unit"], inside["service"]) == ("run-1", "db:shop", "extractor")
    assert "trace_id" not in outside and "run_id" not in outside


def _by_name(exported: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    return next(span for span in exported if span.name == name)


def test_a_delivery_continues_the_producers_trace_and_a_dropped_one_is_an_error(spans: InMemorySpanExporter) -> None:
    event = {"id": "e1", "traceparent": PRODUCER, "data": {"run_id": "r1", "stage": "extract", "done": 1, "total": 2}}

    def reject(_: ExtractionProgress) -> None:
        raise AuthenticationFailedError("bad password")

    assert deliver(ExtractionProgress, lambda e: None, event, "extraction.progress") == Delivery.SUCCESS
    assert deliver(ExtractionProgress, reject, event, "extraction.progress") == Delivery.DROP
    handled, dropped = spans.get_finished_spans()
    for span in (handled, dropped):
        assert span.context is not None and span.parent is not None
        assert trace.format_trace_id(span.context.trace_id) == "0af7651916cd43dd8448eb211c80319c"
        assert trace.format_span_id(span.parent.span_id) == "b7ad6b7169203331"
        assert span.attributes is not None and span.attributes["pgmeta.run_id"] == "r1"
    assert handled.status.status_code == StatusCode.UNSET
    assert dropped.status.status_code == StatusCode.ERROR


class _Details:
    method = "/dapr.proto.runtime.v1.Dapr/PublishEvent"
    timeout = None
    metadata = [("dapr-api-token", "t")]
    credentials = None


class _Outcome:
    def exception(self) -> None:
        return None


class _Publish:
    pubsub_name = "pubsub"
    topic = "extract.requested"
    data = b"{}"


def test_dapr_calls_send_their_span_as_traceparent(spans: InMemorySpanExporter) -> None:
    sent: list[Any] = []

    def continuation(details: Any, request: Any) -> _Outcome:
        sent.append(details)
        return _Outcome()

    with run_span("work", "r1"):
        DaprCallTracing().intercept_unary_unary(continuation, _Details(), _Publish())
    metadata = dict(sent[0].metadata)
    call = _by_name(spans.get_finished_spans(), "dapr PublishEvent")
    assert call.context is not None and call.attributes is not None
    assert metadata["dapr-api-token"] == "t"
    assert metadata["traceparent"].split("-")[1:3] == [
        trace.format_trace_id(call.context.trace_id),
        trace.format_span_id(call.context.span_id),
    ]
    assert call.attributes["dapr.topic"] == "extract.requested"


def test_workflow_activities_continue_the_trace_that_started_the_run(spans: InMemorySpanExporter) -> None:
    platform = InMemoryPlatform()
    with run_span("handle extraction.requested", "run-7") as started:
        RunTraces(platform).remember("run-7")
        carrier = trace_carrier()
    assert platform.stored_json(trace_key("run-7"))["traceparent"] == carrier["traceparent"]
    # Another orchestrator process (after a restart) reads the context back from the store.
    with RunTraces(platform).activity("run-7", "publish extract.requested"):
        pass
    activity = _by_name(spans.get_finished_spans(), "workflow publish extract.requested")
    assert activity.parent is not None and activity.context is not None
    assert activity.parent.span_id == started.get_span_context().span_id
    assert activity.context.trace_id == started.get_span_context().trace_id


def test_trace_tree_nests_children_under_parents_and_keeps_orphans_as_roots() -> None:
    spans = [
        {
            "traceId": "t",
            "id": "a",
            "name": "post /runs",
            "timestamp": 1,
            "duration": 2000,
            "localEndpoint": {"serviceName": "orchestrator"},
        },
        {
            "traceId": "t",
            "id": "b",
            "parentId": "a",
            "name": "extract db:shop",
            "timestamp": 2,
            "duration": 1000,
            "localEndpoint": {"serviceName": "extractor"},
            "tags": {"pgmeta.unit": "db:shop", "error": "boom"},
        },
        {
            "traceId": "t",
            "id": "c",
            "parentId": "gone",
            "name": "lost",
            "timestamp": 3,
            "localEndpoint": {"serviceName": "publisher"},
        },
    ]
    lines = list(render_tree(spans))
    assert lines[0].startswith("[cyan]orchestrator[/cyan] post /runs")
    assert lines[1].startswith("  [cyan]extractor[/cyan] extract db:shop") and "unit=db:shop" in lines[1]
    assert "ERROR" in lines[1]
    assert lines[2].startswith("[cyan]publisher[/cyan] lost")


def test_sidecar_metadata_is_summarised_like_the_dashboard() -> None:
    metadata = {
        "id": "extractor",
        "runtimeVersion": "1.18.2",
        "components": [{"name": "pubsub", "type": "pubsub.redis", "version": "v1"}],
        "subscriptions": [
            {
                "pubsubname": "pubsub",
                "topic": "extract.requested",
                "deadLetterTopic": "deadletter",
                "rules": [{"path": "/events/pubsub/extract.requested"}],
            },
        ],
        "actors": [{"type": "dapr.internal.default.orchestrator.workflow", "count": 1}],
    }
    view = describe_metadata("extractor", "http://127.0.0.1:1", True, metadata)
    assert view.runtime_version == "1.18.2" and view.components[0].type == "pubsub.redis"
    assert view.subscriptions[0].route == "/events/pubsub/extract.requested"
    assert view.subscriptions[0].dead_letter_topic == "deadletter"
    assert view.actors[0].count == 1
    assert sidecar_urls(DaprSettings(dapr_http_port=3511), "") == {"orchestrator": "http://127.0.0.1:3511"}
    with pytest.raises(ValueError, match="app-id=http"):
        sidecar_urls(DaprSettings(), "extractor:3500")


def test_workflow_runtime_lines_about_a_run_carry_its_trace(spans: InMemorySpanExporter) -> None:
    traces = RunTraces(InMemoryPlatform())
    with run_span("handle extraction.requested", "run-9") as started:
        traces.remember("run-9")
    for message in ("%s: Orchestrator yielded", "%s Event raised: extract_result", "%s/3: done"):
        record = logging.LogRecord("durabletask-worker", logging.INFO, __file__, 1, message, ("run-9",), None)
        assert WorkflowLogTraces(traces).filter(record)
        line = json.loads(JsonLogFormatter("orchestrator").format(record))
        assert line["trace_id"] == trace.format_trace_id(started.get_span_context().trace_id), message
        assert line["run_id"] == "run-9"
    other = logging.LogRecord("durabletask-worker", logging.INFO, __file__, 1, "Successfully connected", None, None)
    assert WorkflowLogTraces(traces).filter(other)
    assert "trace_id" not in json.loads(JsonLogFormatter("orchestrator").format(other))


def test_scheduling_a_workflow_sends_the_callers_trace_context(spans: InMemorySpanExporter) -> None:
    """daprd continues this `traceparent` into the Workflow engine's spans; the SDK itself sends none."""
    from concurrent import futures

    import grpc
    from dapr.ext.workflow import DaprWorkflowClient
    from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2 as pb

    received: list[dict[str, str]] = []

    def start_instance(request: Any, context: grpc.ServicerContext) -> Any:
        received.append({key: value for key, value in context.invocation_metadata() if isinstance(value, str)})
        return pb.CreateInstanceResponse(instanceId=request.instanceId)

    handler = grpc.method_handlers_generic_handler(
        "TaskHubSidecarService",
        {
            "StartInstance": grpc.unary_unary_rpc_method_handler(
                start_instance,
                request_deserializer=pb.CreateInstanceRequest.FromString,
                response_serializer=pb.CreateInstanceResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = DaprWorkflowClient(host="127.0.0.1", port=str(port))
        trace_workflow_calls(client)
        with run_span("handle extraction.requested", "r1"):
            client.schedule_new_workflow("extraction", input={}, instance_id="r1")
        client.close()  # type: ignore[no-untyped-call]
    finally:
        server.stop(None)
    call = _by_name(spans.get_finished_spans(), "dapr StartInstance")
    assert call.context is not None and call.parent is not None
    assert received[0]["traceparent"].split("-")[1:3] == [
        trace.format_trace_id(call.context.trace_id),
        trace.format_span_id(call.context.span_id),
    ]


def test_a_work_leases_heartbeat_stays_in_the_runs_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The heartbeat thread's state calls were each a trace of their own (an orphan per beat in Zipkin)."""
    import time

    from pgmeta_shared import fencing
    from pgmeta_shared.keys import ArtifactStage

    monkeypatch.setattr(fencing, "LEASE_HEARTBEAT_SECONDS", 0.05)
    seen: list[int] = []

    class Recording(InMemoryPlatform):
        def update_json(self, key: str, mutate: Any, *, run_scoped: bool = False) -> Any:
            seen.append(trace.get_current_span().get_span_context().trace_id)
            return super().update_json(key, mutate, run_scoped=run_scoped)

    with run_span("extract db", "r1") as span, fencing.work_lease(Recording(), "r1", ArtifactStage.EXTRACT, "db"):
        time.sleep(0.3)
    assert len(seen) >= 2  # the lease taken, then heartbeats from the thread
    assert set(seen) == {span.get_span_context().trace_id}


class RefusingExporter:
    """A collector that is not there (yet): how Zipkin's exporter behaves while its server is down."""

    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Any) -> Any:
        self.calls += 1
        raise requests.exceptions.ConnectionError("[Errno 111] Connection refused")

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def test_an_unreachable_collector_is_one_warning_a_minute_not_a_traceback_a_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The SDK logs an exporter's exception as an ERROR with a traceback, every batch (every 5 s, per service):
    a collector that starts after the services, or goes down, floods the logs. Spans it cannot take are dropped
    and counted, in one line a minute."""
    now = [1000.0]
    inner = RefusingExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(quiet_when_unreachable(inner, clock=lambda: now[0])))
    caplog.set_level(logging.INFO)
    for _ in range(3):
        provider.get_tracer("t").start_span("one").end()
    now[0] += 61
    provider.get_tracer("t").start_span("one").end()
    provider.shutdown()
    assert inner.calls == 4
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "trace collector unreachable (ConnectionError): 1 span(s) dropped; retrying with the next batch",
        "trace collector unreachable (ConnectionError): 3 span(s) dropped; retrying with the next batch",
    ]
    assert not any(r.exc_info for r in warnings)
