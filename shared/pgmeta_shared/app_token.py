"""Only the app's own Dapr sidecar may call its subscription routes: daprd sends ``dapr-api-token``.

daprd reads ``APP_API_TOKEN`` and sends it on every call to its app; the app refuses any call to a
protected route without it (401), so a caller that reaches the app's port directly cannot forge events.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

APP_TOKEN_HEADER = b"dapr-api-token"
SIDECAR_ROUTE_PREFIXES = ("/events/", "/dapr/", "/actors/", "/job/")


def sidecar_route(path: str) -> bool:
    """Routes only daprd calls: subscriptions, their discovery, actor and job callbacks."""
    return path.startswith(SIDECAR_ROUTE_PREFIXES)


def every_route_but_health(path: str) -> bool:
    # The kubelet's liveness and readiness probes carry no token.
    return path not in {"/healthz", "/readyz"}


class AppTokenCheck:
    """ASGI middleware: a protected route needs ``dapr-api-token: <APP_API_TOKEN>``."""

    def __init__(self, app: ASGIApp, *, token: str, protected: Callable[[str], bool]) -> None:
        self._app = app
        self._token = token.encode()
        self._protected = protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._protected(scope["path"]):
            sent = dict(scope["headers"]).get(APP_TOKEN_HEADER, b"")
            if not hmac.compare_digest(sent, self._token):
                await _refuse(send)
                return
        await self._app(scope, receive, send)


async def _refuse(send: Send) -> None:
    body = b'{"detail":"only this app\'s Dapr sidecar may call this route"}'
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def require_app_token(app: object, token: str | None, protected: Callable[[str], bool], service: str) -> None:
    """Adds the check to a FastAPI/Starlette app; without a token configured, says so loudly once."""
    if not token:
        log.warning("%s: APP_API_TOKEN is not set: anyone reaching this port can call its Dapr routes", service)
        return
    app.add_middleware(AppTokenCheck, token=token, protected=protected)  # type: ignore[attr-defined]
