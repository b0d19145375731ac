"""Where the CLI finds the stack: explicit URLs, PGMETA_BASE_PORT, or the state directory of this checkout.

`make up` writes ``endpoints.json`` into its state directory (``.pgmeta/stack`` by default); the CLI looks
for it from the working directory upwards, so `pgmeta …` talks to the stack this checkout started, on
whatever port block it runs, and never silently to another stack on the default ports.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BASE_PORT = 18000
ENDPOINTS_FILE = "endpoints.json"
# Offsets within a port block (deploy/local/pgmeta_devstack/layout.py): the orchestrator's app and its daprd.
API_OFFSET = 0
ORCHESTRATOR_SIDECAR_OFFSET = 10
ZIPKIN_OFFSET = 80


@dataclass(frozen=True)
class Endpoint:
    url: str
    found_by: str  # said in errors, so a wrong address can be traced to where it came from


def _stack_file(name: str) -> Path | None:
    """``name`` in PGMETA_STATE_DIR, else in the nearest ``.pgmeta/stack`` above the working dir."""
    state = os.environ.get("PGMETA_STATE_DIR")
    if state:
        candidates = [Path(state) / name]
    else:
        here = Path.cwd().resolve()
        candidates = [folder / ".pgmeta" / "stack" / name for folder in (here, *here.parents)]
    return next((path for path in candidates if path.is_file()), None)


def stack_endpoints_file() -> Path | None:
    """``endpoints.json`` of PGMETA_STATE_DIR, else of the nearest ``.pgmeta/stack`` above the working dir."""
    return _stack_file(ENDPOINTS_FILE)


def stack_secret(env: str, file_name: str) -> str | None:
    """``env`` if set, else the local stack's file of that name (created 0600 by `make up`), else None."""
    if os.environ.get(env):
        return os.environ[env]
    path = _stack_file(file_name)
    return path.read_text().strip() if path is not None else None


def api_token() -> str | None:
    """The API token the CLI sends: PGMETA_API_TOKEN, else the local stack's admin token."""
    return stack_secret("PGMETA_API_TOKEN", "api-token")


def api_headers() -> dict[str, str]:
    token = api_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _resolve(explicit: str, key: str, offset: int) -> Endpoint:
    url = os.environ.get(explicit)
    if url:
        return Endpoint(url.rstrip("/"), explicit)
    base = os.environ.get("PGMETA_BASE_PORT")
    if base:
        return Endpoint(f"http://127.0.0.1:{int(base) + offset}", f"PGMETA_BASE_PORT={base}")
    recorded = stack_endpoints_file()
    if recorded is not None:
        try:
            url = json.loads(recorded.read_text())[key]
        except (OSError, ValueError, KeyError, TypeError):
            url = None
        if isinstance(url, str) and url:
            return Endpoint(url.rstrip("/"), f"the stack's {recorded}")
    return Endpoint(f"http://127.0.0.1:{DEFAULT_BASE_PORT + offset}", "the default port block")


def api_endpoint() -> Endpoint:
    """The orchestrator's REST API: PGMETA_API_URL, PGMETA_BASE_PORT, the stack's state dir, or 18000."""
    return _resolve("PGMETA_API_URL", "api_url", API_OFFSET)


def sidecar_endpoint() -> Endpoint:
    """A Dapr sidecar's HTTP API for `publish`: PGMETA_DAPR_HTTP_URL, PGMETA_BASE_PORT + 10, the state dir."""
    return _resolve("PGMETA_DAPR_HTTP_URL", "dapr_http_url", ORCHESTRATOR_SIDECAR_OFFSET)


def zipkin_endpoint() -> Endpoint:
    """The local stack's trace viewer: PGMETA_ZIPKIN_URL, PGMETA_BASE_PORT + 80, the state dir."""
    return _resolve("PGMETA_ZIPKIN_URL", "zipkin_url", ZIPKIN_OFFSET)


def unreachable(endpoint: Endpoint, what: str, problem: object) -> str:
    return (
        f"cannot reach {what} at {endpoint.url} (from {endpoint.found_by}): {problem}. Is the stack up (`make up`)? "
        "A stack on another port block: set PGMETA_BASE_PORT, or PGMETA_API_URL / PGMETA_DAPR_HTTP_URL"
    )
