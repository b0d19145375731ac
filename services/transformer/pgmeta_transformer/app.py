"""The transformer's FastAPI app: ``transform.requested`` per unit, and chunks early on ``extract.chunk_ready``."""

from __future__ import annotations

from fastapi import FastAPI

from pgmeta_shared.events import ChunkReady, Stage, TopicName, TransformRequested
from pgmeta_shared.service import StageRoute, create_stage_app, serve
from pgmeta_shared.settings import DaprSettings
from pgmeta_shared.subscriptions import register_subscription
from pgmeta_transformer.transformation import transform, transform_early


def create_app(settings: DaprSettings) -> FastAPI:
    app = create_stage_app(
        service="transformer",
        settings=settings,
        routes=[
            StageRoute(
                Stage.TRANSFORM,
                TopicName.TRANSFORM_REQUESTED,
                TransformRequested,
                transform,
                TopicName.TRANSFORM_COMPLETED,
            ),
        ],  # fmt: skip
    )

    def on_chunk_ready(event: ChunkReady) -> None:
        transform_early(event, app.state.platform)

    register_subscription(
        app, pubsub=settings.pubsub_name, topic=TopicName.EXTRACT_CHUNK_READY, model=ChunkReady, handler=on_chunk_ready
    )
    return app


def main() -> None:
    serve("transformer", create_app)
