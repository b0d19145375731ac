"""Incremental re-runs through the whole stack (real daprd, Redis, PostgreSQL): unchanged schemas are skipped
and carried over, and the published snapshot stays exactly what a full run publishes."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import psycopg
import pytest

from pgmeta_devstack.stack import DEMO_DATABASE, LocalStack
from pgmeta_shared.outputfiles import decode

from .test_pipeline import publish, request_document, stream_events, wait_for_completion

pytestmark = pytest.mark.e2e

CONNECTION_QN = "default/postgres/incremental-e2e"


def run(stack: LocalStack, name: str, **extra: Any) -> dict[str, Any]:
    run_id = f"incr-{name}-{int(time.time() * 1000)}"
    document = request_document(stack, run_id) | {"connection_qualified_name": CONNECTION_QN} | extra
    publish(stack, document)
    completed = wait_for_completion(stack, run_id)
    assert completed["status"] == "COMPLETED", completed
    return completed


def transformed_units(stack: LocalStack, run_id: str) -> list[str]:
    """The units the workflow sent the transformer a command for, in one run (read on the command stream)."""
    events = [e["data"] for e in stream_events(stack, "transform.requested")]
    return sorted({e["unit"] for e in events if e["run_id"] == run_id})


def snapshot_lines(stack: LocalStack, location: str) -> tuple[list[bytes], dict[str, Any]]:
    """Every entity and extra line of a run, sorted, read where the manifest says (digests checked)."""
    run_dir = stack.layout.objects / location
    manifest = json.loads((run_dir / "manifest.json").read_text())
    lines: list[bytes] = []
    for entry in manifest["files"]:
        content = (stack.layout.objects / entry.get("folder", location) / entry["name"]).read_bytes()
        assert hashlib.sha256(content).hexdigest() == entry["sha256"], entry["name"]
        if "type" in entry or "extra" in entry:
            lines += decode(entry["name"], content).splitlines()
    return sorted(lines), manifest


def test_unchanged_schemas_are_skipped_and_the_snapshot_stays_exact(full_stack: LocalStack) -> None:
    first = run(full_stack, "first")
    first_lines, first_manifest = snapshot_lines(full_stack, first["location"])
    schemas = first["schemas"]["extracted"]
    assert schemas >= 3 and first["schemas"]["skipped"] == 0

    again = run(full_stack, "again")
    assert again["schemas"] == {"extracted": 0, "skipped": schemas}
    assert {k: again["changes"][k] for k in ("created", "updated", "deleted")} == {
        "created": 0,
        "updated": 0,
        "deleted": 0,
    }
    again_lines, again_manifest = snapshot_lines(full_stack, again["location"])
    assert again_lines == first_lines
    assert again_manifest["counts"] == first_manifest["counts"]
    # Nothing to transform but the server unit (workflow v3: no command for a database unit with 0 chunks).
    assert transformed_units(full_stack, again["run_id"]) == ["server"]
    # Carried over, not copied: the files stay in the first run's folder.
    assert all(entry.get("folder") == first["location"] for entry in again_manifest["files"] if "schema" in entry)

    with psycopg.connect(**full_stack.postgres.connect_kwargs(DEMO_DATABASE), autocommit=True) as conn:
        conn.execute("COMMENT ON TABLE inventory.warehouses IS 'changed by the incremental e2e test'")
    changed = run(full_stack, "changed")
    assert 1 <= changed["schemas"]["extracted"] < schemas
    assert changed["schemas"]["extracted"] + changed["schemas"]["skipped"] == schemas
    assert (changed["changes"]["created"], changed["changes"]["updated"], changed["changes"]["deleted"]) == (0, 1, 0)
    assert transformed_units(full_stack, changed["run_id"]) == ["db000", "server"]  # the demo's one database
    changed_lines, _ = snapshot_lines(full_stack, changed["location"])

    full = run(full_stack, "full", full=True)
    assert full["schemas"] == {"extracted": schemas, "skipped": 0}
    assert (full["changes"]["created"], full["changes"]["updated"], full["changes"]["deleted"]) == (0, 0, 0)
    full_lines, _ = snapshot_lines(full_stack, full["location"])
    assert changed_lines == full_lines
    assert changed_lines != first_lines
