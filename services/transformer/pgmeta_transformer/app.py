"""The transformer's FastAPI app: one subscription, ``transform.requested``."""

from __future__ import annotations

from fastapi import FastAPI

from pgmeta_shared.events import Stage, TopicName, TransformRequested
from pgmeta_shared.service import StageRoute, create_stage_app, serve
from pgmeta_shared.settings import DaprSettings
from pgmeta_transformer.transformation import transform


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
            )
        ],
    )


def main() -> None:
    serve("transformer", create_app)
