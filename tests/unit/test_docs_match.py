"""What a newcomer reads matches what runs: ports, switches, and how to publish to Atlan."""

from pathlib import Path

import yaml

from pgmeta_devstack.layout import SERVICES, StackLayout

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_port_table_lists_every_port_the_stack_opens() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = StackLayout(18000, ROOT / ".pgmeta" / "stack")
    for service in SERVICES:
        row = next(line for line in readme.splitlines() if line.startswith(f"| {service} app"))
        ports = (layout.app_port(service), layout.dapr_http_port(service), layout.dapr_grpc_port(service))
        for port in (*ports, layout.dapr_metrics_port(service), layout.dapr_internal_grpc_port(service)):
            assert str(port) in row, (service, port, row)
    printed = " ".join(where for _, where in layout.describe())
    assert all(str(layout.dapr_metrics_port(service)) in printed for service in SERVICES)


def test_the_readme_names_the_demo_switch() -> None:
    assert "PGMETA_DEMO_EXIT" in (ROOT / "README.md").read_text()


def test_atlan_publishing_is_documented_for_kubernetes_and_configurable_in_the_chart() -> None:
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    assert "ATLAN_BASE_URL" in deploy and "atlan-api-key" in deploy
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "pgmeta" / "values.yaml").read_text())
    assert values["atlan"] == {"baseUrl": "", "apiKeySecret": "atlan-api-key"}
    template = (ROOT / "deploy" / "helm" / "pgmeta" / "templates" / "deployments.yaml").read_text()
    assert "ATLAN_BASE_URL" in template and "PGMETA_ATLAN_API_KEY_SECRET" in template
