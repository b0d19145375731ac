"""What tracing costs the services in-process: CPU time per claim-check chunk and per catalog row.

`uv run python -m pgmeta_devstack.telemetry_cost` — spans go to a batch processor that discards them, so the
numbers are the services' own cost (span creation, attributes, metrics), not an exporter's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from pgmeta_extractor.query_telemetry import observed_rows
from pgmeta_shared.telemetry import chunk_span, record_chunk_written, run_span

ROWS = 208_000
CHUNKS = 1_000


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _cpu_seconds(work: Callable[[], object], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best


def _chunks() -> None:
    with run_span("extract db", "run", "db"):
        for index in range(CHUNKS):
            with chunk_span("save", "run", "extract", "db", index) as span:
                record_chunk_written(span, "extract", 1000, 10)
                with trace.get_tracer("dapr-call").start_as_current_span("dapr SaveState"):
                    pass


def main() -> None:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Discard()))
    trace.set_tracer_provider(provider)
    rows = [{"column": i} for i in range(ROWS)]
    plain = _cpu_seconds(lambda: sum(1 for _ in iter(rows)))
    wrapped = _cpu_seconds(lambda: sum(1 for _ in observed_rows("COLUMNS_QUERY", iter(rows))))
    print(f"{ROWS} catalog rows: {plain * 1000:.1f} ms plain, {wrapped * 1000:.1f} ms through the query span")
    per_chunk = _cpu_seconds(_chunks, repeat=3) / CHUNKS
    print(f"one claim-check chunk (its span, its Dapr call's span, its metrics): {per_chunk * 1000:.3f} ms CPU")
    provider.shutdown()


if __name__ == "__main__":
    main()
