"""What a correctly deployed pgmeta looks like to the API server: each check returns the problems it finds (an
empty list is a pass), so the negative tests can show that a broken manifest is caught."""

from __future__ import annotations

from typing import Any

import yaml

from pgmeta_devstack.layout import repo_root

CHART = repo_root() / "deploy" / "helm" / "pgmeta"
MANIFEST = repo_root() / "deploy" / "k8s" / "pgmeta.yaml"
LOCAL_COMPONENTS = repo_root() / "components"
SERVICES = ("orchestrator", "extractor", "transformer", "publisher")
STAGES = ("extractor", "transformer", "publisher")
# Dapr's defaults, which the chart keeps: the app talks to its sidecar on these.
DAPR_HTTP_PORT = 3500
DAPR_GRPC_PORT = 50001


def load_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def chart_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def flag_values(args: list[str]) -> dict[str, str]:
    """daprd's command line as {flag: value}; ``--flag=value`` and ``--flag value`` both count."""
    flags: dict[str, str] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        if arg.startswith("--"):
            name, sep, value = arg[2:].partition("=")
            if not sep and index + 1 < len(args) and not args[index + 1].startswith("--"):
                value = args[index + 1]
                index += 1
            flags[name] = value
        index += 1
    return flags


def sidecar_problems(pod: dict[str, Any], app_id: str, config: str, app_port: int) -> list[str]:
    """Problems with the daprd container the injector should have added to ``pod``."""
    name = pod["metadata"]["name"]
    spec = pod["spec"]
    containers = spec.get("containers", []) + [
        c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"
    ]
    daprd = [c for c in containers if c["name"] == "daprd"]
    if not daprd:
        return [f"{name}: no daprd sidecar (containers: {[c['name'] for c in containers]})"]
    sidecar = daprd[0]
    settings = flag_values(sidecar.get("args", []))
    settings.update({e["name"]: e.get("value", "") for e in sidecar.get("env", [])})
    problems = []
    expected = {"app-id": app_id, "config": config, "app-port": str(app_port)}
    for flag, value in expected.items():
        env_name = "APP_" + flag.removeprefix("app-").upper().replace("-", "_") if flag.startswith("app-") else ""
        actual = settings.get(flag, settings.get(env_name, settings.get("DAPR_" + flag.upper().replace("-", "_"))))
        if actual != value:
            problems.append(f"{name}: daprd {flag} is {actual!r}, expected {value!r}")
    ports = {port["containerPort"] for port in sidecar.get("ports", [])}
    for port in (DAPR_HTTP_PORT, DAPR_GRPC_PORT):
        if port not in ports:
            problems.append(f"{name}: daprd does not expose port {port} (ports: {sorted(ports)})")
    if "readinessProbe" not in sidecar:
        problems.append(f"{name}: daprd has no readiness probe, so the pod could be Ready before its sidecar")
    return problems


def pod_ready_problems(pod: dict[str, Any], kwok_nodes: set[str]) -> list[str]:
    name = pod["metadata"]["name"]
    node = pod["spec"].get("nodeName")
    if node not in kwok_nodes:
        return [f"{name}: scheduled on {node!r}, not on a kwok node"]
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    if pod.get("status", {}).get("phase") != "Running" or conditions.get("Ready") != "True":
        return [f"{name}: phase {pod.get('status', {}).get('phase')}, Ready={conditions.get('Ready')}"]
    return []


def component_summary(documents: list[dict[str, Any]]) -> dict[str, tuple[str, frozenset[str]]]:
    """{component name: (type, scopes)}; no scopes means every app."""
    return {
        doc["metadata"]["name"]: (doc["spec"]["type"], frozenset(doc.get("scopes") or ()))
        for doc in documents
        if doc.get("kind") == "Component"
    }


def local_documents() -> list[dict[str, Any]]:
    return [doc for path in sorted(LOCAL_COMPONENTS.glob("*.yaml")) for doc in load_documents(path.read_text())]


# What may differ between components/ (a laptop) and the chart (a cluster): the type behind two names, and
# the environment-variable secret store that only the local stack uses for Redis' address.
CLUSTER_TYPES = {"objectstore": "bindings.aws.s3", "secretstore": "secretstores.kubernetes"}
LOCAL_ONLY = {"envstore"}


def app_configuration_prefix(name: str) -> str:
    """``pgmeta-extractor`` → ``pgmeta``: the chart's per-app Configuration names end in their app id."""
    for service in ("orchestrator", "extractor", "transformer", "publisher"):
        if name.endswith(f"-{service}"):
            return name.removesuffix(f"-{service}")
    return name


def component_drift(chart_documents: list[dict[str, Any]], local: list[dict[str, Any]]) -> list[str]:
    """Differences between the chart's Dapr resources and components/ beyond the documented ones."""
    chart_components = component_summary(chart_documents)
    local_components = component_summary(local)
    problems = []
    for name in sorted(set(local_components) - LOCAL_ONLY | set(chart_components)):
        if name not in chart_components:
            problems.append(f"component {name!r} is in components/ but not in the chart")
            continue
        if name not in local_components:
            problems.append(f"component {name!r} is in the chart but not in components/")
            continue
        chart_type, chart_scopes = chart_components[name]
        local_type, local_scopes = local_components[name]
        if chart_type != CLUSTER_TYPES.get(name, local_type):
            problems.append(f"component {name!r}: chart type {chart_type}, components/ type {local_type}")
        if chart_scopes != local_scopes:
            problems.append(
                f"component {name!r}: chart scopes {sorted(chart_scopes)}, components/ {sorted(local_scopes)}"
            )
    for kind in ("Configuration", "Resiliency"):
        # The chart's Configurations are one per app (<name>-<service>: the secrets each may read); a laptop
        # shares one (its secret store holds the user's own, unnamed in advance, secrets).
        chart_names = {
            app_configuration_prefix(d["metadata"]["name"]) if kind == "Configuration" else d["metadata"]["name"]
            for d in chart_documents
            if d.get("kind") == kind
        }
        local_names = {d["metadata"]["name"] for d in local if d.get("kind") == kind}
        if chart_names != local_names:
            problems.append(f"{kind}: chart {sorted(chart_names)}, components/ {sorted(local_names)}")
    chart_resiliency = [d["spec"] for d in chart_documents if d.get("kind") == "Resiliency"]
    local_resiliency = [d["spec"] for d in local if d.get("kind") == "Resiliency"]
    if chart_resiliency != local_resiliency:
        problems.append("Resiliency policies differ between the chart and components/resiliency.yaml")
    return problems
