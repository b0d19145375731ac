"""Progress events, at most a few per second: each one costs a publish, a delivery and a state write."""

from __future__ import annotations

import time

from pgmeta_shared.events import ExtractionProgress, TopicName
from pgmeta_shared.fencing import FenceWatch
from pgmeta_shared.platform import Platform


class ProgressReporter:
    """Publishes ``extraction.progress`` for one stage unit, skipping updates closer than ``interval`` apart."""

    def __init__(self, platform: Platform, interval: float = 0.5) -> None:
        self._platform = platform
        self._interval = interval
        self._last = float("-inf")
        self._fence: FenceWatch | None = None

    def report(self, progress: ExtractionProgress) -> None:
        # Progress points are where long work stops once its run has ended (cancelled, failed, timed out).
        self._fence = self._fence or FenceWatch(self._platform, progress.run_id)
        self._fence.check()
        now = time.monotonic()
        finished = progress.total is not None and progress.done >= progress.total
        if finished or now - self._last >= self._interval:
            self._last = now
            self._platform.publish(TopicName.EXTRACTION_PROGRESS, progress)
