"""The CLI finds the stack this checkout started: its state directory, PGMETA_BASE_PORT, explicit URLs."""

import json
import socket
from pathlib import Path

import pytest

from pgmeta_cli.main import main
from pgmeta_devstack.layout import StackLayout


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("PGMETA_API_URL", "PGMETA_DAPR_HTTP_URL", "PGMETA_BASE_PORT", "PGMETA_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSWORD", "secret")
    monkeypatch.chdir(tmp_path)  # no .pgmeta/stack above the working directory
    return monkeypatch


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().err.split())


def test_the_cli_honours_pgmeta_base_port(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    port = _closed_port()
    clean_env.setenv("PGMETA_BASE_PORT", str(port))
    assert main(["preflight", "--host", "db", "--user", "u"]) == 2
    said = _error(capsys)
    assert f"http://127.0.0.1:{port}" in said and "18000" not in said
    assert "PGMETA_BASE_PORT" in said


def test_the_cli_finds_the_stack_its_checkout_started(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _closed_port()
    state = tmp_path / ".pgmeta" / "stack"
    state.mkdir(parents=True)
    (state / "endpoints.json").write_text(
        json.dumps({"base_port": port, "api_url": f"http://127.0.0.1:{port}", "dapr_http_url": "http://x"})
    )
    (tmp_path / "sub").mkdir()
    clean_env.chdir(tmp_path / "sub")
    assert main(["runs"]) == 2
    said = _error(capsys)
    assert f"http://127.0.0.1:{port}" in said and ".pgmeta/stack/endpoints.json" in said.replace(" ", "")


def test_an_explicit_api_url_wins(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    port = _closed_port()
    clean_env.setenv("PGMETA_BASE_PORT", "25000")
    clean_env.setenv("PGMETA_API_URL", f"http://127.0.0.1:{port}/")
    assert main(["status", "some-run"]) == 2
    assert f"http://127.0.0.1:{port}" in _error(capsys)


def test_publish_goes_to_the_orchestrator_sidecar_of_the_base_port(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _closed_port()
    clean_env.setenv("PGMETA_BASE_PORT", str(port - 10))
    credentials = {"kind": "secret", "store": "secretstore", "key": "k"}
    document = json.dumps({"request_id": "r1", "source": {"host": "h", "username": "u"}, "credentials": credentials})
    assert main(["publish", "--data", document]) == 2
    assert f"http://127.0.0.1:{port}" in _error(capsys)


def test_make_status_finds_the_port_block_the_stack_was_started_on(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("PGMETA_STATE_DIR", str(tmp_path))
    (tmp_path / "endpoints.json").write_text(json.dumps({"base_port": 25000}))
    assert StackLayout.default().base_port == 25000
    clean_env.setenv("PGMETA_BASE_PORT", "26000")
    assert StackLayout.default().base_port == 26000
