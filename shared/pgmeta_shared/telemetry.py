"""OpenTelemetry for one pgmeta process: traces, metrics and logs, set up from the standard ``OTEL_*`` variables.

Nothing happens at import. ``configure_telemetry`` runs once in a service's start-up. With no exporter
configured, spans are still created (so trace ids reach the logs and ``traceparent`` reaches the sidecars) but
nothing is exported, and no metrics reader runs.

Exporters, chosen by the standard variables:

- traces: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``zipkin``, ``console``, ``none``; comma-separated). Unset: ``otlp``
  when ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, ``zipkin`` when
  ``OTEL_EXPORTER_ZIPKIN_ENDPOINT`` is set, otherwise none. Sampling: ``OTEL_TRACES_SAMPLER`` (+ ``_ARG``).
- metrics: ``OTEL_METRICS_EXPORTER`` (``prometheus``, ``otlp``, ``console``, ``none``). Unset: ``prometheus`` when
  ``OTEL_EXPORTER_PROMETHEUS_PORT`` is set (served on ``OTEL_EXPORTER_PROMETHEUS_HOST``, default 127.0.0.1, at
  ``/metrics``), plus ``otlp`` when an OTLP endpoint is set.
- service name: ``OTEL_SERVICE_NAME``, else the service's own name; ``OTEL_RESOURCE_ATTRIBUTES`` is honoured.
- logs: ``PGMETA_LOG_FORMAT`` = ``json`` (default: one object per line with ``trace_id``, ``span_id``, ``run_id``,
  ``unit``) or ``text`` (the same facts appended to a human-readable line).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, NamedTuple

import grpc
import orjson
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

TRACER_NAME = "pgmeta"
TRACEPARENT = "traceparent"


class TelemetryConfigError(ValueError):
    """An ``OTEL_*`` variable names something this process cannot do."""


# -- run scope: which run and unit the current thread of work is handling ------------------------------

_RUN_SCOPE: ContextVar[tuple[str, str | None] | None] = ContextVar("pgmeta_run_scope", default=None)


@contextmanager
def run_scope(run_id: str | None, unit: str | None = None) -> Iterator[None]:
    """Marks the work inside as handling ``run_id`` (and ``unit``): every log line written in it says so."""
    if run_id is None:
        yield
        return
    token = _RUN_SCOPE.set((run_id, unit))
    try:
        yield
    finally:
        _RUN_SCOPE.reset(token)


def current_run() -> tuple[str, str | None] | None:
    return _RUN_SCOPE.get()


# -- logs ----------------------------------------------------------------------------------------------


# Set on a record by a logging.Filter that knows the run a library's line is about (see RunTraces).
RECORD_TRACE_ID = "pgmeta_trace_id"
RECORD_RUN_ID = "pgmeta_run_id"


def _log_facts(record: logging.LogRecord) -> dict[str, str]:
    facts: dict[str, str] = {}
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        facts["trace_id"] = trace.format_trace_id(span_context.trace_id)
        facts["span_id"] = trace.format_span_id(span_context.span_id)
    elif hasattr(record, RECORD_TRACE_ID):
        facts["trace_id"] = str(getattr(record, RECORD_TRACE_ID))
        facts["run_id"] = str(getattr(record, RECORD_RUN_ID))
    scope = _RUN_SCOPE.get()
    if scope is not None:
        facts["run_id"] = scope[0]
        if scope[1] is not None:
            facts["unit"] = scope[1]
    return facts


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, message, and the trace and run it belongs to."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
            **_log_facts(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


class TextLogFormatter(logging.Formatter):
    """The human-readable line, with the trace and run appended when there are any."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        facts = _log_facts(record)
        if not facts:
            return text
        suffix = " ".join(f"{k}={v}" for k, v in facts.items() if k != "span_id")
        first, newline, rest = text.partition("\n")
        return f"{first} [{suffix}]{newline}{rest}"


def configure_logging(service: str, level: str = "INFO", log_format: str | None = None) -> None:
    chosen = (log_format or os.environ.get("PGMETA_LOG_FORMAT") or "json").lower()
    if chosen not in {"json", "text"}:
        raise TelemetryConfigError(f"PGMETA_LOG_FORMAT={chosen!r}: use 'json' or 'text'")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter(service) if chosen == "json" else TextLogFormatter(service))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)
    # gRPC and httpx are chatty at INFO; their warnings still show.
    for noisy in ("httpx", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def adopt_library_loggers(prefix: str) -> None:
    """Routes the loggers named ``prefix…`` (Durable Task's bring their own handler and format) through ours."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith(prefix) and isinstance(logger, logging.Logger):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True


# -- set-up --------------------------------------------------------------------------------------------


def _names(variable: str, default: list[str], env: Mapping[str, str]) -> list[str]:
    value = env.get(variable)
    if value is None or not value.strip():
        return default
    return [name.strip().lower() for name in value.split(",") if name.strip()]


def _otlp_configured(env: Mapping[str, str], signal: str) -> bool:
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))


def trace_exporter_names(env: Mapping[str, str]) -> list[str]:
    default = ["otlp"] if _otlp_configured(env, "TRACES") else []
    if not default and env.get("OTEL_EXPORTER_ZIPKIN_ENDPOINT"):
        default = ["zipkin"]
    names = [n for n in _names("OTEL_TRACES_EXPORTER", default, env) if n != "none"]
    for name in names:
        if name not in {"otlp", "zipkin", "console"}:
            raise TelemetryConfigError(f"OTEL_TRACES_EXPORTER names {name!r}: use otlp, zipkin, console or none")
    return names


def metric_exporter_names(env: Mapping[str, str]) -> list[str]:
    default = (["prometheus"] if env.get("OTEL_EXPORTER_PROMETHEUS_PORT") else []) + (
        ["otlp"] if _otlp_configured(env, "METRICS") else []
    )
    names = [n for n in _names("OTEL_METRICS_EXPORTER", default, env) if n != "none"]
    for name in names:
        if name not in {"otlp", "prometheus", "console"}:
            raise TelemetryConfigError(f"OTEL_METRICS_EXPORTER names {name!r}: use prometheus, otlp, console or none")
    return names


@dataclass(frozen=True)
class TelemetryState:
    """What ``configure_telemetry`` set up, for start-up logs and tests."""

    service: str
    trace_exporters: tuple[str, ...]
    metric_exporters: tuple[str, ...]
    metrics_address: str | None


# An unreachable collector is reported this often at most, with the spans dropped meanwhile.
UNREACHABLE_REPORT_SECONDS = 60.0


class _QuietWhenUnreachable:
    """A span exporter that answers FAILURE, not an exception, when its collector cannot be reached.

    Zipkin's exporter raises on a refused connection, and the SDK logs every raised export as an ERROR with a
    traceback: every batch (5 s), in every service, while the collector starts (the local stack starts it beside
    the services) or is down. Instead: one line when it first fails, then one a minute, counting the dropped spans.
    """

    def __init__(self, inner: Any, clock: Any = time.monotonic) -> None:
        self._inner = inner
        self._clock = clock
        self._dropped = 0
        self._reported_at: float | None = None

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            return self._inner.export(spans)
        except OSError as exc:  # requests' ConnectionError and timeouts are OSErrors
            self._dropped += len(spans)
            now = self._clock()
            if self._reported_at is None or now - self._reported_at >= UNREACHABLE_REPORT_SECONDS:
                logging.getLogger(__name__).warning(
                    "trace collector unreachable (%s): %d span(s) dropped; retrying with the next batch",
                    type(exc).__name__,
                    self._dropped,
                )
                self._reported_at, self._dropped = now, 0
            return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        flushed: bool = self._inner.force_flush(timeout_millis)
        return flushed


def quiet_when_unreachable(exporter: Any, clock: Any = time.monotonic) -> Any:
    """``exporter``, answering FAILURE with a line a minute instead of raising while its collector is unreachable
    (typed Any, as the exporters here are: the SDK's SpanExporter base is imported only once telemetry is set up)."""
    return _QuietWhenUnreachable(exporter, clock)


def _span_exporter(name: str) -> Any:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "zipkin":
        from opentelemetry.exporter.zipkin.json import ZipkinExporter

        return quiet_when_unreachable(ZipkinExporter())
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    return ConsoleSpanExporter()


def _metric_readers(names: list[str], env: Mapping[str, str]) -> tuple[list[Any], str | None]:
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

    readers: list[Any] = []
    address = None
    for name in names:
        if name == "prometheus":
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import start_http_server

            host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1")
            port = int(env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464"))
            readers.append(PrometheusMetricReader())
            start_http_server(port, addr=host)
            address = f"http://{host}:{port}/metrics"
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        else:
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
    return readers, address


def configure_telemetry(service: str, log_level: str = "INFO", env: Mapping[str, str] | None = None) -> TelemetryState:
    """Tracer and meter providers from ``OTEL_*``, JSON (or text) logs; call once, from the process's start-up."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    environ = os.environ if env is None else env
    configure_logging(service, log_level)
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return TelemetryState(service, (), (), None)
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME (which wins over ours).
    resource = Resource.create({SERVICE_NAME: environ.get("OTEL_SERVICE_NAME") or service})

    trace_names = trace_exporter_names(environ)
    tracer_provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    for name in trace_names:
        tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(name)))
    trace.set_tracer_provider(tracer_provider)

    metric_names = metric_exporter_names(environ)
    metrics_address = None
    if metric_names:
        from opentelemetry.sdk.metrics import MeterProvider

        readers, metrics_address = _metric_readers(metric_names, environ)
        metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))

    state = TelemetryState(service, tuple(trace_names), tuple(metric_names), metrics_address)
    logging.getLogger(__name__).info(
        "telemetry: traces to %s, metrics to %s%s",
        ", ".join(trace_names) or "nowhere (no OTEL exporter configured)",
        ", ".join(metric_names) or "nowhere",
        f" (scrape {metrics_address})" if metrics_address else "",
    )
    return state


def shutdown_telemetry() -> None:
    """Flushes spans and metrics still buffered; safe when nothing was configured."""
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        shutdown = getattr(provider, "shutdown", None)
        if shutdown is not None:
            shutdown()


# -- traces --------------------------------------------------------------------------------------------


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def trace_carrier() -> dict[str, str]:
    """The current trace context as W3C headers (``traceparent``, ``tracestate``); empty outside a trace."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def current_trace_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(span_context.trace_id) if span_context.is_valid else None


@contextmanager
def continued_trace(carrier: Mapping[str, str] | None) -> Iterator[None]:
    """Makes the trace context in ``carrier`` (W3C headers) the parent of the spans started inside."""
    if not carrier or TRACEPARENT not in carrier:
        yield
        return
    token = otel_context.attach(propagate.extract(dict(carrier)))
    try:
        yield
    finally:
        otel_context.detach(token)


def run_attributes(run_id: str | None, unit: str | None = None, **more: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if run_id is not None:
        attributes["pgmeta.run_id"] = run_id
    if unit is not None:
        attributes["pgmeta.unit"] = unit
    attributes.update({f"pgmeta.{k}": v for k, v in more.items() if v is not None})
    return attributes


@contextmanager
def run_span(name: str, run_id: str | None, unit: str | None = None, **attributes: Any) -> Iterator[trace.Span]:
    """A span of work for one run (and unit); the log lines inside carry the run, an exception marks it failed."""
    with (
        tracer().start_as_current_span(name, attributes=run_attributes(run_id, unit, **attributes)) as span,
        run_scope(run_id, unit) if run_id is not None else _nothing(),
    ):
        yield span


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def mark_failed(span: trace.Span, description: str) -> None:
    span.set_status(Status(StatusCode.ERROR, description))


# -- Dapr gRPC calls: a client span each, and the trace context in the call's metadata ------------------


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


# Request fields worth seeing on a span (names, never payloads).
_REQUEST_FIELDS = {
    "pubsub_name": "dapr.pubsub",
    "topic": "dapr.topic",
    "store_name": "dapr.store",
    "key": "dapr.key",
    "name": "dapr.binding",
    "operation": "dapr.operation",
}


class DaprCallTracing(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """gRPC client interceptor for ``DaprClient``: one CLIENT span per sidecar call, its context sent as
    ``traceparent`` metadata, which daprd continues (and, for a publish, writes into the CloudEvent)."""

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        method = client_call_details.method.rsplit("/", 1)[-1]
        attributes: dict[str, Any] = {"rpc.system": "grpc", "rpc.service": "dapr", "rpc.method": method}
        for field, attribute in _REQUEST_FIELDS.items():
            value = getattr(request, field, None)
            if isinstance(value, str) and value:
                attributes[attribute] = value
        data = getattr(request, "data", None)
        if isinstance(data, bytes):
            attributes["dapr.request_bytes"] = len(data)
        with tracer().start_as_current_span(f"dapr {method}", kind=SpanKind.CLIENT, attributes=attributes) as span:
            metadata = list(client_call_details.metadata or [])
            metadata.extend(trace_carrier().items())
            details = _CallDetails(
                client_call_details.method,
                client_call_details.timeout,
                metadata,
                client_call_details.credentials,
                getattr(client_call_details, "wait_for_ready", None),
                getattr(client_call_details, "compression", None),
            )
            outcome = continuation(details, request)
            error = outcome.exception() if hasattr(outcome, "exception") else None
            if error is not None:
                code = error.code() if hasattr(error, "code") else None
                mark_failed(span, f"{method}: {code.name if code else type(error).__name__}")
            return outcome


def trace_workflow_calls(workflow_client: Any) -> None:
    """Sends the caller's trace context with every call of a ``DaprWorkflowClient`` (schedule, raise event, …).

    dapr-ext-workflow 1.19 builds its gRPC channel itself, with fixed interceptors, and sends no trace context:
    daprd then starts the Workflow engine's spans (``create_orchestration||…``, ``orchestration||…``,
    ``activity||…``) in a trace of their own. daprd's gRPC tracing middleware continues a ``traceparent`` it
    receives on ``/TaskHubSidecarService/StartInstance`` (dapr ``pkg/diagnostics/grpc_tracing.go``), and
    durabletask-go's ``StartInstance`` starts ``create_orchestration`` under that context and hands it on to the
    orchestration and its activities (``backend/executor.go``): so the client's calls go through
    ``DaprCallTracing`` too, laid over the SDK's own channel.
    """
    from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2_grpc as stubs

    task_hub = getattr(workflow_client, "_DaprWorkflowClient__obj", None)
    channel = getattr(task_hub, "_channel", None)
    if task_hub is None or channel is None:
        # A later SDK that moved these would send no context again: say so instead of failing the service.
        logging.getLogger(__name__).warning("workflow client internals changed: its calls carry no trace context")
        return
    task_hub._stub = stubs.TaskHubSidecarServiceStub(  # type: ignore[no-untyped-call]
        grpc.intercept_channel(channel, DaprCallTracing())
    )


# -- metrics -------------------------------------------------------------------------------------------

_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


@dataclass(frozen=True)
class PipelineMetrics:
    """Every pgmeta instrument, made once per process from the global meter provider."""

    runs_started: metrics.Counter
    runs_finished: metrics.Counter
    unit_duration: metrics.Histogram
    records: metrics.Counter
    entities: metrics.Counter
    chunk_records: metrics.Histogram
    chunk_bytes: metrics.Histogram
    claimcheck_bytes: metrics.Counter
    catalog_query_duration: metrics.Histogram
    deliveries: metrics.Counter
    atlan_batches: metrics.Counter
    atlan_retries: metrics.Counter


@cache
def pipeline_metrics() -> PipelineMetrics:
    meter = metrics.get_meter(TRACER_NAME)

    def seconds(name: str, description: str) -> metrics.Histogram:
        return meter.create_histogram(
            name, unit="s", description=description, explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS
        )

    return PipelineMetrics(
        runs_started=meter.create_counter("pgmeta.runs.started", description="Runs whose workflow was scheduled"),
        runs_finished=meter.create_counter(
            "pgmeta.runs.finished", description="Runs that ended, by outcome (COMPLETED, FAILED)"
        ),
        unit_duration=seconds("pgmeta.unit.duration", "Time one stage spent on one unit, by stage and outcome"),
        records=meter.create_counter("pgmeta.records", description="Records a stage produced, by stage and kind"),
        entities=meter.create_counter("pgmeta.entities", description="Atlas entities produced, by type"),
        chunk_records=meter.create_histogram(
            "pgmeta.chunk.records", description="Records per claim-check chunk written, by stage"
        ),
        chunk_bytes=meter.create_histogram(
            "pgmeta.chunk.size", unit="By", description="Encoded bytes per claim-check chunk written, by stage"
        ),
        claimcheck_bytes=meter.create_counter(
            "pgmeta.claimcheck.io", unit="By", description="Claim-check bytes written and read, by stage"
        ),
        catalog_query_duration=seconds(
            "pgmeta.catalog.query.duration", "Time to run and stream one catalog query, by statement"
        ),
        deliveries=meter.create_counter(
            "pgmeta.deliveries",
            description="Pub/sub deliveries by topic and answer: RETRY asks for a redelivery, DROP dead-letters",
        ),
        atlan_batches=meter.create_counter("pgmeta.atlan.batches", description="Atlan batches by operation, outcome"),
        atlan_retries=meter.create_counter("pgmeta.atlan.retries", description="Atlan HTTP retries"),
    )


class Stopwatch:
    """Seconds since construction, on the monotonic clock."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self._start


def instrument_app(app: Any) -> None:
    """A SERVER span per HTTP request (REST calls, and the sidecar's deliveries, whose ``traceparent`` it
    continues). Health checks, scrapes and Dapr's start-up calls are left out."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="healthz,metrics,dapr/subscribe,dapr/config", exclude_spans=["receive", "send"]
    )


# -- claim-check chunks --------------------------------------------------------------------------------


@contextmanager
def chunk_span(action: str, run_id: str, stage: str, unit: str, index: int) -> Iterator[trace.Span]:
    with tracer().start_as_current_span(
        f"claim-check {action} {stage}", attributes=run_attributes(run_id, unit, stage=stage, chunk=index)
    ) as span:
        yield span


def record_chunk_written(span: trace.Span, stage: str, size: int, records: int | None) -> None:
    instruments = pipeline_metrics()
    labels = {"stage": stage}
    span.set_attribute("pgmeta.bytes", size)
    instruments.chunk_bytes.record(size, labels)
    instruments.claimcheck_bytes.add(size, {**labels, "direction": "write"})
    if records is not None:
        span.set_attribute("pgmeta.records", records)
        instruments.chunk_records.record(records, labels)


def record_chunk_read(span: trace.Span, stage: str, size: int, records: int | None) -> None:
    span.set_attribute("pgmeta.bytes", size)
    if records is not None:
        span.set_attribute("pgmeta.records", records)
    pipeline_metrics().claimcheck_bytes.add(size, {"stage": stage, "direction": "read"})


# -- pub/sub deliveries --------------------------------------------------------------------------------


def event_unit(event: Any) -> str | None:
    """The unit an event is about (a database, ``server``), when it names one."""
    work_unit = getattr(event, "work_unit", None)
    if callable(work_unit):
        unit = work_unit()
        return unit if isinstance(unit, str) else None
    unit = getattr(event, "unit", None)
    return unit if isinstance(unit, str) else None


@contextmanager
def delivery_span(
    topic: str, run_id: str | None, unit: str | None, cloud_event: Mapping[str, Any]
) -> Iterator[trace.Span]:
    """The CONSUMER span of one delivery: a child of the sidecar's delivery (whose ``traceparent`` header the
    HTTP server span continued), or, called outside a request, of the CloudEvent's own ``traceparent``."""
    attributes = run_attributes(run_id, unit)
    attributes["messaging.system"] = "dapr"
    attributes["messaging.destination.name"] = topic
    message_id = cloud_event.get("id")
    if isinstance(message_id, str):
        attributes["messaging.message.id"] = message_id
    carrier = None
    if not trace.get_current_span().get_span_context().is_valid:
        carrier = {k: v for k in (TRACEPARENT, "tracestate") if isinstance(v := cloud_event.get(k), str)}
    with (
        continued_trace(carrier),
        tracer().start_as_current_span(f"handle {topic}", kind=SpanKind.CONSUMER, attributes=attributes) as span,
        run_scope(run_id, unit),
    ):
        yield span


def record_delivery(topic: str, outcome: Any) -> None:
    pipeline_metrics().deliveries.add(1, {"topic": topic, "outcome": str(getattr(outcome, "value", outcome))})


# -- a stage's work on one unit ------------------------------------------------------------------------


class UnitWork:
    """The span and metrics of one stage's work on one unit; told how it ended."""

    def __init__(self, span: trace.Span, stage: str) -> None:
        self.span = span
        self.stage = stage
        self.outcome = "completed"

    def failed(self, code: str, message: str, *, retryable: bool) -> None:
        self.outcome = "retried" if retryable else "failed"
        self.span.set_attribute("pgmeta.error_code", code)
        mark_failed(self.span, f"{code}: {message}"[:500])

    def completed(self, counts: Mapping[str, int] | None) -> None:
        if not counts:
            return
        instruments = pipeline_metrics()
        for kind, count in counts.items():
            self.span.set_attribute(f"pgmeta.count.{kind}", count)
            instruments.records.add(count, {"stage": self.stage, "kind": kind})
            if self.stage == "transform":
                instruments.entities.add(count, {"type": kind})


@contextmanager
def unit_work(run_id: str, stage: str, unit: str | None) -> Iterator[UnitWork]:
    clock = Stopwatch()
    with run_span(f"{stage} {unit or 'run'}", run_id, unit, stage=stage) as span:
        work = UnitWork(span, stage)
        try:
            yield work
        finally:
            pipeline_metrics().unit_duration.record(clock.seconds(), {"stage": stage, "outcome": work.outcome})
