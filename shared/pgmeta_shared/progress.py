"""Progress events, at most a few per second: each one costs a publish, a delivery and a state write."""

from __future__ import annotations

import time

from pgmeta_shared.events import ExtractionProgress, TopicName
from pgmeta_shared.fencing import FenceWatch
from pgmeta_shared.platform import Platform
from pgmeta_shared.shutdown import Drain, process_drain


class ProgressReporter:
    """Publishes ``extraction.progress`` for one stage unit, skipping updates closer than ``interval`` apart.

    ``resumable``: another replica can pick the unit up from its finished chunks, so a shutdown stops it at
    the next report; otherwise it is stopped only when the drain time runs short (``pgmeta_shared.shutdown``).
    """

    def __init__(
        self, platform: Platform, interval: float = 0.5, *, resumable: bool = True, drain: Drain | None = None
    ) -> None:
        self._platform = platform
        self._resumable = resumable
        self._drain = drain or process_drain()
        self._interval = interval
        self._last = float("-inf")
        self._fence: FenceWatch | None = None

    def report(self, progress: ExtractionProgress) -> None:
        # Progress points are where long work stops once its run has ended (cancelled, failed, timed out),
        # or this process is shutting down.
        self._drain.check(resumable=self._resumable)
        self._fence = self._fence or FenceWatch(self._platform, progress.run_id)
        self._fence.check()
        now = time.monotonic()
        finished = progress.total is not None and progress.done >= progress.total
        if finished or now - self._last >= self._interval:
            self._last = now
            self._platform.publish(TopicName.EXTRACTION_PROGRESS, progress)
