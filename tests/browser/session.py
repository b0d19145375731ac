"""How the browser tests reach the stack's API and sign in to the console: the one place that knows the
token and the headers, so that a change to the API's authentication is a change here only."""

from __future__ import annotations

from typing import Any

import httpx

from pgmeta_devstack.stack import LocalStack
from tests.plugins.servers import api_headers

__all__ = ["api_client", "api_headers", "create_token", "open_sign_in", "sign_in", "sign_in_as", "submit_token"]


def api_client(stack: LocalStack) -> httpx.Client:
    return httpx.Client(base_url=stack.layout.api_url, headers=api_headers(stack), timeout=30)


def open_sign_in(page: Any, stack: LocalStack) -> None:
    page.goto(f"{stack.layout.api_url}/console")
    page.get_by_role("heading", name="Sign in").wait_for()


def submit_token(page: Any, stack: LocalStack) -> None:
    """On the sign-in page: the token in, and the runs list shown."""
    page.get_by_label("API token").fill(stack.api_token())  # the stack's admin token, as `make up` writes it
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Runs").wait_for()
    assert page.locator("#whoami").inner_text() == "bootstrap-admin · admin"


def sign_in(page: Any, stack: LocalStack) -> None:
    open_sign_in(page, stack)
    submit_token(page, stack)


def create_token(stack: LocalStack, name: str, role: str) -> str:
    """A new API token of ``role``, made by the stack's admin (`pgmeta tokens create`)."""
    with api_client(stack) as client:
        created = client.post("/tokens", json={"name": name, "role": role})
    assert created.status_code == 201, created.text
    token: str = created.json()["token"]
    return token


def sign_in_as(tab: Any, stack: LocalStack, token: str, route: str = "") -> None:
    """A fresh tab signed in with ``token`` (another role than the stack's admin), on the runs list first."""
    tab.set_default_timeout(30_000)
    tab.goto(f"{stack.layout.api_url}/console{route}")
    tab.get_by_label("API token").fill(token)
    tab.get_by_role("button", name="Sign in").click()
    tab.get_by_role("heading", name="Runs").wait_for()
