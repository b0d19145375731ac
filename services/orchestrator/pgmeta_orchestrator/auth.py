"""Who is calling the REST API: API tokens (stored hashed) and OIDC JWTs, mapped to a role.

API tokens are 256 random bits, so a plain SHA-256 of them is as safe to store as a slow password hash
(there is nothing to brute-force) and costs microseconds per request; argon2/bcrypt are for passwords
people choose. A token reads ``pgm_<id>_<secret>``: the id finds its record without a scan.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from pgmeta_orchestrator.audit import AuditLog, Outcome, client_address
from pgmeta_orchestrator.settings import OrchestratorSettings
from pgmeta_shared.keys import API_TOKENS_INDEX_KEY, api_token_key
from pgmeta_shared.platform import StateStore

log = logging.getLogger(__name__)

TOKEN_PREFIX = "pgm_"


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a name fit for the audit trail, and its role."""

    name: str
    role: Role
    via: Literal["token", "oidc", "bootstrap"]

    def may(self, role: Role) -> bool:
        return self.role.rank >= role.rank


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9 ._@-]+$", description="Who holds it.")
    role: Role


class TokenInfo(BaseModel):
    """A token as listed: never the token, never its hash."""

    id: str
    name: str
    role: Role
    created_at: str
    created_by: str


class TokenCreated(TokenInfo):
    token: str = Field(description="Shown once; only its SHA-256 is stored.")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(token_id: str) -> str:
    return f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"


class TokenStore:
    """API tokens in a Dapr state store (one entry per token, plus an index for listing)."""

    def __init__(self, state: StateStore, store: str) -> None:
        self._state = state
        self._store = store

    def create(self, spec: TokenCreate, created_by: str) -> TokenCreated:
        token_id = uuid.uuid4().hex[:12]
        token = new_token(token_id)
        info = TokenInfo(
            id=token_id, name=spec.name, role=spec.role, created_at=datetime.now(UTC).isoformat(), created_by=created_by
        )
        record = info.model_dump(mode="json") | {"sha256": token_digest(token)}
        self._state.save_state_json(self._store, api_token_key(token_id), record)
        index = set(self._state.get_state_json(self._store, API_TOKENS_INDEX_KEY) or [])
        self._state.save_state_json(self._store, API_TOKENS_INDEX_KEY, sorted(index | {token_id}))
        return TokenCreated(**info.model_dump(), token=token)

    def list(self) -> list[TokenInfo]:
        found = []
        for token_id in self._state.get_state_json(self._store, API_TOKENS_INDEX_KEY) or []:
            record = self._state.get_state_json(self._store, api_token_key(token_id))
            if record is not None:
                found.append(TokenInfo.model_validate({k: v for k, v in record.items() if k != "sha256"}))
        return found

    def revoke(self, token_id: str) -> bool:
        if self._state.get_state_json(self._store, api_token_key(token_id)) is None:
            return False
        self._state.delete_state(self._store, api_token_key(token_id))
        index = self._state.get_state_json(self._store, API_TOKENS_INDEX_KEY) or []
        self._state.save_state_json(self._store, API_TOKENS_INDEX_KEY, [i for i in index if i != token_id])
        return True

    def verify(self, token: str) -> Principal | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        token_id, _, rest = token[len(TOKEN_PREFIX) :].partition("_")
        if not rest or len(token_id) != 12 or not token_id.isalnum():
            return None
        record = self._state.get_state_json(self._store, api_token_key(token_id))
        if record is None or not hmac.compare_digest(record["sha256"], token_digest(token)):
            return None
        return Principal(name=f"token:{record['name']}", role=Role(record["role"]), via="token")


class OidcVerifier:
    """JWTs signed by the configured issuer (keys from its JWKS, cached by PyJWT), audience checked."""

    def __init__(self, settings: OrchestratorSettings) -> None:
        import jwt

        assert settings.oidc_issuer is not None
        self._settings = settings
        jwks_url = settings.oidc_jwks_url or f"{settings.oidc_issuer.rstrip('/')}/.well-known/jwks.json"
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=10)

    def verify(self, token: str) -> Principal | None:
        import jwt

        settings = self._settings
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=["RS256", "ES256", "PS256", "EdDSA"],
                audience=settings.oidc_audience,
                issuer=settings.oidc_issuer,
                options={"require": ["exp", "iss", "sub"]},
            )
        except jwt.PyJWTError as exc:
            log.info("OIDC token rejected: %s", type(exc).__name__)
            return None
        granted = claims.get(settings.oidc_role_claim)
        names = granted if isinstance(granted, list) else [granted]
        roles = [Role(name) for name in names if name in set(Role)]
        if not roles:
            return None
        subject = str(claims.get(settings.oidc_username_claim) or claims["sub"])[:200]
        return Principal(name=f"oidc:{subject}", role=max(roles, key=lambda r: r.rank), via="oidc")


class Authenticator:
    """Bearer token → Principal: the bootstrap admin, an API token, or an OIDC JWT."""

    def __init__(self, settings: OrchestratorSettings, tokens: TokenStore) -> None:
        self._tokens = tokens
        self._bootstrap = settings.bootstrap_token_digest()
        self._oidc = OidcVerifier(settings) if settings.oidc_issuer else None

    def authenticate(self, token: str) -> Principal | None:
        if self._bootstrap and hmac.compare_digest(self._bootstrap, token_digest(token)):
            return Principal(name="bootstrap-admin", role=Role.ADMIN, via="bootstrap")
        if token.startswith(TOKEN_PREFIX):
            return self._tokens.verify(token)
        if self._oidc is not None and token.count(".") == 2:
            return self._oidc.verify(token)
        return None


bearer = HTTPBearer(auto_error=False, description="An API token (`pgmeta tokens create`) or an OIDC JWT.")


def require(role: Role, action: str) -> Callable[..., Principal]:
    """A FastAPI dependency: the caller, if it holds ``role`` or more; 401/403 (audited) otherwise."""

    def dependency(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Principal:
        audit: AuditLog = request.app.state.audit
        authenticator: Authenticator = request.app.state.authenticator
        principal = authenticator.authenticate(credentials.credentials) if credentials else None
        if principal is None:
            reason = "no bearer token" if credentials is None else "invalid or revoked token"
            audit.record(action, None, client_address(request), Outcome.DENIED, reason=reason)
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, detail="authentication required", headers={"WWW-Authenticate": "Bearer"}
            )
        if not principal.may(role):
            reason = f"role {principal.role} may not {action} (needs {role})"
            audit.record(action, principal, client_address(request), Outcome.DENIED, reason=reason)
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"{action} needs role {role} or higher")
        return principal

    return dependency
