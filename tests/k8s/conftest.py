"""The control plane is started once per test session (it takes ~30 s) and stopped after the last test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.k8s.controlplane import ControlPlane, control_plane


@pytest.fixture(scope="session")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with control_plane(tmp_path_factory.mktemp("k8s")) as running:
        yield running
