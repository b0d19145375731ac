"""The local `secretstore` (secretstores.local.file): the stack's own entries merged with the user's own file.

``secrets.json`` is what daprd reads; the stack rewrites it on every `make up`. Users keep theirs in
``user-secrets.json`` next to it, which the stack only ever reads (or `pgmeta-stack secrets set` writes).
Dapr's local.file store reads its file once, when the component initialises (components-contrib 1.18,
secretstores/local/file/filestore.go: Init reads the file, GetSecret answers from memory), so a change
reaches the sidecars that use the store (extractor, publisher) only when they restart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STORE_FILE = "secrets.json"
USER_FILE = "user-secrets.json"
# The sidecars that load the `secretstore` component (its scopes in components/secretstore.yaml).
SECRET_STORE_SERVICES = ("extractor", "publisher")


class SecretsFileError(ValueError):
    pass


def _write_private(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(content, file, indent=2)
    path.chmod(0o600)


def read_user_secrets(state_dir: Path) -> dict[str, Any]:
    path = state_dir / USER_FILE
    if not path.exists():
        return {}
    try:
        secrets = json.loads(path.read_text())
    except ValueError as exc:
        raise SecretsFileError(f"{path} is not JSON: {exc}") from None
    if not isinstance(secrets, dict) or not all(isinstance(v, dict) for v in secrets.values()):
        raise SecretsFileError(f'{path} must hold {{"<name>": {{"<field>": "<value>", …}}, …}}')
    return secrets


def write_store(state_dir: Path, stack_owned: dict[str, Any]) -> None:
    """Writes ``secrets.json``: the user's entries, then the stack's (the demo relies on its own)."""
    _write_private(state_dir / STORE_FILE, {**read_user_secrets(state_dir), **stack_owned})


def set_user_secret(state_dir: Path, name: str, fields: dict[str, str]) -> None:
    if not name or "/" in name:
        raise SecretsFileError(f"{name!r} is not a usable secret name")
    user = read_user_secrets(state_dir)
    user[name] = fields
    _write_private(state_dir / USER_FILE, user)
