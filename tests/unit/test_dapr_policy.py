"""The Dapr policies in the components match the topic registry, and deny what nobody needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pgmeta_shared.dapr_policy import publishing_scopes, subscription_scopes
from pgmeta_shared.events import TOPICS, ServiceName, TopicName

ROOT = Path(__file__).resolve().parents[2]
PUBSUB_FILES = [ROOT / "components" / "pubsub.yaml", ROOT / "deploy" / "components" / "pubsub.yaml"]
CONFIG_FILES = [ROOT / "components" / "config.yaml", ROOT / "deploy" / "components" / "config.yaml"]


def _metadata(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    return {item["name"]: item.get("value") for item in document["spec"]["metadata"]}


def _parse(scopes: str) -> dict[str, set[str]]:
    return {app: set(topics.split(",")) for app, topics in (part.split("=") for part in scopes.split(";"))}


@pytest.mark.parametrize("path", PUBSUB_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pubsub_scopes_are_the_registrys(path: Path) -> None:
    metadata = _metadata(path)
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


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_service_invocation_and_the_envstore_are_denied(path: Path) -> None:
    spec = yaml.safe_load(path.read_text())["spec"]
    assert spec["accessControl"]["defaultAction"] == "deny"
    assert spec["accessControl"].get("policies") in (None, [])
    scopes = {s["storeName"]: s for s in spec["secrets"]["scopes"]}
    assert scopes["envstore"]["defaultAccess"] == "deny"


@pytest.mark.parametrize("store", ["credentials", "registry"])
def test_credentials_and_registry_have_their_own_key_prefix(store: str) -> None:
    for root in (ROOT / "components", ROOT / "deploy" / "components"):
        document = yaml.safe_load((root / f"{store}.yaml").read_text())
        metadata = {item["name"]: item.get("value") for item in document["spec"]["metadata"]}
        assert metadata["keyPrefix"] == "name"
        assert "primaryEncryptionKey" in metadata
    registry = yaml.safe_load((ROOT / "components" / "registry.yaml").read_text())
    assert registry["scopes"] == ["orchestrator"]
