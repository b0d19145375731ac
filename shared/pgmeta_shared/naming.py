"""Atlan's qualifiedName scheme for PostgreSQL assets."""

from __future__ import annotations

import hashlib


def default_connection_qualified_name(host: str, port: int) -> str:
    """A connection qualifiedName stable for one server, shaped like Atlan's ``default/postgres/<epoch>``.

    Atlan uses the connection's creation epoch; we have none, so ten digits derived from the server address
    keep later runs of the same server comparable.
    """
    digest = hashlib.sha256(f"{host.strip().lower()}:{port}".encode()).digest()
    return f"default/postgres/{int.from_bytes(digest[:8], 'big') % 10**10:010d}"


def database_qn(connection_qn: str, database: str) -> str:
    return f"{connection_qn}/{database}"


def schema_qn(connection_qn: str, database: str, schema: str) -> str:
    return f"{connection_qn}/{database}/{schema}"


def relation_qn(connection_qn: str, database: str, schema: str, relation: str) -> str:
    return f"{connection_qn}/{database}/{schema}/{relation}"


def column_qn(connection_qn: str, database: str, schema: str, relation: str, column: str) -> str:
    return f"{connection_qn}/{database}/{schema}/{relation}/{column}"
