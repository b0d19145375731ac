"""One thread of its own for a service's chunk work: one chunk at a time, always in the same malloc arena."""

from __future__ import annotations

import contextvars
import gc
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ChunkThread:
    """Runs chunk work one piece at a time on a single thread of its own, for whichever thread asks.

    A lock would serialize the work as well, but on the asking thread: deliveries arrive on any of the web
    server's worker threads (up to 40), glibc gives each thread that allocates its own malloc arena (up to 8
    per core), and an arena keeps what a chunk freed for its next chunk. Behind a lock, each of those arenas
    came to hold a chunk's working set (measured on 55 chunks shaped like the default bench catalog's: 352 MB peak RSS
    from 40 threads against 113 MB from one). The caller's context (the trace span) goes with the work.

    The cyclic garbage collector is paused while a piece of work runs. A chunk allocates hundreds of thousands of
    containers (parsed records, entity dicts) that live until the chunk is done, so collections triggered by the
    allocation count found nothing to free but traversed them again and again (and with them every object the
    service's imports left): ~20 % of the transformer's chunk CPU. Chunk work makes no reference cycles worth
    waiting for: reference counting frees it all when the chunk is done, and any cycle made meanwhile (by this or
    another thread) is collected once the collector runs again.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._starting = threading.Lock()

    def run(self, work: Callable[[], T]) -> T:
        context = contextvars.copy_context()
        return self._pool().submit(context.run, _without_cyclic_gc, work).result()

    def _pool(self) -> ThreadPoolExecutor:
        # Started on first use, not at import.
        with self._starting:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
            return self._executor


def _without_cyclic_gc(work: Callable[[], T]) -> T:
    if not gc.isenabled():  # paused by someone else: theirs to resume
        return work()
    gc.disable()
    try:
        return work()
    finally:
        gc.enable()
