"""The CLI's one HTTP client: JSON over the standard library's ``http.client``, for the few calls it makes.

It replaces httpx, whose import (with the command line it pulls in) was ~0.4 s of every `pgmeta` start, the
largest part of a no-change re-run's CLI time. What the CLI relied on is kept: certificates checked against
SSL_CERT_FILE, SSL_CERT_DIR or certifi's bundle (as httpx did), the proxy environment variables (read only when
one is set), no redirect followed, a timeout per socket operation.
"""

from __future__ import annotations

import http.client
import json as jsonlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

if TYPE_CHECKING:
    import ssl


class HttpError(Exception):
    """A request that got no usable answer."""


class TransportError(HttpError):
    """No answer at all: the connection was refused, reset or timed out, or TLS failed."""


class StatusError(HttpError):
    """An answer outside 2xx, raised by ``Response.raise_for_status``."""

    def __init__(self, response: Response, url: str) -> None:
        super().__init__(f"{response.status_code} from {url}: {response.text[:200]}")
        self.response = response


@dataclass(frozen=True)
class Response:
    status_code: int
    content: bytes
    url: str

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    def raise_for_status(self) -> None:
        if not 200 <= self.status_code < 300:
            raise StatusError(self, self.url)


def _ssl_context() -> ssl.SSLContext:
    """httpx's default: SSL_CERT_FILE, else SSL_CERT_DIR, else certifi's bundle (the system's without certifi)."""
    import ssl

    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _proxy_for(scheme: str, host: str) -> str | None:
    """The proxy URL the environment names for ``scheme://host`` (honouring NO_PROXY), or None."""
    if not any(name.lower().endswith("_proxy") for name in os.environ):
        return None  # the usual case: no urllib.request import (it costs more than http.client)
    from urllib.request import getproxies, proxy_bypass

    proxies = getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy is None or proxy_bypass(host):
        return None
    return proxy


class HttpClient:
    """Requests with a default timeout and headers; one connection per request (the CLI makes a handful)."""

    def __init__(self, timeout: float, headers: Mapping[str, str] | None = None) -> None:
        self.timeout = timeout
        self.headers = dict(headers or {})
        self._ssl: ssl.SSLContext | None = None

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        return None

    def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """One request; an answer of any status is returned, no answer raises TransportError."""
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        sent = {"Accept": "application/json", **self.headers, **(headers or {})}
        body = None
        if json is not None:
            body = jsonlib.dumps(json).encode()
            sent["Content-Type"] = "application/json"
        return self.exchange(method, url, body, sent, self.timeout if timeout is None else timeout)

    def exchange(self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float) -> Response:
        """The request on the wire (the one method that touches the network)."""
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise TransportError(f"not an http(s) URL: {url!r}")
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        proxy = _proxy_for(parts.scheme, parts.hostname)
        connection = self._connection(parts.scheme, parts.hostname, parts.port, proxy, timeout)
        if proxy is not None and parts.scheme == "http":
            target = url  # a plain-HTTP proxy takes the absolute URL; HTTPS goes through a CONNECT tunnel
        try:
            connection.request(method, target, body=body, headers=headers)
            answer = connection.getresponse()
            return Response(answer.status, answer.read(), url)
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, TLS, malformed
            raise TransportError(str(exc) or type(exc).__name__) from exc
        finally:
            connection.close()

    def _connection(
        self, scheme: str, host: str, port: int | None, proxy: str | None, timeout: float
    ) -> http.client.HTTPConnection:
        connect_host, connect_port = host, port
        if proxy is not None:
            via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            connect_host, connect_port = via.hostname or host, via.port
        if scheme == "https":
            if self._ssl is None:
                self._ssl = _ssl_context()
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                connect_host, connect_port, timeout=timeout, context=self._ssl
            )
            if proxy is not None:
                connection.set_tunnel(host, port)
            return connection
        return http.client.HTTPConnection(connect_host, connect_port, timeout=timeout)

    def get(self, url: str, **options: Any) -> Response:
        return self.request("GET", url, **options)

    def post(self, url: str, **options: Any) -> Response:
        return self.request("POST", url, **options)

    def put(self, url: str, **options: Any) -> Response:
        return self.request("PUT", url, **options)

    def delete(self, url: str, **options: Any) -> Response:
        return self.request("DELETE", url, **options)
