"""Registered connections, and what a request may name: a stored credential only through its connection.

A connection (registered by an admin) binds a server (host, port, databases, user, TLS, auth method) to a
secret-store entry and to its Atlan connection qualifiedName, which the server derives from the name.
A run names a connection; or, ad hoc, a source with an inline password, to hosts the allowlist admits.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from pgmeta_shared.errors import InvalidRequestError
from pgmeta_shared.events import CredentialRef, FilterSpec, SourceSpec
from pgmeta_shared.keys import CONNECTIONS_INDEX_KEY, connection_key
from pgmeta_shared.naming import default_connection_qualified_name
from pgmeta_shared.platform import StateStore

# A letter first: an ad-hoc source's derived qualifiedName is all digits, so the two can never meet.
ConnectionName = Annotated[str, StringConstraints(max_length=63, pattern=r"^[a-z][a-z0-9-]{0,62}$")]
SYSTEM_TRUST_STORE = "system"


class SecretRef(BaseModel):
    """A secret-store entry holding ``password`` (or AWS keys for IAM); never the value itself."""

    model_config = ConfigDict(extra="forbid")

    store: Annotated[str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9._-]{1,64}$")] = "secretstore"
    key: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class ConnectionSpec(BaseModel):
    """What an admin registers (``PUT /connections/{name}``)."""

    model_config = ConfigDict(extra="forbid")

    source: SourceSpec = Field(description="Host, port, database (none: all), user, TLS, auth method, IAM role.")
    secret: SecretRef = Field(description="Where the password (or the AWS keys for IAM) lives.")
    filters: FilterSpec | None = Field(
        default=None, description="The only filters runs of this connection may use; none: runs choose their own."
    )


class Connection(ConnectionSpec):
    name: ConnectionName
    qualified_name: str = Field(description="Atlan connection qualifiedName, derived from the name.")
    created_by: str
    updated_by: str
    updated_at: str


class ConnectionSummary(BaseModel):
    """What an operator sees to pick a connection: no secret reference."""

    name: str
    host: str
    port: int
    database: str | None
    username: str
    qualified_name: str


@dataclass(frozen=True)
class ResolvedSource:
    """A request's source after the access checks: what the run's events carry."""

    source: SourceSpec
    secret: CredentialRef | None  # a registered connection's secret; None: an inline password
    connection_qualified_name: str
    filters: FilterSpec
    connection: str | None

    @property
    def target(self) -> str:
        """For the audit trail: the connection, or host:port/database as user."""
        where = f"{self.source.host}:{self.source.port}/{self.source.database or '*'} as {self.source.username}"
        return f"connection {self.connection} ({where})" if self.connection else where


def connection_qualified_name(name: str) -> str:
    return f"default/postgres/{name}"


class ConnectionStore:
    def __init__(self, state: StateStore, store: str) -> None:
        self._state = state
        self._store = store

    def put(self, name: str, spec: ConnectionSpec, by: str) -> tuple[Connection, bool]:
        """Creates or changes a connection; True when it is new."""
        existing = self.get(name)
        connection = Connection(
            **spec.model_dump(),
            name=name,
            qualified_name=connection_qualified_name(name),
            created_by=existing.created_by if existing else by,
            updated_by=by,
            updated_at=datetime.now(UTC).isoformat(),
        )
        self._state.save_state_json(self._store, connection_key(name), connection.model_dump(mode="json"))
        index = set(self._state.get_state_json(self._store, CONNECTIONS_INDEX_KEY) or [])
        self._state.save_state_json(self._store, CONNECTIONS_INDEX_KEY, sorted(index | {name}))
        return connection, existing is None

    def get(self, name: str) -> Connection | None:
        record = self._state.get_state_json(self._store, connection_key(name))
        return Connection.model_validate(record) if record is not None else None

    def list(self) -> list[ConnectionSummary]:
        found = []
        for name in self._state.get_state_json(self._store, CONNECTIONS_INDEX_KEY) or []:
            connection = self.get(name)
            if connection is not None:
                source = connection.source
                found.append(
                    ConnectionSummary(
                        name=name,
                        host=source.host,
                        port=source.port,
                        database=source.database,
                        username=source.username,
                        qualified_name=connection.qualified_name,
                    )
                )
        return found

    def delete(self, name: str) -> bool:
        if self.get(name) is None:
            return False
        self._state.delete_state(self._store, connection_key(name))
        index = self._state.get_state_json(self._store, CONNECTIONS_INDEX_KEY) or []
        self._state.save_state_json(self._store, CONNECTIONS_INDEX_KEY, [n for n in index if n != name])
        return True


class SourcePolicy:
    """Decides what a request may reach: registered connections as registered, ad-hoc hosts by allowlist."""

    def __init__(self, connections: ConnectionStore, adhoc_allowed_hosts: list[str], sslrootcert_dir: Path | None):
        self._connections = connections
        self._allowed = adhoc_allowed_hosts
        self._sslrootcert_dir = sslrootcert_dir

    def resolve(
        self,
        *,
        connection: str | None,
        source: SourceSpec | None,
        database: str | None,
        filters: FilterSpec | None,
    ) -> ResolvedSource:
        if connection is not None:
            registered = self._connections.get(connection)
            if registered is None:
                raise InvalidRequestError(f"no connection named {connection!r}", hint="GET /connections lists them")
            resolved_source = registered.source
            if database is not None and database != resolved_source.database:
                if resolved_source.database is not None:
                    raise InvalidRequestError(
                        f"connection {connection!r} is registered for database {resolved_source.database!r} only"
                    )
                resolved_source = resolved_source.model_copy(update={"database": database})
            if registered.filters is not None and filters is not None and filters != registered.filters:
                raise InvalidRequestError(f"connection {connection!r} fixes its filters; leave 'filters' out")
            return ResolvedSource(
                source=self.check_sslrootcert(resolved_source),
                secret=CredentialRef(kind="secret", store=registered.secret.store, key=registered.secret.key),
                connection_qualified_name=registered.qualified_name,
                filters=registered.filters or filters or FilterSpec(),
                connection=connection,
            )
        assert source is not None
        if database is not None:
            source = source.model_copy(update={"database": database})
        if not host_allowed(source.host, self._allowed):
            raise InvalidRequestError(
                f"ad-hoc sources on {source.host!r} are not allowed",
                hint="ask an admin to register a connection, or to add the host to PGMETA_ADHOC_ALLOWED_HOSTS",
            )
        return ResolvedSource(
            source=self.check_sslrootcert(source),
            secret=None,
            connection_qualified_name=default_connection_qualified_name(source.host, source.port),
            filters=filters or FilterSpec(),
            connection=None,
        )

    def check_sslrootcert(self, source: SourceSpec) -> SourceSpec:
        """A CA bundle only from the configured directory (the extractor is no file prober), as a full path."""
        path = source.sslrootcert
        if path is None or path == SYSTEM_TRUST_STORE:
            return source
        root = self._sslrootcert_dir
        if root is None:
            raise InvalidRequestError(
                "sslrootcert files are not enabled", hint="set PGMETA_SSLROOTCERT_DIR, or use sslrootcert 'system'"
            )
        resolved = os.path.normpath(os.path.join(root, path))
        if os.path.commonpath([resolved, os.path.normpath(root)]) != os.path.normpath(root):
            raise InvalidRequestError(f"sslrootcert must name a file in {str(root)!r}")
        return source.model_copy(update={"sslrootcert": resolved})


def host_allowed(host: str, patterns: list[str]) -> bool:
    """``*``, a host pattern (``*.db.internal``) or a CIDR (every address the host resolves to inside it)."""
    for pattern in patterns:
        if pattern == "*":
            return True
        try:
            network = ipaddress.ip_network(pattern, strict=False)
        except ValueError:
            if fnmatch.fnmatchcase(host.lower(), pattern.lower()):
                return True
            continue
        addresses = _addresses(host)
        if addresses and all(address in network for address in addresses):
            return True
    return False


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return [ipaddress.ip_address(info[4][0]) for info in infos]
