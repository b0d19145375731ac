"""When a schedule is due: cron (5 or 6 fields, seconds first as in Dapr), ``@every <duration>`` and the
``@hourly``/``@daily``/... shorthands, evaluated in the schedule's IANA time zone (DST included).

Pure functions: the trigger handler and ``GET /schedules/{id}`` both ask "which tick is this" and "which
tick is next", and the answer must not depend on when a trigger happens to be delivered.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

SHORTHANDS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
MIN_INTERVAL = timedelta(seconds=1)


class ScheduleSpecError(ValueError):
    """A schedule expression or time zone that cannot be evaluated; the message names the problem."""


def parse_every(expression: str) -> timedelta | None:
    """The interval of ``@every 1h30m`` (Go-style duration: h, m, s), or None for any other form."""
    if not expression.startswith("@every"):
        return None
    text = expression.removeprefix("@every").strip()
    match = _DURATION.match(text)
    if not text or match is None:
        raise ScheduleSpecError(f"@every needs a duration like 30s, 15m or 1h30m, not {text!r}")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    interval = timedelta(hours=hours, minutes=minutes, seconds=seconds)
    if interval < MIN_INTERVAL:
        raise ScheduleSpecError("@every needs an interval of at least 1 s")
    return interval


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleSpecError(f"unknown time zone {name!r} (use an IANA name such as Europe/Paris)") from exc


def cron_of(expression: str) -> str:
    return SHORTHANDS.get(expression.strip(), expression.strip())


def validate(expression: str, time_zone: str) -> None:
    zone(time_zone)
    if parse_every(expression) is not None:
        return
    cron = cron_of(expression)
    if len(cron.split()) not in (5, 6):
        raise ScheduleSpecError(
            f"{expression!r} is not a schedule: use a 5-field cron ('0 2 * * *'), a 6-field cron with seconds "
            "first, '@every 15m' or one of " + ", ".join(sorted(SHORTHANDS))
        )
    try:
        next(CronSim(cron, datetime.now(zone(time_zone))))
    except (CronSimError, StopIteration) as exc:
        raise ScheduleSpecError(f"invalid cron expression {expression!r}: {exc}") from exc


def next_due(expression: str, time_zone: str, anchor: datetime, after: datetime) -> datetime:
    """The first tick strictly after ``after`` (UTC). ``@every`` ticks are ``anchor + k × interval``."""
    interval = parse_every(expression)
    if interval is not None:
        if after < anchor:
            return anchor
        elapsed = after - anchor
        ticks = elapsed // interval + 1
        return anchor + ticks * interval
    local = after.astimezone(zone(time_zone))
    due = next(CronSim(cron_of(expression), local))
    return due.astimezone(UTC)


def jitter_offset(schedule_id: str, due: datetime, jitter_seconds: int) -> timedelta:
    """A delay in [0, jitter] that is stable for one schedule and tick (replicas and retries agree)."""
    if jitter_seconds <= 0:
        return timedelta(0)
    digest = hashlib.sha256(f"{schedule_id}|{due.isoformat()}".encode()).digest()
    return timedelta(seconds=int.from_bytes(digest[:4], "big") % (jitter_seconds + 1))


def stamp(due: datetime) -> str:
    """The tick as it appears in run ids and job names: ``20261129T183000Z``."""
    return due.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def from_stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
