"""One thread of its own for a service's chunk work: one chunk at a time, always in the same malloc arena."""

from __future__ import annotations

import contextvars
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
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._starting = threading.Lock()

    def run(self, work: Callable[[], T]) -> T:
        context = contextvars.copy_context()
        return self._pool().submit(context.run, work).result()

    def _pool(self) -> ThreadPoolExecutor:
        # Started on first use, not at import.
        with self._starting:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
            return self._executor
