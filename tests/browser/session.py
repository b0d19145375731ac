"""How the browser tests reach the stack's API and sign in to the console: the one place that knows the
token and the headers, so that a change to the API's authentication is a change here only."""

from __future__ import annotations

from typing import Any

import httpx

from pgmeta_devstack.stack import LocalStack
from tests.plugins.servers import api_headers

__all__ = ["api_client", "api_headers", "open_sign_in", "sign_in", "submit_token"]


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
