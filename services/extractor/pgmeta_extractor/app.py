"""The extractor's FastAPI app: preflight, extract (one database per command) and metadata listings."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from pgmeta_extractor.extraction import extract_database, list_metadata, preflight
from pgmeta_shared.delivery import classify
from pgmeta_shared.events import ExtractRequested, MetadataRequested, PreflightRequested, Stage, TopicName
from pgmeta_shared.keys import metadata_answer_key
from pgmeta_shared.service import StageRoute, create_stage_app, serve
from pgmeta_shared.settings import DaprSettings
from pgmeta_shared.subscriptions import register_subscription

log = logging.getLogger(__name__)


def create_app(settings: DaprSettings) -> FastAPI:
    app = create_stage_app(
        service="extractor",
        settings=settings,
        routes=[
            StageRoute(
                Stage.PREFLIGHT,
                TopicName.PREFLIGHT_REQUESTED,
                PreflightRequested,
                preflight,
                TopicName.PREFLIGHT_COMPLETED,
            ),
            StageRoute(
                Stage.EXTRACT,
                TopicName.EXTRACT_REQUESTED,
                ExtractRequested,
                extract_database,
                TopicName.EXTRACT_COMPLETED,
            ),
        ],
    )

    def on_metadata(command: MetadataRequested) -> None:
        """Answers by writing to the artifacts store, where the asking orchestrator replica polls."""
        platform = app.state.platform
        try:
            answer = {"ok": True, **list_metadata(command, platform)}
        except Exception as exc:
            failure = classify(exc, "extractor")
            if failure.retryable:
                raise
            answer = {"ok": False, "error_code": failure.code, "error": failure.message}
        platform.save_json(metadata_answer_key(command.run_id), answer, ttl_seconds=600)

    register_subscription(
        app,
        pubsub=settings.pubsub_name,
        topic=TopicName.METADATA_REQUESTED,
        model=MetadataRequested,
        handler=on_metadata,
    )
    return app


def main() -> None:
    serve("extractor", create_app)
