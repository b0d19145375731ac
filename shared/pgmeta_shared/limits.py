"""Request limits every service applies before any parsing: body size, JSON nesting, quiet 422s.

A 101 MB POST once raised the orchestrator's RSS by ~210 MB; a deeply nested JSON body exhausts the parser's
recursion. Both are refused here (413 / 400) while the body streams in. Validation errors never echo what
was submitted (a password in the wrong field would come back in the answer).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32


class BodyLimits:
    """ASGI middleware: 413 beyond ``max_bytes`` (declared or streamed), 400 beyond ``max_depth`` of JSON nesting."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = MAX_BODY_BYTES, max_depth: int = MAX_JSON_DEPTH) -> None:
        self._app = app
        self._max_bytes = max_bytes
        self._max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in {"GET", "HEAD", "OPTIONS", "DELETE"}:
            await self._app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self._max_bytes):
            await _answer(send, 413, f"request body larger than {self._max_bytes} bytes")
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self._max_bytes:
                await _answer(send, 413, f"request body larger than {self._max_bytes} bytes")
                return
        if json_depth(bytes(body)) > self._max_depth:
            await _answer(send, 400, f"JSON nested deeper than {self._max_depth} levels")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self._app(scope, replay, send)


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays/objects in a JSON text (strings skipped), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


async def _answer(send: Send, status: int, detail: str) -> None:
    body = JSONResponse({"detail": detail}).body
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def quiet_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """422 naming where and what is wrong, never the submitted value (``input``) or its context."""
    assert isinstance(exc, RequestValidationError)
    errors: list[dict[str, Any]] = [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg"), "type": error.get("type")}
        for error in exc.errors()
    ]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def apply_request_limits(app: FastAPI) -> None:
    app.add_middleware(BodyLimits)
    app.add_exception_handler(RequestValidationError, quiet_validation_error)
