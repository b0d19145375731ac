"""Runs that ended in this process, so that a long poll (``GET /runs/{id}?wait=…``) here learns of it at once."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator


class RunEndings:
    """Runs whose last activity (``finish_run``) ran in this process, so that a long poll here wakes at once.

    daprd's WaitForInstanceCompletion answered up to ~0.9 s after the workflow had completed (in a 3 s re-run's
    log: "Orchestration completed" at 07:43:37.360, the client's "completed" at 07:43:38.090): a fifth to a third
    of a re-run. A run that ended on another replica is still told by daprd, as before.
    """

    KEPT = 1000  # ended runs remembered (a wait that begins just after its run ended still wakes at once)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._watchers: dict[str, set[threading.Event]] = {}

    def ended(self, run_id: str) -> None:
        with self._lock:
            self._ended[run_id] = None
            while len(self._ended) > self.KEPT:
                self._ended.popitem(last=False)
            for watcher in self._watchers.get(run_id, ()):
                watcher.set()

    def forget(self, run_id: str) -> None:
        """``run_id`` runs again (a retry keeps the id): its end is to come."""
        with self._lock:
            self._ended.pop(run_id, None)

    @contextlib.contextmanager
    def watch(self, run_id: str, woken: threading.Event) -> Iterator[None]:
        """``woken`` is set when ``run_id`` ends here (at once, when it already has)."""
        with self._lock:
            self._watchers.setdefault(run_id, set()).add(woken)
            if run_id in self._ended:
                woken.set()
        try:
            yield
        finally:
            with self._lock:
                watchers = self._watchers.get(run_id, set())
                watchers.discard(woken)
                if not watchers:
                    self._watchers.pop(run_id, None)
