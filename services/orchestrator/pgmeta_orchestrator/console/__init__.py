"""The web console: a page served by the orchestrator under /console, and the read routes it needs."""

from pgmeta_orchestrator.console.routes import console_assets_router, console_router, include_console

__all__ = ["console_assets_router", "console_router", "include_console"]
