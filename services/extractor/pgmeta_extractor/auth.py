"""How the extractor proves who it is to the source: a password, or an AWS IAM token for RDS/Aurora.

Also checks, before connecting, that the CA file a verify-ca / verify-full connection needs is there.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
)
from botocore.exceptions import ConnectionError as AwsConnectionError

from pgmeta_extractor.source import PasswordProvider
from pgmeta_shared.errors import (
    AuthenticationFailedError,
    CredentialsNotFoundError,
    InvalidRequestError,
    TransientInfrastructureError,
)
from pgmeta_shared.events import SourceSpec

# Temporary credentials are replaced this long before STS says they expire, so a token is never signed
# with credentials that lapse while the connection is still being set up.
CREDENTIAL_REFRESH_MARGIN = timedelta(minutes=5)

# RDS accepts IAM tokens only over TLS; a mode that may fall back to cleartext on purpose would also hand
# a bearer credential (valid 15 minutes) to anyone on the path.

VERIFYING_SSLMODES = frozenset({"verify-ca", "verify-full"})

# libpq (16+) reads sslrootcert=system as "the operating system's trusted CAs", not as a file name.
SYSTEM_TRUST_STORE = "system"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AwsKeys:
    """An AWS access key (long-lived, or temporary with a session token). repr never shows the secret."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


class AwsClients:
    """Makes the boto3 clients the IAM methods use; tests pass a subclass that hands out stubbed clients.

    ``keys=None`` means boto3's default credential chain (environment, config files, IRSA web identity,
    container or instance metadata).
    """

    def sts(self, keys: AwsKeys | None, region: str) -> Any:
        return aws_session(keys, region).client("sts")

    def rds(self, keys: AwsKeys | None, region: str) -> Any:
        return aws_session(keys, region).client("rds")


def aws_session(keys: AwsKeys | None, region: str) -> boto3.Session:
    if keys is None:
        return boto3.Session(region_name=region)
    return boto3.Session(
        aws_access_key_id=keys.access_key_id,
        aws_secret_access_key=keys.secret_access_key,
        aws_session_token=keys.session_token,
        region_name=region,
    )


def password_provider(
    source: SourceSpec,
    secret: Mapping[str, str],
    *,
    clients: AwsClients | None = None,
    clock: Clock = utc_now,
) -> PasswordProvider:
    """What to send as the password on each new connection, per ``source.auth.method``.

    basic: the secret's ``password``. iam_user: a fresh RDS auth token signed with the secret's access key.
    iam_role: a fresh token signed with temporary credentials of ``role_arn``, assumed with the secret's
    access key if it holds one, else with boto3's default chain. Configuration errors raise here, before
    any connection; STS errors raise when the first token is asked for.
    """
    method = source.auth.method
    if method == "basic":
        return _basic_password(secret)
    region = _required(source.auth.aws_region, "auth.aws_region", method)
    if source.sslmode != "verify-full":
        # The token travels as a cleartext password: only a server proven to be the named host may see it.
        raise InvalidRequestError(
            f"sslmode {source.sslmode!r} cannot carry an IAM auth token (method {method!r})",
            hint="use sslmode verify-full with the RDS CA bundle (sslrootcert); the token is sent as a cleartext "
            "password, so the server must be verified first",
        )
    clients = clients or AwsClients()
    if method == "iam_user":
        keys = secret_aws_keys(secret)
        if keys is None:
            raise CredentialsNotFoundError(
                "the secret for iam_user authentication holds no 'aws_access_key_id' / 'aws_secret_access_key'"
            )
        rds = clients.rds(keys, region)
        return lambda: rds_auth_token(rds, source, region)
    role_arn = _required(source.auth.role_arn, "auth.role_arn", method)
    return AssumedRoleTokens(
        source,
        region=region,
        role_arn=role_arn,
        keys=secret_aws_keys(secret),
        clients=clients,
        clock=clock,
    )


def _basic_password(secret: Mapping[str, str]) -> PasswordProvider:
    password = secret.get("password")
    if password is None:
        hint = "a secret for basic authentication must hold a 'password' entry"
        if "aws_access_key_id" in secret:
            hint += "; for an AWS access key set source.auth.method to 'iam_user' or 'iam_role'"
        raise CredentialsNotFoundError("the secret holds no 'password' entry", hint=hint)
    return lambda: password


def _required(value: str | None, name: str, method: str) -> str:
    if not value:
        raise InvalidRequestError(f"{name} is required for authentication method {method!r}")
    return value


def secret_aws_keys(secret: Mapping[str, str]) -> AwsKeys | None:
    """The access key in ``secret``, or None if it holds none; half a key is an error, not a fallback."""
    access_key_id = secret.get("aws_access_key_id")
    secret_access_key = secret.get("aws_secret_access_key")
    if access_key_id is None and secret_access_key is None:
        return None
    if not access_key_id or not secret_access_key:
        present, missing = (
            ("aws_access_key_id", "aws_secret_access_key")
            if access_key_id
            else ("aws_secret_access_key", "aws_access_key_id")
        )
        raise CredentialsNotFoundError(f"the secret holds {present!r} but no {missing!r}")
    return AwsKeys(access_key_id, secret_access_key, secret.get("aws_session_token") or None)


def rds_auth_token(rds: Any, source: SourceSpec, region: str) -> str:
    """A presigned ``connect`` URL for ``source.username``, valid 15 minutes; signed locally, no network."""
    token = rds.generate_db_auth_token(
        DBHostname=source.host, Port=source.port, DBUsername=source.username, Region=region
    )
    return str(token)


def role_session_name(username: str) -> str:
    # Shows in CloudTrail next to the role; STS allows [\w+=,.@-], 2 to 64 characters.
    return ("pgmeta-" + re.sub(r"[^\w+=,.@-]", "-", username))[:64]


class AssumedRoleTokens:
    """RDS auth tokens signed with a role's temporary credentials, re-assumed shortly before they expire.

    Callable like any password provider; safe to share between threads (one assumption at a time).
    """

    def __init__(
        self,
        source: SourceSpec,
        *,
        region: str,
        role_arn: str,
        keys: AwsKeys | None,
        clients: AwsClients,
        clock: Clock = utc_now,
    ) -> None:
        self._source = source
        self._region = region
        self._role_arn = role_arn
        self._clients = clients
        self._clock = clock
        self._sts = clients.sts(keys, region)
        self._lock = threading.Lock()
        self._rds: Any = None
        self._refresh_at: datetime | None = None

    def __call__(self) -> str:
        return rds_auth_token(self._signing_client(), self._source, self._region)

    def _signing_client(self) -> Any:
        with self._lock:
            if self._rds is None or self._refresh_at is None or self._clock() >= self._refresh_at:
                temporary, expires_at = self._assume_role()
                self._rds = self._clients.rds(temporary, self._region)
                self._refresh_at = expires_at - CREDENTIAL_REFRESH_MARGIN
            return self._rds

    def _assume_role(self) -> tuple[AwsKeys, datetime]:
        params = {"RoleArn": self._role_arn, "RoleSessionName": role_session_name(self._source.username)}
        if self._source.auth.external_id:
            params["ExternalId"] = self._source.auth.external_id
        role = self._role_arn
        # Messages name the role and STS's error code, never a key: AWS's own text is left out on purpose.
        try:
            response = self._sts.assume_role(**params)
        except NoCredentialsError:
            raise CredentialsNotFoundError(
                f"no AWS credentials to assume role {role!r}",
                hint="put aws_access_key_id / aws_secret_access_key in the secret, or give the extractor an "
                "identity boto3 finds by itself (IRSA service account, instance profile, environment)",
            ) from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "unknown")
            raise AuthenticationFailedError(
                f"cannot assume role {role!r}: STS answered {code}",
                hint="the role's trust policy must allow the calling identity (and the external id, if set)",
            ) from None
        except ParamValidationError:
            raise InvalidRequestError(
                f"STS rejects the parameters for assuming role {role!r}",
                hint="auth.role_arn must be a full role ARN; auth.external_id 2 to 1224 characters",
            ) from None
        except (AwsConnectionError, HTTPClientError) as exc:
            raise TransientInfrastructureError(
                f"cannot reach AWS STS in {self._region} to assume role {role!r}: {type(exc).__name__}"
            ) from None
        except BotoCoreError as exc:
            raise AuthenticationFailedError(f"cannot assume role {role!r}: {type(exc).__name__}") from None
        credentials = response["Credentials"]
        expires_at: datetime = credentials["Expiration"]
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        temporary = AwsKeys(credentials["AccessKeyId"], credentials["SecretAccessKey"], credentials["SessionToken"])
        return temporary, expires_at


def check_ssl_files(source: SourceSpec) -> None:
    """Fails early, naming the path, if a verifying sslmode points at a CA file the extractor cannot read.

    Without this libpq's own complaint ("root certificate file ... does not exist") reaches the user as a
    generic connection failure. No ``sslrootcert`` with verify-ca / verify-full is allowed: libpq then reads
    ``~/.postgresql/root.crt`` of the extractor's user. ``sslrootcert=system`` (libpq 16+) means the operating
    system's trusted CAs and is no file. Other sslmodes do not verify the server, so their files are not checked.
    """
    path = source.sslrootcert
    if source.sslmode not in VERIFYING_SSLMODES or not path or path == SYSTEM_TRUST_STORE:
        return
    if not os.path.isfile(path):
        raise InvalidRequestError(
            f"sslrootcert {path!r} does not exist or is not a file (sslmode {source.sslmode})",
            hint="the path is read on the extractor's host: mount the CA bundle there",
        )
    if not os.access(path, os.R_OK):
        raise InvalidRequestError(f"sslrootcert {path!r} is not readable by the extractor (sslmode {source.sslmode})")
