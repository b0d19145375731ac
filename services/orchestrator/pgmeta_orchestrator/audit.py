"""The audit trail: one JSON record per security-relevant action, allowed, denied or failed.

Written through the ``audit`` logger: to a JSON Lines file when a path is configured (the local stack),
else to stdout (Kubernetes collects it with the pod's logs). Records carry names, hosts and ids, never
a password, token or secret value.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from fastapi import Request

if TYPE_CHECKING:
    from pgmeta_orchestrator.auth import Principal

AUDIT_LOGGER = "audit"


class Outcome(StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    FAILED = "failed"


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


class AuditLog:
    def __init__(self, path: Path | None) -> None:
        self._logger = logging.getLogger(AUDIT_LOGGER)
        self._logger.setLevel(logging.INFO)
        # Audit records must not depend on the service's log level or format, nor be printed twice.
        self._logger.propagate = False
        self.close()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler: logging.Handler = logging.FileHandler(path, encoding="utf-8")
        else:
            handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(handler)

    def record(
        self,
        action: str,
        principal: Principal | None,
        client: str | None,
        outcome: Outcome,
        *,
        target: str | None = None,
        run_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        entry = {
            "time": datetime.now(UTC).isoformat(),
            "principal": principal.name if principal else None,
            "role": principal.role.value if principal else None,
            "client": client,
            "action": action,
            "target": target,
            "run_id": run_id,
            "outcome": outcome.value,
            "reason": reason,
        }
        self._logger.info(orjson.dumps(entry).decode())

    def close(self) -> None:
        for handler in list(self._logger.handlers):
            self._logger.removeHandler(handler)
            handler.close()
