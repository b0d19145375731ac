"""The REST API as the fault suite's newer tests call it: one place for what every request carries (the stack's
admin token; the sidecar's API token for a publish)."""

from __future__ import annotations

from typing import Any

import httpx

from pgmeta_devstack.stack import LocalStack
from tests.plugins.servers import api_headers


def api_get(stack: LocalStack, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(
        f"{stack.layout.api_url}{path}", headers=api_headers(stack), timeout=kwargs.pop("timeout", 10), **kwargs
    )


def api_post(stack: LocalStack, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        f"{stack.layout.api_url}{path}", headers=api_headers(stack), timeout=kwargs.pop("timeout", 30), **kwargs
    )


def publish_event(stack: LocalStack, topic: str, event: dict[str, Any]) -> httpx.Response:
    """Publishes ``event`` on ``topic`` through the orchestrator's sidecar, as any producer of the topic does."""
    port = stack.layout.dapr_http_port("orchestrator")
    return httpx.post(
        f"http://127.0.0.1:{port}/v1.0/publish/pubsub/{topic}",
        json=event,
        headers={"dapr-api-token": stack.dapr_api_token()},
        timeout=30,
    )
