"""The local secret store: the user's own secrets file is merged into what daprd reads and never overwritten."""

import io
import json
import os
import sys
from pathlib import Path

import pytest

from pgmeta_devstack.layout import StackLayout
from pgmeta_devstack.main import main
from pgmeta_devstack.stack import DEMO_SECRET, LocalStack


def test_a_users_secret_survives_every_rewrite_of_the_store(tmp_path: Path) -> None:
    stack = LocalStack(StackLayout(18000, tmp_path))
    user_file = tmp_path / "user-secrets.json"
    user_file.write_text(json.dumps({"sales-db": {"username": "reader", "password": "s3cret"}}))
    stack.write_secretstore()
    stack.write_secretstore()  # `make up` again
    store = json.loads((tmp_path / "secrets.json").read_text())
    assert store["sales-db"] == {"username": "reader", "password": "s3cret"}
    assert DEMO_SECRET in store
    assert json.loads(user_file.read_text()) == {"sales-db": {"username": "reader", "password": "s3cret"}}


def test_secrets_set_writes_the_users_file_with_owner_only_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGMETA_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw-1\n"))  # not a terminal: the password is read from stdin
    assert main(["secrets", "set", "crm-db", "--username", "crm_reader"]) == 0
    user_file = tmp_path / "user-secrets.json"
    assert json.loads(user_file.read_text()) == {"crm-db": {"username": "crm_reader", "password": "pw-1"}}
    assert oct(os.stat(user_file).st_mode & 0o777) == "0o600"
    assert json.loads((tmp_path / "secrets.json").read_text())["crm-db"]["password"] == "pw-1"
