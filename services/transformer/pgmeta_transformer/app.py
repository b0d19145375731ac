"""The transformer's FastAPI app: ``transform.requested`` per unit, and chunks early on ``extract.chunk_ready``."""

from __future__ import annotations

from fastapi import FastAPI

from pgmeta_shared.events import Stage, TopicName, TransformRequested
from pgmeta_shared.service import EarlyRoute, StageRoute, create_stage_app, serve
from pgmeta_shared.settings import DaprSettings
from pgmeta_transformer.transformation import transform, transform_early


def create_app(settings: DaprSettings) -> FastAPI:
    return create_stage_app(
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
        ],
        early=EarlyRoute(TopicName.EXTRACT_CHUNK_READY, transform_early),
    )


def main() -> None:
    serve("transformer", create_app)
