"""The publisher's FastAPI app: one subscription, ``publish.requested``."""

from __future__ import annotations

from fastapi import FastAPI

from pgmeta_publisher.atlan import AtlanSettings, AtlanSink, read_api_key
from pgmeta_publisher.publishing import publish, publish_early
from pgmeta_shared.events import PublishCompleted, PublishRequested, Stage, TopicName
from pgmeta_shared.platform import Platform
from pgmeta_shared.service import EarlyRoute, StageRoute, create_stage_app, serve
from pgmeta_shared.settings import DaprSettings


def publish_everywhere(command: PublishRequested, platform: Platform) -> PublishCompleted:
    """Publishes to the object store, and to Atlan when ATLAN_BASE_URL is set (key from the secret store)."""
    atlan = AtlanSettings()
    if not atlan.enabled:
        return publish(command, platform)
    with AtlanSink(atlan, read_api_key(platform, atlan)) as sink:
        return publish(command, platform, sink)


def create_app(settings: DaprSettings) -> FastAPI:
    return create_stage_app(
        service="publisher",
        settings=settings,
        routes=[
            StageRoute(
                Stage.PUBLISH,
                TopicName.PUBLISH_REQUESTED,
                PublishRequested,
                publish_everywhere,
                TopicName.PUBLISH_COMPLETED,
            ),
        ],
        early=EarlyRoute(TopicName.TRANSFORM_CHUNK_READY, publish_early),
    )


def main() -> None:
    serve("publisher", create_app)
