"""Reads issued ahead: results in order, at most ``ahead`` running, failures where they are taken, context kept."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable

import pytest

from pgmeta_shared.prefetch import prefetched

RUN = contextvars.ContextVar("run", default="none")


def test_results_come_in_order_with_at_most_ahead_calls_running() -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def call(i: int) -> Callable[[], int]:
        def read() -> int:
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            time.sleep(0.01 * (5 - i % 5))  # later calls finish first
            with lock:
                running -= 1
            return i

        return read

    assert list(prefetched([call(i) for i in range(20)], ahead=3)) == list(range(20))
    assert 1 < most <= 3


def test_a_failing_call_raises_where_its_result_is_taken() -> None:
    def boom() -> int:
        raise ValueError("part gone")

    results = prefetched([lambda: 1, boom, lambda: 3])
    assert next(results) == 1
    with pytest.raises(ValueError, match="part gone"):
        next(results)


def test_stopping_early_starts_nothing_more() -> None:
    started: list[int] = []

    def call(i: int) -> Callable[[], int]:
        def read() -> int:
            started.append(i)
            return i

        return read

    results = prefetched([call(i) for i in range(100)], ahead=2)
    assert next(results) == 0
    results.close()
    assert len(started) <= 4


def test_calls_run_in_the_callers_context() -> None:
    RUN.set("run-7")
    assert list(prefetched([RUN.get, RUN.get])) == ["run-7", "run-7"]
