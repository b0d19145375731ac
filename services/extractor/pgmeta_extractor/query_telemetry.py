"""A span and a duration metric per catalog query, named by its ``*_QUERY`` constant (never bound values)."""

from __future__ import annotations

import functools
from collections.abc import Generator, Iterator
from typing import Any

from opentelemetry.trace import SpanKind

from pgmeta_shared.telemetry import Stopwatch, mark_failed, pipeline_metrics, tracer


@functools.cache
def _statement_names() -> dict[str, str]:
    from pgmeta_extractor import catalog_sql, change_sql, extraction

    return {
        sql: name
        for module in (catalog_sql, change_sql, extraction)
        for name, sql in vars(module).items()
        if name.endswith("_QUERY") and isinstance(sql, str)
    }


def statement_name(sql: str) -> str:
    return _statement_names().get(sql, "AD_HOC_QUERY")


def observed_rows(sql: str, rows: Iterator[dict[str, Any]]) -> Generator[dict[str, Any], None, None]:
    """``rows`` as they stream, inside a CLIENT span that ends when the stream does (rows read, failure).

    The span is started, not made current: the caller's work between rows must not become its child.
    """
    name = statement_name(sql)
    span = tracer().start_span(
        f"catalog {name}",
        kind=SpanKind.CLIENT,
        attributes={"db.system": "postgresql", "db.query.name": name, "db.operation.name": "SELECT"},
    )
    clock = Stopwatch()
    count = 0
    try:
        for row in rows:
            count += 1
            yield row
    except Exception as exc:
        mark_failed(span, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"[:300])
        raise
    finally:
        span.set_attribute("db.response.returned_rows", count)
        span.end()
        pipeline_metrics().catalog_query_duration.record(clock.seconds(), {"statement": name})
