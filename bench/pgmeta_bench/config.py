"""One benchmark invocation's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pgmeta_bench.catalog import CatalogShape
from pgmeta_bench.common import DEFAULT_BASE_PORT


@dataclass
class BenchConfig:
    shape: CatalogShape
    repeat: int
    datahub: bool
    cache_dir: Path
    output: Path | None
    base_port: int = DEFAULT_BASE_PORT
    stage_timeout: int = 3600
    timeout: float = 4 * 3600
    keep_state: bool = False
    rerun: bool = False  # incremental re-runs against a full run instead of the comparison with DataHub
    telemetry_pairs: int = 0  # --telemetry-ab: on/off pairs instead of the comparison
