"""``GET /dapr``: each sidecar's own account of itself (``/v1.0/metadata`` and health), as the Dapr dashboard shows it.

The sidecars are listed by ``PGMETA_DAPR_SIDECARS`` (``app-id=http://host:port,…``, their HTTP API); unset, only
this orchestrator's own sidecar is asked.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pgmeta_orchestrator.auth import Principal, Role, require
from pgmeta_shared.settings import DaprSettings


class SidecarListSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PGMETA_", extra="ignore")

    dapr_sidecars: str = Field(
        default="", description="Sidecars to describe at GET /dapr: app-id=http://host:port pairs, comma-separated."
    )


class SidecarComponent(BaseModel):
    name: str
    type: str
    version: str = ""


class SidecarSubscription(BaseModel):
    pubsub: str
    topic: str
    route: str
    dead_letter_topic: str | None = None


class SidecarActor(BaseModel):
    type: str
    count: int = 0


class SidecarView(BaseModel):
    """What one sidecar runs: the facts the Dapr dashboard lists for an app."""

    app_id: str
    url: str
    healthy: bool
    runtime_version: str | None = None
    components: list[SidecarComponent] = []
    subscriptions: list[SidecarSubscription] = []
    actors: list[SidecarActor] = []
    workflow_workers: int | None = None
    enabled_features: list[str] = []
    error: str | None = None


def sidecar_urls(settings: DaprSettings, listed: str) -> dict[str, str]:
    urls: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in listed.split(","))):
        app_id, separator, url = entry.partition("=")
        if not separator or not url.startswith(("http://", "https://")):
            raise ValueError(f"PGMETA_DAPR_SIDECARS entry {entry!r}: expected app-id=http://host:port")
        urls[app_id.strip()] = url.strip().rstrip("/")
    return urls or {"orchestrator": f"http://{settings.dapr_host}:{settings.dapr_http_port}"}


def describe_metadata(app_id: str, url: str, healthy: bool, metadata: dict[str, Any]) -> SidecarView:
    subscriptions = []
    for sub in metadata.get("subscriptions") or []:
        # A list in 1.18's HTTP metadata, {"rules": [...]} in the gRPC shape.
        rules = sub.get("rules") or []
        rules = (rules.get("rules") if isinstance(rules, dict) else rules) or [{}]
        subscriptions.append(
            SidecarSubscription(
                pubsub=sub.get("pubsubname", ""),
                topic=sub.get("topic", ""),
                route=rules[0].get("path", ""),
                dead_letter_topic=sub.get("deadLetterTopic") or None,
            )
        )
    workflows = metadata.get("workflows") or {}
    return SidecarView(
        app_id=metadata.get("id") or app_id,
        url=url,
        healthy=healthy,
        runtime_version=metadata.get("runtimeVersion"),
        components=[
            SidecarComponent(name=c.get("name", ""), type=c.get("type", ""), version=c.get("version", ""))
            for c in metadata.get("components") or []
        ],
        subscriptions=subscriptions,
        actors=[SidecarActor(type=a.get("type", ""), count=a.get("count", 0)) for a in metadata.get("actors") or []],
        workflow_workers=workflows.get("connectedWorkers") if workflows else None,
        enabled_features=list(metadata.get("enabledFeatures") or []),
    )


async def _ask(client: httpx.AsyncClient, app_id: str, url: str) -> SidecarView:
    try:
        health, metadata = await asyncio.gather(client.get(f"{url}/v1.0/healthz"), client.get(f"{url}/v1.0/metadata"))
        metadata.raise_for_status()
    except httpx.HTTPError as exc:
        return SidecarView(app_id=app_id, url=url, healthy=False, error=f"{type(exc).__name__}: {exc}")
    return describe_metadata(app_id, url, health.status_code == 204, metadata.json())


def dapr_router(settings: DaprSettings) -> APIRouter:
    router = APIRouter(tags=["dapr"])
    urls = sidecar_urls(settings, SidecarListSettings().dapr_sidecars)

    # Admin: the sidecars' components, subscriptions and addresses describe the deployment, not runs or results.
    @router.get("/dapr")
    async def describe_sidecars(
        _: Annotated[Principal, Depends(require(Role.ADMIN, "dapr.read"))],
    ) -> list[SidecarView]:
        """Each sidecar's app id, runtime version, components, subscriptions, actors, workflow workers, health."""
        # One stack-wide DAPR_API_TOKEN locally; in Kubernetes other pods' sidecars are not reachable anyway.
        async with httpx.AsyncClient(timeout=5, headers=settings.sidecar_headers()) as client:
            return list(await asyncio.gather(*(_ask(client, app_id, url) for app_id, url in urls.items())))

    return router
