"""Run fences and work leases: late work never commits, a redelivery never robs a live worker.

**Fence** (``run_fence_key``): the workflow's finish step (and a cancel) records that a run ended. Stage
handlers look at it before they start and at every progress report, and stop; the publisher *claims* the
commit (manifest + baseline move) on it with an ETag-conditional write, so the claim and the end of the run
are serialised: whichever is first wins, and a publish that arrives after its run ended commits nothing.

**Lease** (``work_lease_key``): the worker on a stage unit heartbeats a record while it works. Pub/sub
hands a command to another consumer after ``processingTimeout`` (seconds, so that a dead consumer's
command is redelivered quickly — components/pubsub.yaml); a redelivery that finds a fresh lease waits for
it (its message stays pending meanwhile) instead of doing the same work twice, then finds the recorded
result and re-announces it. A lease not heartbeated for
``LEASE_STALE_SECONDS`` belongs to a dead worker and is taken over.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel

from pgmeta_shared.errors import PgmetaError
from pgmeta_shared.events import StageCommand
from pgmeta_shared.keys import StageName, run_fence_key, work_lease_key
from pgmeta_shared.platform import ArtifactStore, Platform

log = logging.getLogger(__name__)

CommandT = TypeVar("CommandT", bound=StageCommand)

LEASE_HEARTBEAT_SECONDS = 2.0
LEASE_STALE_SECONDS = 8.0
# How long a redelivery waits for a live worker before asking for redelivery. Waiting (not acknowledging)
# keeps the message pending until the work is durably done: if the worker and its sidecar both die, the
# waiting delivery takes over.
LEASE_WAIT_SECONDS = 300.0
FENCE_CHECK_SECONDS = 1.0  # how often running work looks at its run's fence


class RunState(StrEnum):
    """What a fence says. COMMITTING: the publisher claimed the commit; the rest end the run."""

    COMMITTING = "COMMITTING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


ENDED = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED})


class RunEndedError(PgmetaError):
    """The run this work belongs to has ended: stop, commit nothing, acknowledge the message."""

    code = "run_ended"


class WorkInProgressError(PgmetaError):
    """Another live worker holds this unit: ask for redelivery later (it may die; then the lease goes stale)."""

    code = "work_in_progress"
    retryable = True


def _now() -> str:
    return datetime.now(UTC).isoformat()


def run_state(store: ArtifactStore, run_id: str) -> RunState | None:
    fence = store.get_json(run_fence_key(run_id))
    return RunState(fence["status"]) if fence else None


def ended(store: ArtifactStore, run_id: str) -> RunState | None:
    """The run's final state, if it has ended."""
    state = run_state(store, run_id)
    return state if state in ENDED else None


def end_run(store: ArtifactStore, run_id: str, status: RunState, reason: str | None = None) -> RunState:
    """Records the end of a run (the workflow's finish step, a cancel). The first end wins; returns it."""

    def mutate(current: dict[str, Any] | None) -> dict[str, Any]:
        if current and RunState(current["status"]) in ENDED:
            return current
        return {"status": status.value, "at": _now(), "reason": reason}

    fence: dict[str, Any] = store.update_json(run_fence_key(run_id), mutate, run_scoped=True)
    return RunState(fence["status"])


def reopen_run(store: ArtifactStore, run_id: str) -> None:
    """A retried run may commit again."""
    store.delete_json(run_fence_key(run_id))


def claim_commit(store: ArtifactStore, run_id: str) -> None:
    """The publisher's right to write the manifest and move the baseline; raises RunEndedError if the run ended.

    Conditional on the fence's ETag: a finish step that ends the run concurrently either comes first (and
    this raises) or sees the claim (the run is being committed).
    """

    def mutate(current: dict[str, Any] | None) -> dict[str, Any]:
        if current and RunState(current["status"]) in ENDED:
            raise RunEndedError(f"run {run_id} already ended ({current['status']}): nothing is committed")
        return {"status": RunState.COMMITTING.value, "at": _now()}

    store.update_json(run_fence_key(run_id), mutate, run_scoped=True)


class FenceWatch:
    """Checks a run's fence at most every ``FENCE_CHECK_SECONDS``; raises RunEndedError once it has ended."""

    def __init__(self, store: ArtifactStore, run_id: str) -> None:
        self._store = store
        self._run_id = run_id
        self._next = 0.0

    def check(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + FENCE_CHECK_SECONDS
        state = ended(self._store, self._run_id)
        if state is not None:
            raise RunEndedError(f"run {self._run_id} ended ({state.value}) while this work ran; stopped")


def lease_is_fresh(store: ArtifactStore, run_id: str, stage: StageName, unit: str | None) -> bool:
    """Whether a live worker holds the unit's lease (heartbeated within ``LEASE_STALE_SECONDS``)."""
    lease = store.get_json(work_lease_key(run_id, stage, unit))
    return lease is not None and time.time() - lease["heartbeat"] < LEASE_STALE_SECONDS


@contextmanager
def work_lease(store: ArtifactStore, run_id: str, stage: StageName, unit: str | None) -> Iterator[None]:
    """Holds the lease on one stage unit while the body runs, heartbeating it from a thread."""
    key = work_lease_key(run_id, stage, unit)
    holder = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def take(current: dict[str, Any] | None) -> dict[str, Any]:
        if current and current["holder"] != holder and time.time() - current["heartbeat"] < LEASE_STALE_SECONDS:
            raise WorkInProgressError(f"{key} is held by {current['holder']}")
        if current and current["holder"] != holder:
            log.warning("run %s: taking over %s from %s (no heartbeat)", run_id, key, current["holder"])
        return {"holder": holder, "heartbeat": time.time()}

    deadline = time.monotonic() + LEASE_WAIT_SECONDS
    while True:
        try:
            store.update_json(key, take, run_scoped=True)
            break
        except WorkInProgressError:
            if time.monotonic() >= deadline:
                raise
            state = ended(store, run_id)
            if state is not None:
                raise RunEndedError(f"run {run_id} ended ({state.value}) while waiting for {key}") from None
            time.sleep(0.25)

    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(LEASE_HEARTBEAT_SECONDS):
            try:
                store.update_json(key, take, run_scoped=True)
            except WorkInProgressError:
                log.warning("run %s: lost %s to another worker", run_id, key)
                return
            except Exception:
                log.warning("run %s: heartbeat of %s failed; retrying", run_id, key, exc_info=True)

    # The heartbeat's state calls (and log lines) belong to the run's trace: a thread starts with an empty
    # context, so it runs in a copy of this one.
    beat = threading.Thread(target=contextvars.copy_context().run, args=(heartbeat,), name=f"lease-{key}", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        try:
            store.delete_json(key)
        except Exception:  # the lease goes stale by itself
            log.warning("run %s: could not release %s", run_id, key, exc_info=True)


def guarded_work(
    platform: Platform, stage: StageName, command: CommandT, work: Callable[[CommandT, Platform], BaseModel]
) -> BaseModel:
    """A stage command's work, unless its run ended; under the unit's lease, so a redelivery waits for it."""
    state = ended(platform, command.run_id)
    if state is not None:
        raise RunEndedError(f"run {command.run_id} already ended ({state.value}); late command ignored")
    with work_lease(platform, command.run_id, stage, command.work_unit()):
        return work(command, platform)
