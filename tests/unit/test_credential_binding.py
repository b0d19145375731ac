"""Credentials are bound to their run and their source: no caller can borrow, or delete, someone else's."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pgmeta_extractor.extraction import provider_for, resolve_secret
from pgmeta_orchestrator.workflow import Activities
from pgmeta_shared.errors import InvalidRequestError
from pgmeta_shared.events import CredentialRef, ExtractionCompleted, SourceSpec
from pgmeta_shared.keys import RUNS_INDEX_KEY, credentials_key, snapshot_key
from tests.fakes import InMemoryPlatform

SOURCE = SourceSpec(host="db.internal", port=5432, username="reader")


def test_a_state_entry_of_another_run_is_refused_before_it_is_read() -> None:
    platform = InMemoryPlatform()
    platform.save_state_json("credentials", credentials_key("victim"), {"password": "theirs"})
    with pytest.raises(InvalidRequestError, match="belong to another run"):
        resolve_secret(platform, CredentialRef(kind="state", store="credentials", key="cred/victim"), run_id="thief")
    assert resolve_secret(
        platform, CredentialRef(kind="state", store="credentials", key="cred/victim"), run_id="victim"
    ) == {"password": "theirs"}


def test_a_secret_bound_to_a_host_is_refused_for_any_other_source() -> None:
    platform = InMemoryPlatform(
        secrets={"secretstore": {"prod": {"password": "p", "host": "db.internal", "port": "5432"}}}
    )
    ref = CredentialRef(kind="secret", store="secretstore", key="prod")
    assert provider_for(platform, SOURCE, ref, run_id="r1")() == "p"
    for attacker in (SOURCE.model_copy(update={"host": "evil.example"}), SOURCE.model_copy(update={"port": 6543})):
        with pytest.raises(InvalidRequestError, match="secret 'prod' is bound to db.internal:5432"):
            provider_for(platform, attacker, ref, run_id="r1")


@pytest.mark.parametrize("named_key", [RUNS_INDEX_KEY, snapshot_key("default/postgres/0123456789"), "cred/other"])
def test_the_finish_step_deletes_only_the_runs_own_credentials(named_key: str) -> None:
    platform = InMemoryPlatform()
    for store in ("artifacts", "credentials"):
        platform.save_state_json(store, named_key, {"keep": True})
    platform.save_state_json("credentials", credentials_key("r1"), {"password": "pw"})
    result = ExtractionCompleted(run_id="r1", status="COMPLETED")
    payload: dict[str, Any] = {
        "result": result.model_dump(mode="json"),
        "credentials": {"kind": "state", "store": "credentials", "key": named_key},
    }
    Activities(platform, "credentials").finish_run(SimpleNamespace(workflow_id="r1"), payload)
    assert platform.get_state_json("credentials", credentials_key("r1")) is None
    for store in ("artifacts", "credentials"):
        assert platform.get_state_json(store, named_key) == {"keep": True}
