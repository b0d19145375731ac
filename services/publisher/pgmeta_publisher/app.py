"""The publisher's FastAPI app: one subscription, ``publish.requested``."""

from __future__ import annotations

from fastapi import FastAPI

from pgmeta_publisher.publishing import publish
from pgmeta_shared.events import PublishRequested, Stage, TopicName
from pgmeta_shared.service import StageRoute, create_stage_app, serve
from pgmeta_shared.settings import DaprSettings


def create_app(settings: DaprSettings) -> FastAPI:
    return create_stage_app(
        service="publisher",
        settings=settings,
        routes=[
            StageRoute(
                Stage.PUBLISH, TopicName.PUBLISH_REQUESTED, PublishRequested, publish, TopicName.PUBLISH_COMPLETED
            )
        ],
    )


def main() -> None:
    serve("publisher", create_app)
