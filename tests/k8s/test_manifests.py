"""One source for the Kubernetes manifests: deploy/k8s/pgmeta.yaml is the chart rendered by `make manifests`,
and the chart's Dapr resources match components/ (names, types, scopes) but for the documented differences.
Needs only the helm binary (deploy/local/ensure-k8s.sh), no control plane."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from pgmeta_shared.events import TopicName
from tests.k8s.checks import (
    CHART,
    MANIFEST,
    STAGES,
    chart_values,
    component_drift,
    load_documents,
    local_documents,
)
from tests.k8s.controlplane import K8S_BIN

RENDER = CHART.parents[1] / "k8s" / "render.sh"


def helm_template(*args: str) -> list[dict[str, Any]]:
    if not (K8S_BIN / "helm").exists():
        pytest.fail(f"helm missing in {K8S_BIN}: run `make k8s` (deploy/local/ensure-k8s.sh)")
    completed = subprocess.run(
        [str(K8S_BIN / "helm"), "template", "pgmeta", str(CHART), "--namespace", "pgmeta", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return load_documents(completed.stdout)


def test_committed_manifest_is_the_rendered_chart() -> None:
    if not (K8S_BIN / "helm").exists():
        pytest.fail(f"helm missing in {K8S_BIN}: run `make k8s` (deploy/local/ensure-k8s.sh)")
    rendered = subprocess.run(["bash", str(RENDER)], capture_output=True, text=True, check=True).stdout
    assert rendered == MANIFEST.read_text(), "deploy/k8s/pgmeta.yaml is stale: run `make manifests` and commit it"


def test_chart_dapr_resources_match_local_components() -> None:
    assert component_drift(helm_template(), local_documents()) == []


def allowed_secrets(documents: list[dict[str, Any]]) -> dict[str, list[str] | None]:
    """Per app: the secretstore secrets its sidecar may read (None: every one the component can reach)."""
    found: dict[str, list[str] | None] = {}
    for doc in documents:
        if doc.get("kind") == "Configuration":
            scopes = {s["storeName"]: s for s in doc["spec"]["secrets"]["scopes"]}
            store = scopes.get("secretstore", {"defaultAccess": "allow"})
            app = doc["metadata"]["labels"]["app.kubernetes.io/component"]
            found[app] = store.get("allowedSecrets", []) if store["defaultAccess"] == "deny" else None
    return found


def test_each_app_may_read_only_its_own_secrets() -> None:
    """The extractor the sources' secrets (never the Atlan key, even when it is listed for RBAC), the publisher
    the Atlan key when Atlan is on, the others none; nothing by default."""
    assert allowed_secrets(helm_template()) == {
        s: [] for s in ("orchestrator", "extractor", "transformer", "publisher")
    }
    sources = "secretstore.sourceSecretNames={sales-db,hr-db,atlan-api-key}"
    atlan_on = allowed_secrets(helm_template("--set", sources, "--set", "atlan.baseUrl=https://tenant.atlan.com"))
    assert atlan_on == {
        "orchestrator": [],
        "extractor": ["sales-db", "hr-db"],
        "transformer": [],
        "publisher": ["atlan-api-key"],
    }
    assert allowed_secrets(helm_template("--set", sources))["publisher"] == []


def test_component_drift_is_detected() -> None:
    chart = helm_template()
    for doc in chart:
        if doc.get("kind") == "Component" and doc["metadata"]["name"] == "credentials":
            doc["scopes"] = ["orchestrator", "extractor", "publisher"]
    problems = component_drift(chart, local_documents())
    assert problems == [
        "component 'credentials': chart scopes ['extractor', 'orchestrator', 'publisher'], "
        "components/ ['extractor', 'orchestrator']"
    ]


def test_autoscaled_streams_are_topics() -> None:
    topics = {topic.value for topic in TopicName}
    for stage in STAGES:
        streams = chart_values()["services"][stage]["autoscaling"]["streams"]
        assert streams, stage
        assert set(streams) <= topics, f"{stage}: {set(streams) - topics} are not pgmeta topics"


def test_keda_scales_each_stage_on_its_consumer_group_lag() -> None:
    documents = helm_template("--set", "autoscaling.keda.enabled=true")
    scaled = {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == "ScaledObject"}
    assert set(scaled) == {f"pgmeta-{stage}" for stage in STAGES}
    values = chart_values()
    for stage in STAGES:
        spec = scaled[f"pgmeta-{stage}"]["spec"]
        bounds = values["services"][stage]["autoscaling"]
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (bounds["minReplicas"], bounds["maxReplicas"])
        assert spec["scaleTargetRef"]["name"] == f"pgmeta-{stage}"
        triggers = spec["triggers"]
        assert {t["type"] for t in triggers} == {"redis-streams"}
        assert [t["metadata"]["stream"] for t in triggers] == bounds["streams"]
        assert {t["metadata"]["consumerGroup"] for t in triggers} == {stage}, "Dapr's consumer group is the app id"
        assert all(t["authenticationRef"]["name"] == "pgmeta-redis" for t in triggers)
    deployments = {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == "Deployment"}
    for stage in STAGES:
        assert "replicas" not in deployments[f"pgmeta-{stage}"]["spec"], "the autoscaler owns the replica count"
    assert deployments["pgmeta-orchestrator"]["spec"]["replicas"] == 1
    assert not [doc for doc in documents if doc["kind"] == "HorizontalPodAutoscaler"]


def test_hpa_is_the_alternative_without_keda() -> None:
    documents = helm_template("--set", "autoscaling.hpa.enabled=true")
    hpas = {doc["metadata"]["name"]: doc["spec"] for doc in documents if doc["kind"] == "HorizontalPodAutoscaler"}
    assert set(hpas) == {f"pgmeta-{stage}" for stage in STAGES}
    assert all(spec["metrics"][0]["resource"]["name"] == "cpu" for spec in hpas.values())
    assert not [doc for doc in documents if doc["kind"] == "ScaledObject"]


def test_graceful_shutdown_fits_in_the_termination_grace_period() -> None:
    """The app drains while its sidecar still serves it (block-shutdown), and both end before SIGKILL."""
    for doc in helm_template():
        if doc["kind"] != "Deployment":
            continue
        name = doc["metadata"]["name"]
        pod = doc["spec"]["template"]
        annotations = pod["metadata"]["annotations"]
        app = pod["spec"]["containers"][0]
        drain_seconds = float(next(e["value"] for e in app["env"] if e["name"] == "PGMETA_DRAIN_SECONDS"))
        block_seconds = int(annotations["dapr.io/block-shutdown-duration"].removesuffix("s"))
        sidecar_seconds = int(annotations["dapr.io/graceful-shutdown-seconds"])
        assert 0 < drain_seconds < block_seconds, name
        assert block_seconds + sidecar_seconds < pod["spec"]["terminationGracePeriodSeconds"], name
        # The sidecar learns that its app has exited (and ends its block) from the app's liveness endpoint.
        assert annotations["dapr.io/enable-app-health-check"] == "true", name
        assert annotations["dapr.io/app-health-check-path"] == app["livenessProbe"]["httpGet"]["path"], name
        assert app["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert pod["spec"]["topologySpreadConstraints"], doc["metadata"]["name"]


@pytest.mark.parametrize(
    "values",
    [("drainSeconds=30",), ("dapr.gracefulShutdownSeconds=40",), ("terminationGracePeriodSeconds=30",)],
)
def test_the_chart_refuses_shutdown_times_that_do_not_nest(values: tuple[str, ...]) -> None:
    with pytest.raises(subprocess.CalledProcessError) as refused:
        helm_template(*(arg for value in values for arg in ("--set", value)))
    assert "must be below" in refused.value.stderr


def test_every_service_has_a_disruption_budget() -> None:
    documents = helm_template()
    budgets = {
        doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        for doc in documents
        if doc["kind"] == "PodDisruptionBudget"
    }
    assert budgets == {"orchestrator", *STAGES}
