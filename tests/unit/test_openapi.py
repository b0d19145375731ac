"""The public OpenAPI page lists the REST API only, not the routes Dapr's sidecar calls."""

from fastapi.routing import APIRoute

from pgmeta_orchestrator.app import create_app
from pgmeta_orchestrator.settings import OrchestratorSettings


def test_openapi_hides_the_dapr_routes_but_they_still_answer() -> None:
    app = create_app(OrchestratorSettings())
    paths = set(app.openapi()["paths"])
    assert "/runs" in paths and "/preflight" in paths
    internal = [p for p in paths if p.startswith(("/events/", "/dapr/"))]
    assert not internal, internal
    routes = {route.path for route in app.routes if isinstance(route, APIRoute)}
    assert "/dapr/subscribe" in routes and "/events/pubsub/extraction.requested" in routes
