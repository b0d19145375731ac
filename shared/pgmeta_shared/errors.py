"""One small error hierarchy: ``retryable`` decides RETRY versus a failed run, ``code`` is stable."""

from __future__ import annotations


class PgmetaError(Exception):
    code = "internal_error"
    retryable = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class InvalidRequestError(PgmetaError):
    code = "invalid_request"


class CredentialsNotFoundError(PgmetaError):
    code = "credentials_not_found"


class SourceUnreachableError(PgmetaError):
    code = "source_unreachable"


class AuthenticationFailedError(PgmetaError):
    code = "authentication_failed"


class InsufficientPrivilegeError(PgmetaError):
    code = "insufficient_privilege"


class DatabaseNotFoundError(PgmetaError):
    code = "database_not_found"


class ArtifactMissingError(PgmetaError):
    code = "artifact_missing"


class TransientInfrastructureError(PgmetaError):
    """Dapr sidecar or store briefly unavailable: worth a redelivery."""

    code = "infrastructure_unavailable"
    retryable = True


class ObjectStoreError(PgmetaError):
    """The object store refused a write (permission, quota, unavailable) after retries with backoff."""

    code = "object_store_unavailable"
