"""Fixtures that start real servers on their own ports (PostgreSQL, Redis, daprd) and stop them after."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgmeta_devstack.layout import SERVICES, StackLayout, dapr_bin_dir, free_port_block
from pgmeta_devstack.postgres import PostgresServer, embedded_bin_dir
from pgmeta_devstack.processes import alive
from pgmeta_devstack.stack import DEMO_SECRET, LocalStack
from pgmeta_devstack.tracing import zipkin_unavailable

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _require_dapr() -> None:
    missing = [b for b in ("daprd", "placement", "scheduler") if not (dapr_bin_dir() / b).exists()]
    if missing:
        pytest.fail(f"Dapr runtime missing in {dapr_bin_dir()} ({', '.join(missing)}): run `make dapr` first")


DEBIAN_PG15 = Path("/usr/lib/postgresql/15/bin")


def postgres_builds() -> list[tuple[str, Path | None]]:
    """The PostgreSQL major versions the extractor is tested against: 18 (wheel) and 15 (Debian)."""
    return [("pg18", None), ("pg15", DEBIAN_PG15)]


@pytest.fixture(scope="session", params=postgres_builds(), ids=lambda build: build[0])
def postgres(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL server (password auth) holding the trap catalog in ``traps`` and a second database."""
    name, bin_dir = request.param
    if bin_dir is not None and not (bin_dir / "postgres").exists():
        pytest.fail(f"PostgreSQL 15 is not installed at {bin_dir}: .ci/run installs Debian's postgresql-15")
    root = tmp_path_factory.mktemp(name)
    os.chmod(root, 0o755)
    port = free_port_block(29000 if name == "pg18" else 29100, size=1)
    server = PostgresServer(root / "data", port, secrets.token_urlsafe(12), bin_dir or embedded_bin_dir())
    server.start()
    try:
        with psycopg.connect(**server.connect_kwargs(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE traps")
            conn.execute("CREATE DATABASE crm")
            conn.execute("CREATE DATABASE locked")
            conn.execute("REVOKE CONNECT ON DATABASE locked FROM PUBLIC")
            conn.execute("CREATE ROLE reader LOGIN PASSWORD 'reader-pw'")
        with psycopg.connect(**server.connect_kwargs("traps"), autocommit=True) as conn:
            conn.execute((FIXTURES / "traps.sql").read_text())
        with psycopg.connect(**server.connect_kwargs("crm"), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA leads; CREATE TABLE leads.contacts (id int PRIMARY KEY, email text)")
        yield server
    finally:
        server.stop()


def _stack(tmp_path_factory: pytest.TempPathFactory, name: str, start_port: int) -> LocalStack:
    _require_dapr()
    state = tmp_path_factory.mktemp(name)
    os.chmod(state, 0o755)
    return LocalStack(StackLayout(free_port_block(start_port), state))


def _recorded_pids(stack: LocalStack) -> list[int]:
    """Every process the stack recorded, PostgreSQL's postmaster included."""
    pids = [int(path.read_text()) for path in stack.layout.pids.glob("*.pid")] if stack.layout.pids.exists() else []
    postmaster = stack.state / "postgres" / "postmaster.pid"
    if postmaster.exists():
        pids.append(int(postmaster.read_text().splitlines()[0]))
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


def _assert_all_stopped(pids: list[int]) -> None:
    survivors = [f"{pid} {_cmdline(pid)}" for pid in pids if alive(pid)]
    assert not survivors, f"processes still running after down(): {survivors}"


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Redis, placement, scheduler and bare daprd sidecars (no app) for the orchestrator and publisher."""
    stack = _stack(tmp_path_factory, "sidecars", 28100)
    stack.state.mkdir(parents=True, exist_ok=True)
    stack.layout.objects.mkdir(parents=True, exist_ok=True)
    try:
        stack.write_secretstore()
        stack.start_redis()
        stack.start_placement()
        stack.start_scheduler()
        for service in ("orchestrator", "publisher"):
            _, sidecar = stack.start_service(service, with_app=False)
            stack.wait_for_service(service, None, sidecar)
        yield stack
    finally:
        pids = _recorded_pids(stack)
        stack.down()
        _assert_all_stopped(pids)


@pytest.fixture(scope="module")
def full_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The whole stack, as `make up` starts it, on its own ports and state directory."""
    stack = _stack(tmp_path_factory, "stack", 28200)
    try:
        # Without its trace viewer (tests/e2e/test_observability.py starts one): a JVM less per stack. Kept off
        # for the module's whole life, so a test that restarts part of the stack does not start one either.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PGMETA_TRACING", "off")
            stack.up()
            yield stack
    finally:
        pids = _recorded_pids(stack)
        stack.down()  # first: a failed count below must not leave the stack running
        _assert_all_stopped(pids)
        assert len(pids) == 2 * len(SERVICES) + 4, pids


def api_headers(stack: LocalStack) -> dict[str, str]:
    """The stack's admin API token, as the CLI sends it."""
    return {"Authorization": f"Bearer {stack.api_token()}"}


def register_connection(stack: LocalStack, name: str, database: str, secret: str = DEMO_SECRET) -> None:
    """Registers a connection to the stack's PostgreSQL (as an admin would, `pgmeta connections add`)."""
    stack.register_connection(name, database, secret)


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The whole stack with its Zipkin, as `make up` starts it when Java and the Zipkin jar are there."""
    why_not = zipkin_unavailable()
    if why_not:
        pytest.skip(f"no trace viewer here: {why_not}")
    stack = _stack(tmp_path_factory, "traced", 28600)
    try:
        stack.up()
        assert stack.exports_traces()
        yield stack
    finally:
        pids = _recorded_pids(stack)
        stack.down()
        _assert_all_stopped(pids)
