"""The bench lays a run's stages end to end from its events on the Redis streams."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pgmeta_bench.runners import stage_times


class Streams:
    """``xrange`` over events added at given milliseconds, as Redis streams hold them (ids ``<ms>-<seq>``)."""

    def __init__(self, events: dict[str, list[int]]) -> None:
        self._events = events

    def xrange(self, topic: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        data = json.dumps({"data": {"run_id": "r1"}}).encode()
        return [(f"{ms}-0".encode(), {b"data": data}) for ms in self._events.get(topic, [])]


def times(events: dict[str, list[int]]) -> Any:
    return stage_times(Streams(events), "r1", requested_ms=0, completed_ms=2000)  # type: ignore[arg-type]


def test_sequential_stages_are_their_own_spans() -> None:
    measured = times(
        {
            "preflight.requested": [10],
            "preflight.completed": [100],
            "extract.requested": [150],
            "extract.completed": [900],
            "transform.requested": [950],
            "transform.completed": [1200],
            "publish.requested": [1250],
            "publish.completed": [1900],
        }
    )
    assert measured.stages == pytest.approx(
        {"preflight": 0.09, "extract": 0.75, "transform": 0.25, "publish": 0.65, "orchestration": 0.26}
    )
    assert measured.handoffs["extract→transform"] == pytest.approx(0.05)


def test_work_overlapping_the_stage_before_counts_in_it() -> None:
    """Workflow v3 sends the server unit's transform with the extract commands: the transform stage starts, for the
    report, when extraction ends; nothing is negative and the spans add up to the run."""
    measured = times(
        {
            "preflight.requested": [10],
            "preflight.completed": [100],
            "extract.requested": [150],
            "extract.completed": [900],
            "transform.requested": [150, 950],
            "transform.completed": [300, 1200],
            "publish.requested": [1250],
            "publish.completed": [1900],
        }
    )
    assert measured.stages["transform"] == pytest.approx(0.3)
    assert measured.handoffs["extract→transform"] == 0
    assert min(measured.stages.values()) >= 0 and min(measured.handoffs.values()) >= 0
    assert sum(measured.stages.values()) == pytest.approx(2.0)
    # A re-run whose only transform (the server unit) ended during extraction has a transform stage of 0 s.
    rerun = times({**measured_events(), "transform.requested": [150], "transform.completed": [300]})
    assert rerun.stages["transform"] == 0 and rerun.handoffs["transform→publish"] == pytest.approx(0.35)


def measured_events() -> dict[str, list[int]]:
    return {
        "preflight.requested": [10],
        "preflight.completed": [100],
        "extract.requested": [150],
        "extract.completed": [900],
        "publish.requested": [1250],
        "publish.completed": [1900],
    }
