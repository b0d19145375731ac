"""The REST API as the fault suite's newer tests call it: one place for what every request carries (the stack's
admin token; the sidecar's API token for a publish)."""

from __future__ import annotations

import time
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


def wait_finished(stack: LocalStack, run_id: str, timeout: float) -> dict[str, Any]:
    """The run's view once it has ended (long-polls ``GET /runs/{id}?wait=``); fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        wait = round(max(0.0, min(5.0, deadline - time.monotonic())), 2)
        try:
            response = api_get(stack, f"/runs/{run_id}", params={"wait": wait}, timeout=wait + 10)
        except httpx.HTTPError:  # a process of the stack being killed and brought back
            time.sleep(0.2)
            continue
        if response.status_code == 200:
            last = response.json()
            if last and last["status"] in {"COMPLETED", "FAILED"}:
                return last
        else:
            time.sleep(0.2)
    raise AssertionError(
        f"run {run_id} not finished within {timeout:.0f} s; last seen {last}\n{run_logs(stack, run_id)}"
    )


def assert_completed(stack: LocalStack, run: dict[str, Any]) -> None:
    """The run completed; if not, the failure says why: the run's error and what every process logged of it."""
    if run["status"] != "COMPLETED":
        raise AssertionError(
            f"run {run['run_id']} {run['status']} in stage {run.get('stage')}: {run.get('error')}\n"
            f"{run_logs(stack, run['run_id'])}"
        )


def run_logs(stack: LocalStack, run_id: str, tail: int = 40) -> str:
    """The last lines each process of the stack logged about ``run_id`` that are warnings or errors."""
    lines = []
    for log in sorted(stack.layout.logs.glob("*.log")):
        hits = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if run_id in line and any(word in line for word in ("WARNING", "ERROR", "error", "failed", "level=warn"))
        ]
        lines += [f"  {log.stem}: {line[:400]}" for line in hits[-tail:]]
    return "\n".join(lines) or "  (no warning or error logged about the run)"
