"""A fake PostgreSQL server on loopback that asks every client for its password in clear, and records it.

It stands in for a server an attacker runs: whatever a client sends after the cleartext request is kept
in ``received`` so a test can assert that nothing (no password) ever arrived.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CLEARTEXT_PASSWORD_REQUEST = b"R" + struct.pack("!ii", 8, 3)


class FakePostgres:
    def __init__(self, reply: bytes = CLEARTEXT_PASSWORD_REQUEST) -> None:
        self._reply = reply
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _read_startup(self, conn: socket.socket) -> bool:
        while True:
            header = conn.recv(8, socket.MSG_WAITALL)
            if len(header) < 8:
                return False
            length, code = struct.unpack("!ii", header)
            conn.recv(max(0, length - 8), socket.MSG_WAITALL)
            if code in {SSL_REQUEST, GSSENC_REQUEST}:
                conn.sendall(b"N")  # no TLS: the password would travel in clear
                continue
            return True

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                self.connections += 1
                conn.settimeout(1)
                data = b""
                try:
                    if not self._read_startup(conn):
                        continue
                    conn.sendall(self._reply)
                    while chunk := conn.recv(4096):
                        data += chunk
                except OSError:
                    pass  # a client waiting for our answer: what it sent so far is what counts
                self.received.append(data)

    def start(self) -> FakePostgres:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()


@contextmanager
def fake_postgres(reply: bytes = CLEARTEXT_PASSWORD_REQUEST) -> Iterator[FakePostgres]:
    server = FakePostgres(reply).start()
    try:
        yield server
    finally:
        server.stop()
