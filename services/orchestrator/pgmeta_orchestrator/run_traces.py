"""Carries each run's trace through the Dapr Workflow, so every command the workflow publishes continues it.

The workflow's activities run on the Workflow runtime's threads, outside any request: nothing links them to
the delivery of ``extraction.requested`` that started the run. That delivery's trace context (W3C headers) is
kept under the run, and each activity continues it; a restarted orchestrator reads it back from the store.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from threading import Lock
from typing import Any

from opentelemetry.trace import Span

from pgmeta_shared.keys import run_trace_key as trace_key
from pgmeta_shared.platform import Platform
from pgmeta_shared.telemetry import (
    RECORD_RUN_ID,
    RECORD_TRACE_ID,
    TRACEPARENT,
    adopt_library_loggers,
    continued_trace,
    pipeline_metrics,
    run_span,
    trace_carrier,
)

_REMEMBERED = 1024


class RunTraces:
    """The trace context of each run, in memory for the runs this process saw, in the artifacts store for all."""

    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._known: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._lock = Lock()

    def _keep(self, run_id: str, carrier: dict[str, str]) -> None:
        with self._lock:
            self._known[run_id] = carrier
            self._known.move_to_end(run_id)
            while len(self._known) > _REMEMBERED:
                self._known.popitem(last=False)

    def remember(self, run_id: str) -> None:
        """Keeps the current trace context as the run's; call before scheduling the run's workflow, whose first
        activity may run at once. A duplicate request keeps the first request's trace."""
        carrier = trace_carrier()
        if not carrier or self.carrier_of(run_id) is not None:
            return
        self._keep(run_id, carrier)
        self._platform.save_json(trace_key(run_id), carrier)  # lives as long as the run's chunks
        pipeline_metrics().runs_started.add(1)

    def carrier_of(self, run_id: str) -> dict[str, str] | None:
        with self._lock:
            known = self._known.get(run_id)
        if known is not None:
            return known
        stored = self._platform.get_json(trace_key(run_id))
        if isinstance(stored, dict):
            carrier = {str(k): str(v) for k, v in stored.items()}
            self._keep(run_id, carrier)
            return carrier
        return None

    def known_trace_id(self, run_id: str) -> str | None:
        """The run's trace id if this process has seen the run (memory only: called while logging)."""
        with self._lock:
            carrier = self._known.get(run_id)
        parts = carrier.get(TRACEPARENT, "").split("-") if carrier else []
        return parts[1] if len(parts) == 4 else None

    @contextmanager
    def activity(self, run_id: str, name: str, **attributes: Any) -> Iterator[Span]:
        """A span for one workflow activity of ``run_id``, in the run's trace."""
        with continued_trace(self.carrier_of(run_id)), run_span(f"workflow {name}", run_id, **attributes) as span:
            yield span


# Durable Task's worker logs each workflow step as "<instance id>: …", "<instance id>/<task>: …" or
# "<instance id> Event raised: …"; a first word that names no run this process knows is left alone.
_INSTANCE_PREFIX = re.compile(r"^(?P<run_id>[^\s:/]+)(?:/\S+)?:? ")


class WorkflowLogTraces(logging.Filter):
    """Gives the Workflow runtime's lines about a run (logged on its own threads, outside any span) the run's id
    and trace id, so that every line about a run carries them."""

    def __init__(self, traces: RunTraces) -> None:
        super().__init__()
        self._traces = traces

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and (match := _INSTANCE_PREFIX.match(record.getMessage())):
            trace_id = self._traces.known_trace_id(match["run_id"])
            if trace_id is not None:
                setattr(record, RECORD_TRACE_ID, trace_id)
                setattr(record, RECORD_RUN_ID, match["run_id"])
        return True


def attach_workflow_log_traces(traces: RunTraces) -> None:
    """Durable Task's loggers through the service's handler, their run lines with the run's trace."""
    adopt_library_loggers("durabletask")
    logging.getLogger("durabletask-worker").addFilter(WorkflowLogTraces(traces))
