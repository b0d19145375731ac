"""What every part of the benchmark shares: its error, its voice, its fixed names and targets."""

from __future__ import annotations

BENCH_DATABASE = "bench"
BENCH_SECRET = "bench-postgres"
BENCH_CONNECTION = "bench"  # registered in the bench's stack, as a user registers a source
# Bumped whenever the generated catalog changes, so that a cached cluster built by older code is rebuilt.
CATALOG_VERSION = 1
DATAHUB_SPEC = "acryl-datahub[postgres]==1.7.0.17"

# Targets from the project's issue: printed next to the numbers, never a reason to fail.
DATAHUB_SPEEDUP_TARGET = 20.0
FLOOR_RATIO_TARGET = 1.7
SERVICE_RSS_TARGET_MB = 200.0

# Below Linux's ephemeral range (32768-60999): there, a client socket of any process can hold a port of the
# block between the free-port check and daprd's bind (seen: "bind: address already in use" on 38050).
DEFAULT_BASE_PORT = 26000

# Each stage is a command topic and a result topic; with fan-out a stage has one pair per work unit.
# Preflight is optional, so the harness also measures pgmeta versions that have none.
PIPELINE_STAGES = ("preflight", "extract", "transform", "publish")
REQUIRED_STAGES = ("extract", "transform", "publish")
USER_SCHEMA_FILTER = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"


class BenchError(RuntimeError):
    """The benchmark cannot produce a trustworthy number: a run failed, or pgmeta's counts are wrong."""


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)
