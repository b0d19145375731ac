"""Graceful shutdown of a service process: on SIGTERM stop taking work, release or finish what runs, exit 0.

The order, as Kubernetes and the local supervisor send it:

1. SIGTERM → the drain begins: ``/readyz`` answers 503 (the Service and the sidecar stop counting on this
   replica) and no new delivery is worked on: it is handed back as below (RETRY if that fails). Redis
   Streams keeps a RETRY-answered message pending on this replica's consumer until ``processingTimeout``.
2. Work in flight stops at its next progress point (one chunk): the unit's lease is released at once and
   its command is handed back to the consumer group (re-published, then this delivery acknowledged), so
   another replica takes it now — not after the lease goes stale or Redis reclaims the pending message.
   Work that cannot resume part-way (one database's extraction) keeps going while it has time, and is
   handed back only if it would outlast ``PGMETA_DRAIN_SECONDS``.
3. Once nothing has been in flight for ``LINGER_SECONDS`` (or the drain time is up), uvicorn shuts down as
   usual and the process exits 0.

The sidecar keeps serving state and publish calls during the drain: Dapr's ``block-shutdown-duration``
(deploy/helm, docs/deploy.md); the local supervisor stops the apps before their sidecars.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from types import FrameType

import uvicorn
from pydantic import BaseModel
from pydantic_settings import BaseSettings, SettingsConfigDict

from pgmeta_shared.errors import PgmetaError
from pgmeta_shared.events import TopicName

log = logging.getLogger(__name__)

# Work that cannot resume part-way is handed back this long before the drain time ends, so that the
# hand-back itself (a publish, a lease delete) still fits in it.
HANDBACK_MARGIN_SECONDS = 3.0
# Idle this long before exiting: a command handed back can come straight back to this replica's own sidecar
# (locally it still reads the topic; in Kubernetes block-shutdown has stopped it) and is handed back again.
LINGER_SECONDS = 1.0


class DrainSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PGMETA_", extra="ignore")

    # Below Dapr's block-shutdown duration and the pod's terminationGracePeriodSeconds (the chart checks).
    drain_seconds: float = 25.0


class ShuttingDownError(PgmetaError):
    """This process is shutting down: the unit is handed back to another replica, not failed."""

    code = "shutting_down"
    retryable = True


Handback = Callable[[TopicName, BaseModel], None]


class Drain:
    """What one process knows about its own shutdown: draining or not, and which deliveries are in flight."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Condition()
        self._in_flight = 0
        self._deadline: float | None = None
        self.handback: Handback | None = None  # set by the app once its sidecar client exists

    @property
    def draining(self) -> bool:
        return self._deadline is not None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def begin(self, seconds: float) -> None:
        with self._lock:
            if self._deadline is None:
                self._deadline = self._clock() + seconds
                log.warning(
                    "shutting down: no new work; %d in flight, %.0f s to finish or hand back", self._in_flight, seconds
                )
            self._lock.notify_all()

    @contextmanager
    def delivery(self) -> Iterator[bool]:
        """One delivery's lifetime; yields False when it must not start (the process is draining)."""
        with self._lock:
            admitted = not self.draining
            self._in_flight += admitted
        if not admitted:
            yield False
            return
        try:
            yield True
        finally:
            with self._lock:
                self._in_flight -= 1
                self._lock.notify_all()

    def check(self, *, resumable: bool) -> None:
        """Called at work's progress points. Raises ShuttingDownError when the work should stop now: at once
        if another replica can resume it from its finished chunks, else only when the drain time runs short."""
        deadline = self._deadline
        if deadline is None:
            return
        if resumable or self._clock() >= deadline - HANDBACK_MARGIN_SECONDS:
            raise ShuttingDownError("this replica is shutting down: the unit goes to another replica")

    def wait_idle(self, linger: float = 0.0) -> bool:
        """Blocks until nothing has been in flight for ``linger`` seconds, or the drain time is up; True when
        idle. The linger catches deliveries that arrive just after the last one ended (handed back too)."""
        with self._lock:
            assert self._deadline is not None
            idle_since: float | None = None
            while True:
                now = self._clock()
                if self._in_flight:
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif now - idle_since >= linger:
                    return True
                left = self._deadline - now
                if left <= 0:
                    return self._in_flight == 0
                self._lock.wait(min(left, 0.1 if idle_since is not None else 0.5))


@cache
def process_drain() -> Drain:
    """The drain of this process: SIGTERM is process-wide, so is the answer to it."""
    return Drain()


class DrainingServer(uvicorn.Server):
    """uvicorn, except that SIGTERM drains first (``Drain``) and a drained process exits 0.

    uvicorn alone stops accepting connections at once (the sidecar's next delivery fails instead of being
    answered) and re-raises the signal after its shutdown, so the process ends "killed by SIGTERM".
    A second signal exits at once.
    """

    def __init__(self, config: uvicorn.Config, drain: Drain, seconds: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._seconds = seconds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain.draining:
            super().handle_exit(sig, frame)
            self.force_exit = True
            return
        log.warning("received %s", signal.Signals(sig).name)
        self._drain.begin(self._seconds)
        threading.Thread(target=self._exit_when_idle, name="drain", daemon=True).start()

    def _exit_when_idle(self) -> None:
        if self._drain.wait_idle(linger=LINGER_SECONDS):
            log.warning("drained: exiting")
        else:
            log.warning("drain time up with %d deliveries in flight: exiting", self._drain.in_flight)
        self.should_exit = True


def serve_draining(app: object, host: str, port: int, drain: Drain | None = None) -> None:
    """Runs ``app`` under uvicorn until SIGTERM/SIGINT, then drains (``Drain``) and returns."""
    settings = DrainSettings()
    # By the time uvicorn shuts down the drain is over: what still runs is cut after a few seconds.
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=3,
    )
    DrainingServer(config, drain or process_drain(), settings.drain_seconds).run()
