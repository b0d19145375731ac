"""A request id names one request: a repeat of the same request is the same run, another request is a conflict.

The comparison uses a digest of the request kept with the run's record. The password never goes into it:
only a salted scrypt hash of it does, so the record says whether a repeat brought the same password
without letting anyone read or cheaply guess it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any

from pydantic import SecretStr

from pgmeta_shared.errors import PgmetaError


class RequestIdConflictError(PgmetaError):
    """POST /runs with a request id an earlier, different request already uses (HTTP 409)."""

    code = "request_id_conflict"


def _password_hash(password: SecretStr | None, salt: bytes) -> str | None:
    if password is None:
        return None
    return hashlib.scrypt(password.get_secret_value().encode(), salt=salt, n=2**14, r=8, p=1).hex()


def request_digest(body: dict[str, Any], password: SecretStr | None, salt: bytes) -> str:
    """``body``: the request without its password, as JSON-ready values."""
    canonical = json.dumps({"request": body, "password": _password_hash(password, salt)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_request_record(body: dict[str, Any], password: SecretStr | None, at: str) -> dict[str, str]:
    salt = secrets.token_bytes(16)
    return {"at": at, "salt": salt.hex(), "digest": request_digest(body, password, salt)}


def same_request(record: dict[str, Any], body: dict[str, Any], password: SecretStr | None) -> bool | None:
    """Whether ``body`` repeats the request recorded; None for a record written before digests existed."""
    if "digest" not in record or "salt" not in record:
        return None
    digest = request_digest(body, password, bytes.fromhex(record["salt"]))
    return hmac.compare_digest(digest, record["digest"])
