"""The Dapr policies in the components match the topic registry, and deny what nobody needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pgmeta_shared.dapr_policy import publishing_scopes, subscription_scopes
from pgmeta_shared.events import TOPICS, ServiceName, TopicName

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "components"
CHART = ROOT / "deploy" / "k8s" / "pgmeta.yaml"  # the rendered chart (`make manifests`; tests/k8s checks drift)


def _local(name: str) -> dict[str, Any]:
    file = "config" if name == "pgmeta" else name  # the local Configuration `pgmeta` is config.yaml
    document: dict[str, Any] = yaml.safe_load((LOCAL / f"{file}.yaml").read_text())
    return document


def _chart(kind: str, name: str) -> dict[str, Any]:
    for document in yaml.safe_load_all(CHART.read_text()):
        if document and document["kind"] == kind and document["metadata"]["name"] == name:
            found: dict[str, Any] = document
            return found
    raise AssertionError(f"the rendered chart has no {kind} {name}")


def _documents(kind: str, name: str) -> dict[str, dict[str, Any]]:
    return {"components": _local(name), "chart": _chart(kind, name)}


def _metadata(document: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value") for item in document["spec"]["metadata"]}


def _parse(scopes: str) -> dict[str, set[str]]:
    return {app: set(topics.split(",")) for app, topics in (part.split("=") for part in scopes.split(";"))}


@pytest.mark.parametrize("where", ["components", "chart"])
def test_pubsub_scopes_are_the_registrys(where: str) -> None:
    metadata = _metadata(_documents("Component", "pubsub")[where])
    assert metadata["publishingScopes"] == publishing_scopes()
    assert metadata["subscriptionScopes"] == subscription_scopes()


def test_each_app_publishes_only_its_own_topics() -> None:
    publishing = _parse(publishing_scopes())
    subscribing = _parse(subscription_scopes())
    assert {app for app, topics in publishing.items() if "publish.completed" in topics} == {"publisher"}
    assert {app for app, topics in publishing.items() if "publish.requested" in topics} == {"orchestrator"}
    for topic in TOPICS:
        if topic.name is TopicName.DEAD_LETTER:
            continue
        consumers = {c.value for c in topic.consumers if c is not ServiceName.USER}
        assert {app for app, topics in subscribing.items() if topic.name.value in topics} == consumers


APP_CONFIGURATIONS = [("components", "pgmeta", "envstore")] + [
    ("chart", f"pgmeta-{service.value}", "kubernetes") for service in ServiceName if service is not ServiceName.USER
]


@pytest.mark.parametrize(("where", "name", "infrastructure_store"), APP_CONFIGURATIONS)
def test_service_invocation_and_the_infrastructure_secrets_are_denied(
    where: str, name: str, infrastructure_store: str
) -> None:
    """Locally one Configuration for every sidecar; in the chart one per app (the secrets each may read)."""
    spec = (_local(name) if where == "components" else _chart("Configuration", name))["spec"]
    assert spec["accessControl"]["defaultAction"] == "deny"
    assert spec["accessControl"].get("policies") in (None, [])
    scopes = {s["storeName"]: s for s in spec["secrets"]["scopes"]}
    assert scopes[infrastructure_store]["defaultAccess"] == "deny"


@pytest.mark.parametrize("store", ["credentials", "registry"])
def test_credentials_and_registry_have_their_own_key_prefix(store: str) -> None:
    for document in _documents("Component", store).values():
        metadata = {item["name"]: item for item in document["spec"]["metadata"]}
        assert metadata["keyPrefix"]["value"] == "name"
        assert "primaryEncryptionKey" in metadata
    for document in _documents("Component", "registry").values():
        assert document["scopes"] == ["orchestrator"]
