"""Logging set-up for a service process (kept for existing imports; the set-up lives in ``telemetry``)."""

from __future__ import annotations

from pgmeta_shared.telemetry import configure_logging

__all__ = ["configure_logging"]
