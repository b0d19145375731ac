"""The extractor's FastAPI app: one subscription, ``extract.requested``."""

from __future__ import annotations

from fastapi import FastAPI

from pgmeta_extractor.extraction import extract
from pgmeta_shared.events import ExtractRequested, Stage, TopicName
from pgmeta_shared.service import create_stage_app, serve
from pgmeta_shared.settings import DaprSettings


def create_app(settings: DaprSettings) -> FastAPI:
    return create_stage_app(
        service="extractor",
        settings=settings,
        stage=Stage.EXTRACT,
        command_topic=TopicName.EXTRACT_REQUESTED,
        command_model=ExtractRequested,
        work=extract,
        completion_topic=TopicName.EXTRACT_COMPLETED,
    )


def main() -> None:
    serve("extractor", create_app)
