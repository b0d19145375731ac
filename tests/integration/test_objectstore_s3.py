"""The production object store: the chart's `objectstore` component (bindings.aws.s3, as rendered into
deploy/k8s/pgmeta.yaml) behind a real daprd,
against a local S3-compatible server (moto), written through ``DaprPlatform.write_object`` as the publisher does."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from pydantic import SecretStr

from pgmeta_devstack.layout import StackLayout, dapr_bin_dir, free_port_block, repo_root
from pgmeta_devstack.processes import alive, http_ok, spawn, stop, wait_until
from pgmeta_devstack.stack import LocalStack
from pgmeta_shared.platform import DaprPlatform
from pgmeta_shared.settings import DaprSettings

from .objectstore_cases import OBJECT_CASES

pytestmark = pytest.mark.integration

# The chart rendered with its defaults (`make manifests`; drift-checked by tests/k8s/test_manifests.py).
PRODUCTION_MANIFEST = repo_root() / "deploy" / "k8s" / "pgmeta.yaml"
BUCKET = "pgmeta-it"
REGION = "us-east-1"
# moto accepts any credentials; these only prove that the component's accessKey/secretKey reach the SDK.
ACCESS_KEY = "pgmeta-it-access"
SECRET_KEY = "pgmeta-it-secret"
MOTO_PORT_OFFSET = 70  # a free offset in StackLayout's port block
SERVICE = "publisher"


@dataclass(frozen=True)
class S3Sidecar:
    """The publisher's daprd with the S3 objectstore, and the S3 server it writes to."""

    platform: DaprPlatform
    endpoint: str

    def s3(self) -> Any:
        return s3_client(self.endpoint)


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def s3_component(endpoint: str) -> dict[str, Any]:
    """The production component, pointed at the local server: only values change, never metadata names."""
    component: dict[str, Any]
    (component,) = [
        doc
        for doc in yaml.safe_load_all(PRODUCTION_MANIFEST.read_text())
        if doc and doc["kind"] == "Component" and doc["metadata"]["name"] == "objectstore"
    ]
    assert component["spec"]["type"] == "bindings.aws.s3"
    metadata = {entry["name"]: entry for entry in component["spec"]["metadata"]}
    # The default for writes that do not say; DaprPlatform says on every write (decodeBase64 in its metadata).
    assert metadata["decodeBase64"]["value"] == "true"
    assert metadata["forcePathStyle"]["value"] == "true"
    overrides = {
        "bucket": BUCKET,
        "region": REGION,
        "endpoint": endpoint,
        "accessKey": ACCESS_KEY,
        "secretKey": SECRET_KEY,
    }
    for name, value in overrides.items():
        # Kubernetes secret references become plain values: there is no Kubernetes secret store here.
        metadata[name].pop("secretKeyRef", None)
        metadata[name]["value"] = value
    return component


def write_resources(folder: Path, endpoint: str) -> Path:
    """The publisher's local resources (pub/sub, artifacts, envstore, resiliency), S3 instead of localstorage."""
    folder.mkdir(parents=True)
    for source in (repo_root() / "components").glob("*.yaml"):
        if source.name not in {"objectstore.yaml", "config.yaml"}:
            shutil.copy(source, folder / source.name)
    (folder / "objectstore.yaml").write_text(yaml.safe_dump(s3_component(endpoint), sort_keys=False))
    return folder


def start_moto(stack: LocalStack, port: int) -> None:
    layout = stack.layout
    pid = spawn(
        "moto",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        logs=layout.logs,
        pids=layout.pids,
        cwd=stack.state,
        env=dict(os.environ),
    )
    wait_until(
        "moto S3 server",
        lambda: http_ok(f"http://127.0.0.1:{port}/moto-api/"),
        timeout=60,
        pid=pid,
        log=layout.logs / "moto.log",
    )


def start_sidecar(stack: LocalStack, resources: Path) -> None:
    """A bare daprd for the publisher (no app, no actors) on the S3 resources."""
    layout = stack.layout
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGMETA_", "AWS_"))}
    # The component's keys are the only credentials the SDK may find; never an instance metadata service.
    env.update(PGMETA_REDIS_HOST=f"127.0.0.1:{layout.redis_port}", AWS_EC2_METADATA_DISABLED="true")
    pid = spawn(
        f"{SERVICE}-daprd",
        stack.daprd_argv(SERVICE, with_app=False, resources=resources, control_plane=False),
        logs=layout.logs,
        pids=layout.pids,
        cwd=stack.state,
        env=env,
    )
    stack.wait_for_service(SERVICE, None, pid)


@pytest.fixture(scope="module")
def s3_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Sidecar]:
    if not (dapr_bin_dir() / "daprd").exists():
        pytest.fail(f"daprd missing in {dapr_bin_dir()}: run `make dapr` first")
    if importlib.util.find_spec("moto") is None:
        pytest.fail("moto is not installed: `moto[server]` belongs in the dev dependency group (uv sync)")
    state = tmp_path_factory.mktemp("objectstore-s3")
    stack = LocalStack(StackLayout(free_port_block(30000), state))
    moto_port = stack.layout.base_port + MOTO_PORT_OFFSET
    endpoint = f"http://127.0.0.1:{moto_port}"
    try:
        stack.write_secretstore()
        stack.start_redis()
        start_moto(stack, moto_port)
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        start_sidecar(stack, write_resources(state / "resources", endpoint))
        platform = DaprPlatform(
            DaprSettings(
                dapr_grpc_port=stack.layout.dapr_grpc_port(SERVICE),
                dapr_http_port=stack.layout.dapr_http_port(SERVICE),
                dapr_api_token=SecretStr(stack.dapr_api_token()),
            )
        )
        try:
            yield S3Sidecar(platform=platform, endpoint=endpoint)
        finally:
            platform.close()
    finally:
        started = [int(path.read_text()) for path in stack.layout.pids.glob("*.pid")]
        stop(stack.layout.pids, "moto")
        stack.down()
        survivors = [pid for pid in started if alive(pid)]
        assert not survivors, f"processes still running after the test: {survivors}"


CASES = [pytest.param(f"default/postgres/1/run-1/{case.id}.bin", *case.values, id=case.id) for case in OBJECT_CASES]


@pytest.mark.parametrize(("key", "content"), CASES)
def test_object_lands_under_the_exact_key_with_the_exact_bytes(s3_sidecar: S3Sidecar, key: str, content: bytes) -> None:
    s3_sidecar.platform.write_object("objectstore", key, content)

    s3 = s3_sidecar.s3()
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=key)
    assert [entry["Key"] for entry in listed.get("Contents", [])] == [key]
    stored = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert len(stored) == len(content)
    assert stored == content


def test_rewriting_an_object_replaces_it(s3_sidecar: S3Sidecar) -> None:
    # A redelivered publish.requested writes the same files again: the second write must win, whole.
    key = "default/postgres/1/run-2/manifest.json"
    s3_sidecar.platform.write_object("objectstore", key, b'{"files": ["a", "b", "c"]}')
    s3_sidecar.platform.write_object("objectstore", key, b'{"files": []}')
    assert s3_sidecar.s3().get_object(Bucket=BUCKET, Key=key)["Body"].read() == b'{"files": []}'


@pytest.mark.parametrize(
    "content", [b"\x9e\xe9\x65", b"\xd5\xed\x74"], ids=["base64-reads-as-null", "base64-reads-as-1e10"]
)
def test_payloads_whose_base64_reads_as_json(s3_sidecar: S3Sidecar, content: bytes) -> None:
    # bindings.aws.s3 JSON-unquotes the payload before its base64 decode: base64 text that reads as JSON
    # null or a number would be mangled unless DaprPlatform sends the base64 as a JSON string.
    key = f"default/postgres/1/run-3/{content.hex()}.bin"
    s3_sidecar.platform.write_object("objectstore", key, content)
    assert s3_sidecar.s3().get_object(Bucket=BUCKET, Key=key)["Body"].read() == content
