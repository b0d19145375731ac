"""Where everything of one local stack lives: one port block and one state directory."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

SERVICES = ("orchestrator", "extractor", "transformer", "publisher")
DEFAULT_BASE_PORT = 18000
ENDPOINTS_FILE = "endpoints.json"


def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def dapr_bin_dir() -> Path:
    return Path(os.environ.get("DAPR_BIN", Path.home() / ".dapr" / "bin"))


@dataclass(frozen=True)
class StackLayout:
    """Ports are offsets from ``base_port``, so two stacks (say ``make up`` and the tests) never collide."""

    base_port: int
    state_dir: Path

    @classmethod
    def default(cls) -> StackLayout:
        """PGMETA_BASE_PORT, else the port block the running stack recorded (`make status`, `make down`)."""
        state = Path(os.environ.get("PGMETA_STATE_DIR", repo_root() / ".pgmeta" / "stack")).resolve()
        base = os.environ.get("PGMETA_BASE_PORT")
        if base is None:
            return cls(recorded_base_port(state) or DEFAULT_BASE_PORT, state)
        return cls(int(base), state)

    def _index(self, service: str) -> int:
        return SERVICES.index(service)

    def app_port(self, service: str) -> int:
        return self.base_port + self._index(service)

    def dapr_http_port(self, service: str) -> int:
        return self.base_port + 10 + self._index(service)

    def dapr_grpc_port(self, service: str) -> int:
        return self.base_port + 20 + self._index(service)

    def dapr_metrics_port(self, service: str) -> int:
        return self.base_port + 30 + self._index(service)

    def dapr_internal_grpc_port(self, service: str) -> int:
        return self.base_port + 50 + self._index(service)

    @property
    def redis_port(self) -> int:
        return self.base_port + 40

    @property
    def postgres_port(self) -> int:
        return self.base_port + 41

    @property
    def placement_port(self) -> int:
        return self.base_port + 42

    @property
    def scheduler_port(self) -> int:
        return self.base_port + 45

    def app_metrics_port(self, service: str) -> int:
        """The service's Prometheus scrape port (``/metrics``), apart from the app port the API is served on."""
        return self.base_port + 70 + self._index(service)

    @property
    def zipkin_port(self) -> int:
        return self.base_port + 80

    @property
    def zipkin_url(self) -> str:
        return f"http://127.0.0.1:{self.zipkin_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port('orchestrator')}"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pids(self) -> Path:
        return self.state_dir / "pids"

    @property
    def objects(self) -> Path:
        return self.state_dir / "objects"

    @property
    def endpoints_file(self) -> Path:
        """Read by the CLI (pgmeta_cli/endpoints.py) to find this stack; removed by `make down`."""
        return self.state_dir / ENDPOINTS_FILE

    def write_endpoints(self) -> None:
        self.endpoints_file.write_text(
            json.dumps(
                {
                    "base_port": self.base_port,
                    "api_url": self.api_url,
                    "dapr_http_url": f"http://127.0.0.1:{self.dapr_http_port('orchestrator')}",
                    "zipkin_url": self.zipkin_url,
                },
                indent=2,
            )
        )

    def describe(self) -> list[tuple[str, str]]:
        rows = [
            ("REST API (orchestrator)", self.api_url),
            ("redis (pub/sub, state, workflow state)", f"127.0.0.1:{self.redis_port}"),
            ("demo PostgreSQL", f"127.0.0.1:{self.postgres_port}"),
            ("dapr placement", f"127.0.0.1:{self.placement_port}"),
            ("dapr scheduler", f"127.0.0.1:{self.scheduler_port}"),
        ]
        for service in SERVICES:
            rows.append(
                (
                    f"{service}: app / daprd http / grpc / metrics",
                    f"{self.app_port(service)} / {self.dapr_http_port(service)} / {self.dapr_grpc_port(service)}"
                    f" / {self.dapr_metrics_port(service)}",
                )
            )
        rows.append(("trace viewer (Zipkin)", f"{self.zipkin_url}/zipkin/"))
        rows.append(
            ("metrics (/metrics): apps", " / ".join(str(self.app_metrics_port(service)) for service in SERVICES))
        )
        rows.append(
            ("metrics (/metrics): sidecars", " / ".join(str(self.dapr_metrics_port(service)) for service in SERVICES))
        )
        rows.append(("logs", str(self.logs)))
        rows.append(("published entities", str(self.objects)))
        return rows


def recorded_base_port(state_dir: Path) -> int | None:
    """The base port a running stack wrote into its state directory, if any."""
    try:
        base = json.loads((state_dir / ENDPOINTS_FILE).read_text())["base_port"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return base if isinstance(base, int) else None


def free_port_block(start: int, size: int = 100, attempts: int = 50) -> int:
    """The first base port from ``start`` (in steps of ``size``) whose whole block can be bound on loopback.

    Binding (not connecting) also catches ports taken by other programs' outgoing connections; keep blocks
    below Linux's ephemeral range (32768+), where such ports come and go.
    """
    import socket

    for base in range(start, start + size * attempts, size):
        ports_free = True
        for port in range(base, base + size):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ports_free = False
                    break
        if ports_free:
            return base
    raise RuntimeError(f"no free block of {size} ports from {start}")
