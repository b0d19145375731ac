"""schemathesis against the orchestrator's OpenAPI spec, with an admin token: no input gives a 5xx."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.unit.api_harness import Api


def test_no_input_gives_a_server_error(api: Api) -> None:
    # From the served spec (from_asgi would start the app's lifespan and look for a sidecar).
    schema = schemathesis.openapi.from_dict(api.client.get("/openapi.json").json())
    headers = {"Authorization": f"Bearer {api.tokens['admin']}"}
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err would raise here: a broken spec fails the test

        @given(case=operation.as_strategy())
        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_server_error(case: Any) -> None:
            response = api.client.request(**case.as_transport_kwargs(base_url="http://testserver", headers=headers))
            assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])

        no_server_error()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert len(checked) >= 15, checked
