"""Password providers per auth method, and the CA-file check; no network (IAM tokens are signed locally)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import boto3
import botocore.auth
import pytest
from botocore.stub import Stubber

from pgmeta_extractor.auth import AwsClients, AwsKeys, check_ssl_files, password_provider
from pgmeta_shared.errors import (
    AuthenticationFailedError,
    CredentialsNotFoundError,
    InvalidRequestError,
)
from pgmeta_shared.events import AuthSpec, SourceSpec

# AWS's documented example key: well-formed, belongs to nobody.
ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
USER_SECRET = {"aws_access_key_id": ACCESS_KEY_ID, "aws_secret_access_key": SECRET_ACCESS_KEY}

TEMPORARY_KEY_IDS = ("ASIATEMPORARYKEY0001", "ASIATEMPORARYKEY0002")
TEMPORARY_SECRET = "tEmPoRaRySeCrEtKeY/ThatMustNeverBeShown0"

HOST = "orders.cluster-abc123.eu-west-1.rds.amazonaws.com"
REGION = "eu-west-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/pgmeta-reader"
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def iam_source(method: str = "iam_user", **auth: Any) -> SourceSpec:
    return SourceSpec(
        host=HOST,
        port=5432,
        username="iam_reader",
        sslmode="verify-full",
        auth=AuthSpec.model_validate({"method": method, "aws_region": REGION} | auth),
    )


def token_query(token: str) -> dict[str, str]:
    query = parse_qs(urlsplit("https://" + token).query, strict_parsing=True)
    return {name: values[0] for name, values in query.items()}


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text
        assert quote(secret, safe="") not in text


class CountingRds:
    """Wraps a real RDS client and counts the tokens it signs."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[dict[str, Any]] = []

    def generate_db_auth_token(self, **params: Any) -> str:
        self.calls.append(params)
        return str(self.client.generate_db_auth_token(**params))


class RecordingAws(AwsClients):
    """Real boto3 clients, except STS, whose answers come from a Stubber; records the keys each was given."""

    def __init__(self) -> None:
        # The stubbed client's own keys are never used: the Stubber answers before any signing.
        self.sts_client = boto3.Session(
            aws_access_key_id="AKIASTUBBEDSTSCLIENT", aws_secret_access_key="unused", region_name=REGION
        ).client("sts")
        self.stubber = Stubber(self.sts_client)
        self.stubber.activate()
        self.sts_keys: list[AwsKeys | None] = []
        self.rds_keys: list[AwsKeys | None] = []
        self.rds_clients: list[CountingRds] = []

    def sts(self, keys: AwsKeys | None, region: str) -> Any:
        self.sts_keys.append(keys)
        return self.sts_client

    def rds(self, keys: AwsKeys | None, region: str) -> Any:
        self.rds_keys.append(keys)
        self.rds_clients.append(CountingRds(super().rds(keys, region)))
        return self.rds_clients[-1]

    def will_assume(self, access_key_id: str, expires_at: datetime, **expected: str) -> None:
        credentials = {
            "AccessKeyId": access_key_id,
            "SecretAccessKey": TEMPORARY_SECRET,
            "SessionToken": f"session-token-of-{access_key_id}",
            "Expiration": expires_at,
        }
        params = {"RoleArn": ROLE_ARN, "RoleSessionName": "pgmeta-iam_reader"} | expected
        self.stubber.add_response("assume_role", {"Credentials": credentials}, params)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# basic


def test_basic_returns_the_secret_password_every_time() -> None:
    provider = password_provider(SourceSpec(host="db", username="reader"), {"password": "s3cret", "username": "x"})
    assert provider() == "s3cret"
    assert provider() == "s3cret"


def test_basic_without_password_names_the_entry_and_no_secret_value() -> None:
    secret = {"aws_access_key_id": ACCESS_KEY_ID, "aws_secret_access_key": SECRET_ACCESS_KEY, "username": "bob-42"}
    with pytest.raises(CredentialsNotFoundError) as caught:
        password_provider(SourceSpec(host="db", username="reader"), secret)
    message = str(caught.value)
    assert "'password'" in message
    assert "iam_user" in message  # the hint points at the likely mistake
    assert_no_secret(message, *secret.values())


# iam_user


def test_iam_user_token_is_a_presigned_connect_url_for_the_source() -> None:
    token = password_provider(iam_source(), USER_SECRET)()

    assert token.startswith(f"{HOST}:5432/?Action=connect&DBUser=iam_reader")
    query = token_query(token)
    assert query["X-Amz-Signature"]
    assert query["X-Amz-Expires"] == "900"
    key_id, date, region, service, terminator = query["X-Amz-Credential"].split("/")
    assert (key_id, region, service, terminator) == (ACCESS_KEY_ID, REGION, "rds-db", "aws4_request")
    assert date == query["X-Amz-Date"][:8]
    assert "X-Amz-Security-Token" not in query
    assert_no_secret(token, SECRET_ACCESS_KEY)


def test_iam_user_signs_a_fresh_token_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    clients = RecordingAws()
    provider = password_provider(iam_source(), USER_SECRET, clients=clients)
    # botocore stamps tokens with the second it signs them: move that clock instead of sleeping.
    signed_at = iter([datetime(2026, 1, 1, 12, 0, 0), datetime(2026, 1, 1, 12, 0, 1)])
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *_args, **_kwargs: next(signed_at))

    first, second = provider(), provider()

    assert clients.rds_keys == [AwsKeys(ACCESS_KEY_ID, SECRET_ACCESS_KEY)]  # one client, built from the secret
    assert (
        clients.rds_clients[0].calls
        == [{"DBHostname": HOST, "Port": 5432, "DBUsername": "iam_reader", "Region": REGION}] * 2
    )
    assert first != second
    assert token_query(first)["X-Amz-Date"] == "20260101T120000Z"
    assert token_query(second)["X-Amz-Date"] == "20260101T120001Z"


def test_iam_user_passes_a_session_token_along() -> None:
    token = password_provider(iam_source(), USER_SECRET | {"aws_session_token": "FwoGZXIvYXdzEXAMPLE"})()
    assert token_query(token)["X-Amz-Security-Token"] == "FwoGZXIvYXdzEXAMPLE"


@pytest.mark.parametrize(
    ("secret", "says"),
    [
        ({"password": "pw"}, "aws_access_key_id"),
        ({"aws_access_key_id": ACCESS_KEY_ID}, "no 'aws_secret_access_key'"),
        ({"aws_secret_access_key": SECRET_ACCESS_KEY}, "no 'aws_access_key_id'"),
    ],
)
def test_iam_user_without_a_whole_key_says_what_is_missing(secret: dict[str, str], says: str) -> None:
    with pytest.raises(CredentialsNotFoundError) as caught:
        password_provider(iam_source(), secret)
    assert says in str(caught.value)
    assert_no_secret(str(caught.value), *secret.values())


@pytest.mark.parametrize("method", ["iam_user", "iam_role"])
def test_iam_without_region_names_the_field(method: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        password_provider(iam_source(method, aws_region=None, role_arn=ROLE_ARN), USER_SECRET)
    assert "auth.aws_region" in str(caught.value)
    assert method in str(caught.value)


@pytest.mark.parametrize("sslmode", ["disable", "allow", "prefer", "require", "verify-ca"])
def test_iam_refuses_sslmodes_that_could_send_the_token_to_an_unverified_server(sslmode: str) -> None:
    source = iam_source().model_copy(update={"sslmode": sslmode})
    with pytest.raises(InvalidRequestError, match=f"sslmode '{sslmode}'"):
        password_provider(source, USER_SECRET)


# iam_role


def test_iam_role_without_role_arn_names_the_field() -> None:
    with pytest.raises(InvalidRequestError, match=r"auth\.role_arn is required for authentication method 'iam_role'"):
        password_provider(iam_source("iam_role"), USER_SECRET)


def test_iam_role_token_is_signed_with_the_temporary_credentials() -> None:
    clients = RecordingAws()
    clients.will_assume(TEMPORARY_KEY_IDS[0], T0 + timedelta(hours=1), ExternalId="tenant-42")
    provider = password_provider(
        iam_source("iam_role", role_arn=ROLE_ARN, external_id="tenant-42"),
        USER_SECRET,
        clients=clients,
        clock=Clock(T0),
    )

    token = provider()

    clients.stubber.assert_no_pending_responses()
    assert clients.sts_keys == [AwsKeys(ACCESS_KEY_ID, SECRET_ACCESS_KEY)]  # STS called as the secret's user
    assert token.startswith(f"{HOST}:5432/?Action=connect&DBUser=iam_reader")
    query = token_query(token)
    assert query["X-Amz-Credential"].startswith(f"{TEMPORARY_KEY_IDS[0]}/")
    assert f"/{REGION}/rds-db/" in query["X-Amz-Credential"]
    assert query["X-Amz-Security-Token"] == f"session-token-of-{TEMPORARY_KEY_IDS[0]}"
    assert_no_secret(token, SECRET_ACCESS_KEY, TEMPORARY_SECRET)


def test_iam_role_without_keys_in_the_secret_uses_the_default_chain() -> None:
    clients = RecordingAws()
    clients.will_assume(TEMPORARY_KEY_IDS[0], T0 + timedelta(hours=1))
    provider = password_provider(iam_source("iam_role", role_arn=ROLE_ARN), {}, clients=clients, clock=Clock(T0))

    assert token_query(provider())["X-Amz-Credential"].startswith(TEMPORARY_KEY_IDS[0])
    assert clients.sts_keys == [None]


def test_iam_role_reuses_credentials_until_five_minutes_before_expiry() -> None:
    clients = RecordingAws()
    clock = Clock(T0)
    clients.will_assume(TEMPORARY_KEY_IDS[0], T0 + timedelta(hours=1))
    clients.will_assume(TEMPORARY_KEY_IDS[1], T0 + timedelta(hours=2))
    provider = password_provider(iam_source("iam_role", role_arn=ROLE_ARN), USER_SECRET, clients=clients, clock=clock)

    def signer() -> str:
        return token_query(provider())["X-Amz-Credential"].split("/")[0]

    assert signer() == TEMPORARY_KEY_IDS[0]
    clock.now = T0 + timedelta(minutes=54, seconds=59)
    assert signer() == TEMPORARY_KEY_IDS[0]  # still more than 5 minutes left: no second assumption
    assert len(clients.rds_keys) == 1

    clock.now = T0 + timedelta(minutes=55)
    assert signer() == TEMPORARY_KEY_IDS[1]
    clients.stubber.assert_no_pending_responses()
    assert [keys.access_key_id if keys else None for keys in clients.rds_keys] == list(TEMPORARY_KEY_IDS)
    # every call signed a new token, whichever credentials it used
    assert [len(rds.calls) for rds in clients.rds_clients] == [2, 1]


def test_iam_role_sts_refusal_names_the_role_not_the_keys() -> None:
    clients = RecordingAws()
    clients.stubber.add_client_error(
        "assume_role",
        service_error_code="AccessDenied",
        service_message=f"User: arn:aws:iam::123456789012:user/{ACCESS_KEY_ID} is not authorized",
        http_status_code=403,
    )
    provider = password_provider(iam_source("iam_role", role_arn=ROLE_ARN), USER_SECRET, clients=clients)

    with pytest.raises(AuthenticationFailedError) as caught:
        provider()

    message = str(caught.value)
    assert ROLE_ARN in message
    assert "AccessDenied" in message
    assert_no_secret(message, ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_iam_role_with_no_credentials_anywhere_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An empty default chain, for real: no environment keys, no config files, no metadata service.
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    provider = password_provider(iam_source("iam_role", role_arn=ROLE_ARN), {})

    with pytest.raises(CredentialsNotFoundError, match="no AWS credentials to assume role"):
        provider()


def test_iam_role_with_half_a_key_is_refused_before_any_call() -> None:
    clients = RecordingAws()
    with pytest.raises(CredentialsNotFoundError, match="no 'aws_secret_access_key'"):
        password_provider(
            iam_source("iam_role", role_arn=ROLE_ARN), {"aws_access_key_id": ACCESS_KEY_ID}, clients=clients
        )
    assert clients.sts_keys == []


# CA file


def test_ssl_check_rejects_a_missing_ca_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(InvalidRequestError) as caught:
        check_ssl_files(SourceSpec(host="db", username="r", sslmode="verify-full", sslrootcert=str(missing)))
    assert str(missing) in str(caught.value)


def test_ssl_check_rejects_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="not a file"):
        check_ssl_files(SourceSpec(host="db", username="r", sslmode="verify-ca", sslrootcert=str(tmp_path)))


@pytest.mark.parametrize(
    ("sslmode", "sslrootcert"),
    [
        ("verify-full", None),  # libpq falls back to ~/.postgresql/root.crt
        ("verify-full", "system"),  # the operating system's trust store (libpq 16+)
        ("require", "/nowhere/ca.pem"),  # not verifying: nothing to check
        ("prefer", None),
    ],
)
def test_ssl_check_allows(sslmode: Any, sslrootcert: str | None) -> None:
    check_ssl_files(SourceSpec(host="db", username="r", sslmode=sslmode, sslrootcert=sslrootcert))


def test_ssl_check_accepts_a_readable_ca_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    check_ssl_files(SourceSpec(host="db", username="r", sslmode="verify-ca", sslrootcert=str(ca)))
