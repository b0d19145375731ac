"""Oversized and deeply nested bodies are refused before parsing; validation errors never echo input."""

from __future__ import annotations

from collections.abc import Iterator

from pgmeta_shared.limits import MAX_BODY_BYTES, json_depth
from tests.unit.api_harness import RUN, Api


def _operator(api: Api) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.tokens['operator']}"}


def test_a_body_over_one_mebibyte_is_413(api: Api) -> None:
    big = b'{"source": {"host": "' + b"h" * (MAX_BODY_BYTES + 1) + b'"}}'
    response = api.client.post("/runs", content=big, headers=_operator(api) | {"content-type": "application/json"})
    assert response.status_code == 413
    assert api.client.post("/runs", content=big, headers={"content-type": "application/json"}).status_code == 413


def test_a_streamed_body_without_length_is_cut_at_the_limit(api: Api) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    response = api.client.post("/runs", content=chunks(), headers=_operator(api) | {"content-type": "application/json"})
    assert response.status_code == 413


def test_deeply_nested_json_is_400(api: Api) -> None:
    nested = "[" * 10_000 + "]" * 10_000
    body = '{"source": {"host": "h", "username": "u"}, "password": "p", "filters": {"include": {"x": ' + nested + "}}}"
    response = api.client.post("/runs", content=body, headers=_operator(api) | {"content-type": "application/json"})
    assert response.status_code == 400 and "nested" in response.json()["detail"]
    assert json_depth(b'{"a": "[[[[[[", "b": [1, {"c": 2}]}') == 3


def test_validation_errors_never_echo_what_was_submitted(api: Api) -> None:
    secret = "hunter2-do-not-echo"
    body = RUN | {"password": 12345, "sourse": secret, "source": {"host": secret * 20, "username": secret}}
    response = api.client.post("/runs", json=body, headers=_operator(api))
    assert response.status_code == 422
    assert secret not in response.text and "12345" not in response.text
    assert {tuple(e["loc"]) for e in response.json()["detail"]} >= {("body", "sourse")}
    assert all(set(e) == {"loc", "msg", "type"} for e in response.json()["detail"])
