"""The publisher's FastAPI app: one subscription, ``publish.requested``."""

from __future__ import annotations

from fastapi import FastAPI

from pgmeta_publisher.publishing import publish
from pgmeta_shared.events import PublishRequested, Stage, TopicName
from pgmeta_shared.service import create_stage_app, serve
from pgmeta_shared.settings import DaprSettings


def create_app(settings: DaprSettings) -> FastAPI:
    return create_stage_app(
        service="publisher",
        settings=settings,
        stage=Stage.PUBLISH,
        command_topic=TopicName.PUBLISH_REQUESTED,
        command_model=PublishRequested,
        work=publish,
        completion_topic=TopicName.PUBLISH_COMPLETED,
    )


def main() -> None:
    serve("publisher", create_app)
