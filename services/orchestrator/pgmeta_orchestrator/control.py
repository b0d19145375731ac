"""Cancel and retry a run: ``POST /runs/{id}/cancel`` and ``POST /runs/{id}/retry``.

Cancel fences the run first (stage work that checks the fence stops within about a second and commits
nothing), then terminates the workflow, deletes the run's one-shot password and announces the run FAILED.
Retry resumes a failed (or cancelled) run under the same id: the workflow starts again from the top, and
every stage unit that had finished finds its recorded result and only re-announces it, so the work resumes
at the first unit that did not complete, reusing finished chunks.

Both routes change a run, so both need the ``operator`` role (the role that may start runs); reading stays
with ``viewer``. Every attempt is audited, allowed or not.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from starlette.concurrency import run_in_threadpool

from pgmeta_orchestrator.audit import AuditLog, Outcome, client_address
from pgmeta_orchestrator.auth import Principal, Role, require
from pgmeta_orchestrator.runs import RunService, read_workflow_state
from pgmeta_orchestrator.workflow import WORKFLOW_NAME
from pgmeta_shared.events import CredentialRef, ExtractionCompleted, ExtractionRequested, TopicName
from pgmeta_shared.fencing import RunState, end_run, reopen_run
from pgmeta_shared.keys import credentials_key

log = logging.getLogger(__name__)

ACTIVE = {"RUNNING", "PENDING", "SUSPENDED"}
ENDED = {"FAILED", "TERMINATED"}


class RetryRequest(BaseModel):
    """Body of ``POST /runs/{id}/retry``: the password again, if the run was given one inline (it is deleted
    when a run ends)."""

    model_config = ConfigDict(extra="forbid")

    password: SecretStr | None = Field(default=None, description="Stored encrypted for the retried run's lifetime.")


class RunControl:
    def __init__(self, runs: RunService) -> None:
        self._runs = runs
        self._platform = runs.platform
        self._workflows = runs.workflows
        self._settings = runs.settings

    def _state(self, run_id: str) -> Any:
        state = read_workflow_state(self._workflows, run_id)
        if state is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run with id {run_id!r}")
        return state

    def cancel(self, run_id: str) -> dict[str, str]:
        state = self._state(run_id)
        runtime = state.runtime_status.name
        if runtime not in ACTIVE:
            raise HTTPException(status.HTTP_409_CONFLICT, f"run {run_id} already ended ({runtime.lower()})")
        # The fence first: from here on, no stage commits anything for this run.
        end_run(self._platform, run_id, RunState.CANCELLED, "cancelled by request")
        self._workflows.terminate_workflow(run_id, output={"status": "CANCELLED"})
        self._forget_password(run_id)
        self._platform.publish(
            TopicName.EXTRACTION_COMPLETED, ExtractionCompleted(run_id=run_id, status="FAILED", error="cancelled")
        )
        log.info("run %s: cancelled", run_id)
        return {"run_id": run_id, "status": "CANCELLED"}

    def retry(self, run_id: str, body: RetryRequest) -> dict[str, str]:
        state = self._state(run_id)
        runtime = state.runtime_status.name
        if runtime not in ENDED:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"run {run_id} is {runtime.lower()}: only a failed run is retried"
            )
        request = ExtractionRequested.model_validate_json(state.serialized_input)
        credentials = request.credentials
        if credentials.kind == "state" and credentials.store == self._settings.credentials_store:
            if body.password is None:
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_ENTITY,
                    "this run's password was deleted when it ended: give it again as 'password'",
                )
            key = credentials_key(run_id)
            self._platform.save_state_json(
                credentials.store,
                key,
                {"password": body.password.get_secret_value()},
                ttl_seconds=self._settings.credentials_ttl_seconds,
            )
            credentials = CredentialRef(kind="state", store=credentials.store, key=key)
        reopen_run(self._platform, run_id)
        self._workflows.purge_workflow(run_id)
        retried = request.model_copy(update={"credentials": credentials})
        try:
            self._workflows.schedule_new_workflow(
                WORKFLOW_NAME, input=retried.model_dump(mode="json"), instance_id=run_id
            )
        except grpc.RpcError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, f"run {run_id} could not be restarted: {exc}") from None
        log.info("run %s: retried (finished units are reused)", run_id)
        return {"run_id": run_id, "status": "RETRYING", "status_url": f"/runs/{run_id}"}

    def _forget_password(self, run_id: str) -> None:
        self._platform.delete_state(self._settings.credentials_store, credentials_key(run_id))


RunCanceller = Annotated[Principal, Depends(require(Role.OPERATOR, "run.cancel"))]
RunRetrier = Annotated[Principal, Depends(require(Role.OPERATOR, "run.retry"))]


async def _audited(action: str, caller: Principal, request: Request, run_id: str, work: Any, *args: Any) -> Any:
    """Runs ``work`` in the thread pool and records the outcome (an HTTP refusal is a failure, with its reason)."""
    audit: AuditLog = request.app.state.audit
    try:
        answer = await run_in_threadpool(work, *args)
    except HTTPException as exc:
        audit.record(action, caller, client_address(request), Outcome.FAILED, run_id=run_id, reason=str(exc.detail))
        raise
    audit.record(action, caller, client_address(request), Outcome.ALLOWED, run_id=run_id)
    return answer


def control_router() -> APIRouter:
    router = APIRouter()

    @router.post("/runs/{run_id}/cancel", status_code=status.HTTP_202_ACCEPTED)
    async def cancel_run(run_id: str, request: Request, caller: RunCanceller) -> dict[str, str]:
        """Stops a run: no manifest, no baseline move, its password deleted. Role: operator."""
        control = RunControl(request.app.state.runs)
        answer: dict[str, str] = await _audited("run.cancel", caller, request, run_id, control.cancel, run_id)
        return answer

    @router.post("/runs/{run_id}/retry", status_code=status.HTTP_202_ACCEPTED)
    async def retry_run(
        run_id: str, request: Request, caller: RunRetrier, body: RetryRequest | None = None
    ) -> dict[str, str]:
        """Resumes a failed or cancelled run from its first unfinished unit, reusing finished work. Role: operator."""
        control = RunControl(request.app.state.runs)
        answer: dict[str, str] = await _audited(
            "run.retry", caller, request, run_id, control.retry, run_id, body or RetryRequest()
        )
        return answer

    return router
