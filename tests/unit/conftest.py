"""Unit-test fixtures shared by several modules."""

from tests.unit.api_harness import api

__all__ = ["api"]
