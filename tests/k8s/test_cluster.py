"""The chart and deploy/k8s/pgmeta.yaml against a real API server: accepted without warnings, Dapr and KEDA
objects valid against their CRDs, sidecars injected by Dapr's real injector webhook, pods scheduled on kwok
nodes and Ready, `helm upgrade` rolls the Deployments, `helm uninstall` leaves nothing. Containers are not run:
kwok plays the kubelet, so a pod is Ready once it is scheduled."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.k8s.checks import (
    CHART,
    MANIFEST,
    SERVICES,
    STAGES,
    chart_values,
    component_summary,
    load_documents,
    pod_ready_problems,
    sidecar_problems,
)
from tests.k8s.controlplane import K8S_BIN, KWOK_NODES, ControlPlane, ControlPlaneError, wait_for

pytestmark = pytest.mark.k8s

RELEASE_NAMESPACE = "pgmeta-helm"
APPLY_NAMESPACE = "pgmeta"  # the namespace deploy/k8s/pgmeta.yaml is rendered for
KWOK_NODE_NAMES = {name for name, _ in KWOK_NODES}
# Everything the chart can create, for "nothing left behind".
KINDS = (
    "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets,"
    "horizontalpodautoscalers,components.dapr.io,configurations.dapr.io,resiliencies.dapr.io,"
    "scaledobjects.keda.sh,triggerauthentications.keda.sh"
)
EXPECTED_SCOPES = {
    "pubsub": set(SERVICES),
    "workflowstate": {"orchestrator"},
    "artifacts": set(SERVICES),
    "credentials": {"orchestrator", "extractor"},
    "registry": {"orchestrator"},  # API tokens and registered connections
    "objectstore": {
        "publisher",
        "orchestrator",
    },  # the orchestrator reads runs (console) and deletes old ones (retention)
    "secretstore": {"extractor", "publisher"},
}


def dry_run(plane: ControlPlane, namespace: str, manifest: str) -> tuple[int, str]:
    """Server-side apply, dry run, strict field validation: what `kubectl apply --server-side` would do."""
    result = plane.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--validate=strict",
        "--field-manager=pgmeta-test",
        "-n",
        namespace,
        "-f",
        "-",
        stdin=manifest,
    )
    return result.returncode, result.stderr


def render(*args: str, namespace: str = RELEASE_NAMESPACE) -> str:
    return subprocess.run(
        [str(K8S_BIN / "helm"), "template", "pgmeta", str(CHART), "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def ensure_namespace(plane: ControlPlane, namespace: str) -> None:
    if plane.kubectl("get", "namespace", namespace).returncode != 0:
        plane.must(plane.kubectl("create", "namespace", namespace))


def pods_of(plane: ControlPlane, namespace: str, service: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/component={service}"
    pods: list[dict[str, Any]] = plane.get_json("pods", "-n", namespace, "-l", selector)["items"]
    return [pod for pod in pods if "deletionTimestamp" not in pod["metadata"]]


def wait_rolled_out(plane: ControlPlane, namespace: str) -> None:
    for service in SERVICES:
        name = f"deployment/pgmeta-{service}"
        plane.must(plane.kubectl("rollout", "status", name, "-n", namespace, "--timeout=120s"))


def deployment_problems(plane: ControlPlane, namespace: str) -> list[str]:
    values = chart_values()
    problems = []
    for service in SERVICES:
        pods = pods_of(plane, namespace, service)
        if not pods:
            problems.append(f"{service}: no pods")
        for pod in pods:
            problems += sidecar_problems(pod, service, f"{values['dapr']['config']}-{service}", values["appPort"])
            problems += pod_ready_problems(pod, KWOK_NODE_NAMES)
    return problems


def leftovers(plane: ControlPlane, namespace: str, selector: str) -> list[str]:
    result = plane.kubectl("get", KINDS, "-n", namespace, "-l", selector, "-o", "name")
    return [line for line in plane.must(result).splitlines() if line.strip()]


def wait_nothing_left(plane: ControlPlane, namespace: str, selector: str) -> None:
    try:
        wait_for(f"nothing left in {namespace}", lambda: not leftovers(plane, namespace, selector), 90)
    except ControlPlaneError:
        pytest.fail(f"left behind in {namespace}: {leftovers(plane, namespace, selector)}")


def test_control_plane_runs_dapr_injector_and_kwok_nodes(plane: ControlPlane) -> None:
    webhook = plane.get_json("mutatingwebhookconfiguration", "dapr-sidecar-injector")
    assert webhook["webhooks"][0]["clientConfig"]["caBundle"], "the injector patches its CA bundle in"
    nodes = plane.get_json("nodes")["items"]
    assert {node["metadata"]["name"] for node in nodes} == KWOK_NODE_NAMES
    crds = {crd["metadata"]["name"] for crd in plane.get_json("crds")["items"]}
    assert {"components.dapr.io", "configurations.dapr.io", "resiliencies.dapr.io", "scaledobjects.keda.sh"} <= crds


@pytest.mark.parametrize(
    "values",
    [[], ["--set", "autoscaling.keda.enabled=true"], ["--set", "autoscaling.hpa.enabled=true"]],
    ids=["defaults", "keda", "hpa"],
)
def test_every_chart_object_is_accepted_without_warnings(plane: ControlPlane, values: list[str]) -> None:
    ensure_namespace(plane, RELEASE_NAMESPACE)
    returncode, stderr = dry_run(plane, RELEASE_NAMESPACE, render(*values))
    assert returncode == 0, stderr
    assert [line for line in stderr.splitlines() if "Warning" in line] == []


@pytest.fixture(scope="module")
def release(plane: ControlPlane) -> Iterator[str]:
    """`helm install` of the chart with its default values; the tests below upgrade, then uninstall it."""
    result = plane.helm(
        "install",
        "pgmeta",
        str(CHART),
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "4m",
    )
    assert result.returncode == 0, result.stderr
    assert not result.warnings, result.warnings
    yield "pgmeta"
    plane.helm("uninstall", "pgmeta", "--namespace", RELEASE_NAMESPACE, "--wait")


def test_helm_install_injects_sidecars_and_pods_become_ready(plane: ControlPlane, release: str) -> None:
    wait_rolled_out(plane, RELEASE_NAMESPACE)
    assert deployment_problems(plane, RELEASE_NAMESPACE) == []
    values = chart_values()
    for service in SERVICES:
        assert len(pods_of(plane, RELEASE_NAMESPACE, service)) == values["services"][service]["replicas"]


def test_replicas_spread_over_zones(plane: ControlPlane, release: str) -> None:
    for service in STAGES:
        pods = pods_of(plane, RELEASE_NAMESPACE, service)
        if len(pods) > 1:
            nodes = {pod["spec"]["nodeName"] for pod in pods}
            assert len(nodes) == len(pods), f"{service}: {len(pods)} replicas on {nodes}"


def test_dapr_resources_are_stored_and_scoped(plane: ControlPlane, release: str) -> None:
    stored = plane.get_json("components.dapr.io", "-n", RELEASE_NAMESPACE)["items"]
    scopes = {name: set(found) for name, (_, found) in component_summary(stored).items()}
    assert scopes == EXPECTED_SCOPES
    for service in SERVICES:  # one Configuration per app: the secrets each may read
        name = f"{chart_values()['dapr']['config']}-{service}"
        configuration = plane.get_json("configurations.dapr.io", name, "-n", RELEASE_NAMESPACE)
        assert configuration["spec"]["metric"]["enabled"] is True
        secret_scopes = {s["storeName"]: s for s in configuration["spec"]["secrets"]["scopes"]}
        assert secret_scopes["secretstore"]["defaultAccess"] == "deny", name
    resiliency = plane.get_json("resiliencies.dapr.io", "pgmeta", "-n", RELEASE_NAMESPACE)
    assert set(resiliency["spec"]["targets"]["components"]) <= set(EXPECTED_SCOPES)


def test_helm_upgrade_rolls_the_deployments(plane: ControlPlane, release: str) -> None:
    before = {s: plane.get_json("deployment", f"pgmeta-{s}", "-n", RELEASE_NAMESPACE) for s in SERVICES}
    result = plane.helm(
        "upgrade",
        release,
        str(CHART),
        "--namespace",
        RELEASE_NAMESPACE,
        "--wait",
        "--timeout",
        "4m",
        "--set",
        "logLevel=DEBUG",
        "--set",
        "autoscaling.keda.enabled=true",
    )
    assert result.returncode == 0, result.stderr
    wait_rolled_out(plane, RELEASE_NAMESPACE)
    for service in SERVICES:
        after = plane.get_json("deployment", f"pgmeta-{service}", "-n", RELEASE_NAMESPACE)
        assert after["metadata"]["generation"] > before[service]["metadata"]["generation"], service
        for pod in pods_of(plane, RELEASE_NAMESPACE, service):
            env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
            assert env["PGMETA_LOG_LEVEL"] == "DEBUG", f"{pod['metadata']['name']} was not replaced"
    assert deployment_problems(plane, RELEASE_NAMESPACE) == []
    scaled = plane.get_json("scaledobjects.keda.sh", "-n", RELEASE_NAMESPACE)["items"]
    assert {s["metadata"]["name"] for s in scaled} == {f"pgmeta-{stage}" for stage in STAGES}


def test_helm_uninstall_leaves_nothing(plane: ControlPlane, release: str) -> None:
    result = plane.helm("uninstall", release, "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "2m")
    assert result.returncode == 0, result.stderr
    wait_nothing_left(plane, RELEASE_NAMESPACE, f"app.kubernetes.io/instance={release}")


def test_kubectl_apply_of_the_rendered_manifest(plane: ControlPlane) -> None:
    ensure_namespace(plane, APPLY_NAMESPACE)
    applied = plane.kubectl("apply", "--server-side", "-n", APPLY_NAMESPACE, "-f", str(MANIFEST))
    assert applied.returncode == 0, applied.stderr
    assert not applied.warnings, applied.warnings
    wait_rolled_out(plane, APPLY_NAMESPACE)
    assert deployment_problems(plane, APPLY_NAMESPACE) == []
    deleted = plane.kubectl("delete", "-n", APPLY_NAMESPACE, "-f", str(MANIFEST), "--wait")
    assert deleted.returncode == 0, deleted.stderr
    wait_nothing_left(plane, APPLY_NAMESPACE, "app.kubernetes.io/part-of=pgmeta")


# Negative tests: each breaks the manifest in one way and shows the check that catches it.


def break_document(manifest: str, kind: str, name: str, change: Any) -> str:
    documents = load_documents(manifest)
    target = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert target, f"no {kind} {name}"
    change(target[0])
    return "---\n".join(yaml.safe_dump(doc) for doc in documents)


def test_an_invalid_field_is_rejected(plane: ControlPlane) -> None:
    ensure_namespace(plane, RELEASE_NAMESPACE)

    def misspell_replicas(deployment: dict[str, Any]) -> None:
        deployment["spec"]["replica"] = deployment["spec"].pop("replicas")

    returncode, stderr = dry_run(
        plane, RELEASE_NAMESPACE, break_document(render(), "Deployment", "pgmeta-extractor", misspell_replicas)
    )
    assert returncode != 0
    assert ".spec.replica: field not declared in schema" in stderr, stderr


@pytest.mark.parametrize(
    ("kind", "name", "field", "breakage"),
    [
        ("Component", "pubsub", "spec.metadata[0].valeu", lambda doc: doc["spec"]["metadata"][0].update(valeu="x")),
        ("Component", "artifacts", "scopes", lambda doc: doc.update(scopes="orchestrator")),
        ("Resiliency", "pgmeta", "spec.policies.retries", lambda doc: doc["spec"]["policies"].update(retries=["x"])),
        (
            "ScaledObject",
            "pgmeta-extractor",
            "spec.minReplicaCount",
            lambda doc: doc["spec"].update(minReplicaCount="one"),
        ),
    ],
    ids=["component-unknown-field", "component-scopes-not-a-list", "resiliency-wrong-type", "scaledobject-wrong-type"],
)
def test_a_wrong_crd_field_is_rejected(plane: ControlPlane, kind: str, name: str, field: str, breakage: Any) -> None:
    ensure_namespace(plane, RELEASE_NAMESPACE)
    manifest = break_document(render("--set", "autoscaling.keda.enabled=true"), kind, name, breakage)
    returncode, stderr = dry_run(plane, RELEASE_NAMESPACE, manifest)
    assert returncode != 0, f"{kind} {name} with a broken {field} was accepted"
    assert field.split("[")[0].split(".")[-1] in stderr, stderr


def test_a_missing_dapr_annotation_is_caught(plane: ControlPlane) -> None:
    """Without dapr.io/enabled the injector leaves the pod alone: valid Kubernetes, a broken pgmeta."""
    namespace = "pgmeta-broken"
    ensure_namespace(plane, namespace)

    def drop_enabled(deployment: dict[str, Any]) -> None:
        del deployment["spec"]["template"]["metadata"]["annotations"]["dapr.io/enabled"]

    manifest = break_document(render(namespace=namespace), "Deployment", "pgmeta-publisher", drop_enabled)
    plane.must(plane.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", stdin=manifest))
    try:
        plane.must(plane.kubectl("rollout", "status", "deployment/pgmeta-publisher", "-n", namespace, "--timeout=120s"))
        problems = deployment_problems(plane, namespace)
        assert problems, "a pod without its sidecar passed the checks"
        assert all(p.startswith("pgmeta-publisher-") and "no daprd sidecar" in p for p in problems), problems
    finally:
        plane.kubectl("delete", "namespace", namespace, "--wait=false")
