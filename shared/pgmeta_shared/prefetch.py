"""Reads from the sidecar issued ahead of their use: a stage that reads many stored parts one after another
spends most of its time waiting on gRPC round trips, one at a time."""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

READS_AHEAD = 4


def prefetched(calls: Iterable[Callable[[], T]], ahead: int = READS_AHEAD) -> Generator[T, None, None]:
    """Each call's result, in order, with up to ``ahead`` calls running before their result is asked for.

    The calls run in the caller's context (their spans stay in the run's trace). A call's exception is raised
    where its result is taken; when the caller stops early, calls already started finish, none is started.
    """
    pending: deque[Future[T]] = deque()
    source = iter(calls)
    with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="pgmeta-read") as pool:
        try:

            def fill() -> None:
                while len(pending) < ahead:
                    call = next(source, None)
                    if call is None:
                        return
                    pending.append(pool.submit(contextvars.copy_context().run, call))

            fill()
            while pending:
                result = pending.popleft().result()
                fill()
                yield result
        finally:
            for future in pending:
                future.cancel()
