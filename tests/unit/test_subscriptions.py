"""Subscription adapters: explicit SUCCESS / RETRY / DROP, and the declared dead-letter topic."""

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pgmeta_shared.delivery import Delivery
from pgmeta_shared.errors import AuthenticationFailedError, TransientInfrastructureError
from pgmeta_shared.events import ExtractionProgress, Stage, TopicName
from pgmeta_shared.subscriptions import deliver, register_subscription

GOOD = {"id": "e1", "data": {"run_id": "r1", "stage": "extract", "done": 1, "total": 2}}


def test_valid_event_is_handled_once() -> None:
    seen: list[ExtractionProgress] = []
    assert deliver(ExtractionProgress, seen.append, GOOD, "t") == Delivery.SUCCESS
    assert seen == [ExtractionProgress(run_id="r1", stage=Stage.EXTRACT, done=1, total=2)]


def test_malformed_event_is_dropped_with_a_logged_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    bad = {"id": "e2", "data": {"run_id": "r1", "stage": "nope", "done": -1}}
    assert deliver(ExtractionProgress, lambda e: None, bad, "extraction.progress") == Delivery.DROP
    assert "dropping malformed extraction.progress event id=e2" in caplog.text
    assert "stage" in caplog.text and "done" in caplog.text


def test_transient_failure_asks_for_redelivery_and_permanent_one_drops() -> None:
    def transient(_: ExtractionProgress) -> None:
        raise TransientInfrastructureError("sidecar down")

    def permanent(_: ExtractionProgress) -> None:
        raise AuthenticationFailedError("bad password")

    assert deliver(ExtractionProgress, transient, GOOD, "t") == Delivery.RETRY
    assert deliver(ExtractionProgress, permanent, GOOD, "t") == Delivery.DROP


def test_subscription_is_declared_with_dead_letter_topic_and_routes_deliveries() -> None:
    app = FastAPI()
    seen: list[ExtractionProgress] = []
    register_subscription(
        app, pubsub="pubsub", topic=TopicName.EXTRACTION_PROGRESS, model=ExtractionProgress, handler=seen.append
    )
    client = TestClient(app)
    [subscription] = client.get("/dapr/subscribe").json()
    assert subscription["topic"] == "extraction.progress"
    assert subscription["pubsubname"] == "pubsub"
    assert subscription["deadLetterTopic"] == TopicName.DEAD_LETTER.value
    route = subscription["route"]
    assert client.post(route, json=GOOD).json() == {"status": "SUCCESS"}
    assert client.post(route, json={"data": {"garbage": True}}).json() == {"status": "DROP"}
    assert len(seen) == 1
