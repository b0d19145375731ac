"""The publisher's FastAPI app: one subscription, ``publish.requested``."""

from __future__ import annotations

from fastapi import FastAPI

from pgmeta_publisher.atlan import AtlanSettings, AtlanSink, read_api_key
from pgmeta_publisher.publishing import publish, publish_early
from pgmeta_shared.events import ChunkReady, PublishCompleted, PublishRequested, Stage, TopicName
from pgmeta_shared.platform import Platform
from pgmeta_shared.service import StageRoute, create_stage_app, serve
from pgmeta_shared.settings import DaprSettings
from pgmeta_shared.subscriptions import register_subscription


def publish_everywhere(command: PublishRequested, platform: Platform) -> PublishCompleted:
    """Publishes to the object store, and to Atlan when ATLAN_BASE_URL is set (key from the secret store)."""
    atlan = AtlanSettings()
    if not atlan.enabled:
        return publish(command, platform)
    with AtlanSink(atlan, read_api_key(platform, atlan)) as sink:
        return publish(command, platform, sink)


def create_app(settings: DaprSettings) -> FastAPI:
    app = create_stage_app(
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
        ],  # fmt: skip
    )

    def on_chunk_ready(event: ChunkReady) -> None:
        publish_early(event, app.state.platform)

    register_subscription(
        app, pubsub=settings.pubsub_name, topic=TopicName.TRANSFORM_CHUNK_READY, model=ChunkReady,
        handler=on_chunk_ready,
    )  # fmt: skip
    return app


def main() -> None:
    serve("publisher", create_app)
