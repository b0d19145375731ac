"""Dapr subscription adapters: validate on entry, answer SUCCESS / RETRY / DROP explicitly.

Handlers are plain functions taking the validated event; they run in a worker thread because the
domain code (psycopg, gRPC) blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Body, FastAPI
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from pgmeta_shared.delivery import Delivery, classify
from pgmeta_shared.events import TopicName
from pgmeta_shared.shutdown import Drain, ShuttingDownError
from pgmeta_shared.telemetry import delivery_span, event_unit, mark_failed, record_delivery

log = logging.getLogger(__name__)

EventT = TypeVar("EventT", bound=BaseModel)


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "<event>"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_event(model: type[EventT], cloud_event: dict[str, Any]) -> EventT:
    """The CloudEvent's ``data`` validated against the topic's model (raises ValidationError)."""
    data = cloud_event.get("data", cloud_event) if isinstance(cloud_event, dict) else cloud_event
    return model.model_validate(data)


def deliver(
    model: type[EventT],
    handler: Callable[[EventT], None],
    cloud_event: dict[str, Any],
    topic: str,
    drain: Drain | None = None,
) -> Delivery:
    """Runs ``handler`` on one delivery and decides its fate. Blocking; call from a worker thread.

    While the process drains (``pgmeta_shared.shutdown``) a new delivery is not worked on: it is handed back
    to the consumer group like released work (this replica's own sidecar may still be reading the topic, and
    may have read the very command this replica just handed back), or answered RETRY when it cannot be."""
    if drain is None:
        return _deliver(model, handler, cloud_event, topic, None)
    with drain.delivery() as admitted:
        if admitted:
            return _deliver(model, handler, cloud_event, topic, drain)
    outcome = Delivery.RETRY
    try:
        event = parse_event(model, cloud_event)
    except ValidationError:
        event = None  # another replica drops it, with the reason logged
    if event is not None and drain.handback is not None:
        outcome = _hand_back(event, topic, getattr(event, "run_id", None), drain)
    else:
        log.info("shutting down: %s delivery id=%s answered RETRY", topic, cloud_event.get("id"))
    record_delivery(topic, outcome)
    return outcome


def _deliver(
    model: type[EventT],
    handler: Callable[[EventT], None],
    cloud_event: dict[str, Any],
    topic: str,
    drain: Drain | None,
) -> Delivery:
    try:
        event = parse_event(model, cloud_event)
    except ValidationError as exc:
        log.error(
            "dropping malformed %s event id=%s: %s",
            topic,
            cloud_event.get("id"),
            describe_validation_error(exc),
        )
        record_delivery(topic, Delivery.DROP)
        return Delivery.DROP
    run_id = getattr(event, "run_id", None) or getattr(event, "request_id", None)
    with delivery_span(topic, run_id, event_unit(event), cloud_event) as span:
        outcome = _handle(handler, event, topic, run_id, drain)
        if outcome is not Delivery.SUCCESS:
            mark_failed(span, f"{topic} answered {outcome.value}")
    record_delivery(topic, outcome)
    return outcome


def _handle(
    handler: Callable[[EventT], None], event: EventT, topic: str, run_id: str | None, drain: Drain | None
) -> Delivery:
    try:
        handler(event)
    except ShuttingDownError:
        return _hand_back(event, topic, run_id, drain)
    except Exception as exc:
        failure = classify(exc, topic)
        if failure.retryable:
            log.warning("run %s: %s failed transiently, asking for redelivery: %s", run_id, topic, failure.message)
        else:
            log.error(
                "run %s: %s failed and will not be retried: %s",
                run_id,
                topic,
                failure.message,
                exc_info=exc if failure.bug else None,
            )
        return failure.delivery
    return Delivery.SUCCESS


def _hand_back(event: BaseModel, topic: str, run_id: str | None, drain: Drain | None) -> Delivery:
    """Work stopped by the drain: its lease is released; the command goes back to the consumer group as a new
    message (any replica takes it now) and this delivery is acknowledged. Redis Streams would otherwise keep
    an unacknowledged message pending on this consumer until ``processingTimeout``."""
    if drain is None or drain.handback is None:
        return Delivery.RETRY
    try:
        drain.handback(TopicName(topic), event)
    except Exception as exc:  # the message stays pending with the sidecar: reclaimed later, nothing lost
        log.warning("run %s: could not hand %s back (%s); answered RETRY", run_id, topic, exc)
        return Delivery.RETRY
    log.warning("run %s: shutting down: %s handed back to the other replicas", run_id, topic)
    return Delivery.SUCCESS


def register_subscription(
    app: FastAPI,
    *,
    pubsub: str,
    topic: TopicName,
    model: type[EventT],
    handler: Callable[[EventT], None],
    dead_letter_topic: TopicName | None = TopicName.DEAD_LETTER,
) -> None:
    """Declares a Dapr subscription with ``dapr.ext.fastapi`` and routes its deliveries to ``handler``."""
    from dapr.ext.fastapi import DaprApp

    dapr_app: DaprApp = app.state.dapr_app if hasattr(app.state, "dapr_app") else DaprApp(app)
    app.state.dapr_app = dapr_app

    async def endpoint(cloud_event: dict[str, Any] = Body(...)) -> dict[str, str]:  # noqa: B008
        drain: Drain | None = getattr(app.state, "drain", None)
        outcome = await run_in_threadpool(deliver, model, handler, cloud_event, topic.value, drain)
        return {"status": outcome.value}

    endpoint.__name__ = f"on_{topic.value.replace('.', '_')}"
    # DaprApp.subscribe returns None (FINDINGS): keep ``handler`` as the unit-testable function.
    dapr_app.subscribe(
        pubsub=pubsub,
        topic=topic.value,
        dead_letter_topic=dead_letter_topic.value if dead_letter_topic else None,
    )(endpoint)
    hide_from_openapi(app, ("/dapr/subscribe", f"/events/{pubsub}/{topic.value}"))


def hide_from_openapi(app: FastAPI, paths: tuple[str, ...]) -> None:
    """The sidecar's routes stay callable but leave the public API page (DaprApp cannot be told so)."""
    from fastapi.routing import APIRoute

    for route in app.routes:
        if isinstance(route, APIRoute) and route.path in paths:
            route.include_in_schema = False
