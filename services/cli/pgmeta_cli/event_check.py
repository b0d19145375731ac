"""What `pgmeta publish` sends is checked first against the event model the orchestrator validates it with.

A malformed event published anyway is only dropped to the dead-letter topic, with the reason in the
orchestrator's log: the user would see "published" and nothing happen.
"""

from __future__ import annotations

from typing import Any


def event_problems(topic: str, document: Any) -> str | None:
    """None when ``document`` is a valid event for ``topic``; else what is wrong, without echoing values."""
    from pydantic import ValidationError

    from pgmeta_shared.events import ExtractionRequested, TopicName

    if topic != TopicName.EXTRACTION_REQUESTED:
        internal = {t.value for t in TopicName}
        why = "is internal to the pipeline" if topic in internal else "is not a pgmeta topic"
        return f"{topic!r} {why}; `pgmeta publish` sends {TopicName.EXTRACTION_REQUESTED.value!r} requests"
    try:
        ExtractionRequested.model_validate(document)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(document)'}: {error['msg']}" for error in exc.errors()
        )
        return f"not a valid {topic} event: {reasons}"
    return None
