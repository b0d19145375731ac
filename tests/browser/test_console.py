"""The web console in Debian's Chromium against the whole stack: a user's path from sign-in to a comparison.

The steps share one browser page and one stack and run in order (each test builds on the last), like a
user's session. Screenshots of every page land in docs/console/ (docs/console.md shows them).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from pgmeta_devstack.stack import DEMO_DATABASE, LocalStack
from tests.plugins.servers import api_headers

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADDED_COLUMN = "loyalty_tier"


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="pgmeta-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1280, "height": 860},
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(browser_context: Any, full_stack: LocalStack) -> Any:
    page = browser_context.new_page()
    page.set_default_timeout(30_000)
    return page


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def fill_source(page: Any, stack: LocalStack, password: str) -> None:
    page.get_by_label("Host", exact=True).fill("127.0.0.1")
    page.get_by_label("Port", exact=True).fill(str(stack.layout.postgres_port))
    page.get_by_label("Username", exact=True).fill("postgres")
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("Database", exact=False).fill(DEMO_DATABASE)


def new_extraction(page: Any) -> None:
    page.get_by_role("link", name="New extraction").first.click()
    page.get_by_role("heading", name="New extraction").wait_for()


def test_sign_in(page: Any, full_stack: LocalStack) -> None:
    page.goto(f"{full_stack.layout.api_url}/console")
    page.get_by_role("heading", name="Sign in").wait_for()
    shot(page, "sign-in")
    page.get_by_label("API token").fill(full_stack.api_token())  # the stack's admin token, as `make up` writes it
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Runs").wait_for()
    assert page.locator("#whoami").inner_text() == "bootstrap-admin · admin"
    page.get_by_text("No runs yet").wait_for()
    shot(page, "runs-empty")


def test_wrong_password_is_a_clear_error_on_the_form(page: Any, full_stack: LocalStack) -> None:
    new_extraction(page)
    fill_source(page, full_stack, "not-the-password")
    page.get_by_role("button", name="Test connection").click()
    alert = page.locator("#form-message .alert.error")
    alert.wait_for()
    assert "rejected the username or password" in alert.inner_text()
    assert page.get_by_label("Password", exact=True).get_attribute("aria-invalid") == "true"
    assert page.locator('#checks li[data-check="auth"]').get_attribute("data-state") == "failed"
    shot(page, "wrong-password")


def test_connection_checks_pass_and_two_schemas_are_picked(page: Any, full_stack: LocalStack) -> None:
    new_extraction(page)
    fill_source(page, full_stack, full_stack.demo_password())
    page.get_by_role("button", name="Test connection").click()
    page.get_by_role("heading", name="Every check passed").wait_for()
    states = page.locator("#checks li").evaluate_all("items => items.map(i => i.dataset.state)")
    assert states == ["passed"] * 5, states
    page.get_by_label("sales", exact=True).check()
    page.get_by_label("inventory", exact=True).check()
    assert '"shop": [\n      "inventory",\n      "sales"\n    ]' in page.locator("#filter-json").inner_text()
    shot(page, "new-extraction")


def run_and_watch(page: Any, name: str) -> str:
    """Starts the run from the filled form and watches it reach COMPLETED on the same page (no reload)."""
    page.evaluate("window.__noReload = true")
    page.get_by_role("button", name="Run extraction").click()
    page.wait_for_url(re.compile(r".*#/runs/run-[0-9a-f]+$"))
    run_id: str = page.url.rsplit("/", 1)[-1]
    page.locator("#run-status .badge.RUNNING, #run-status .badge.QUEUED, #run-status .badge.COMPLETED").first.wait_for()
    if page.locator("#progress").count():
        shot(page, f"{name}-progress")
    page.locator("#run-status .badge.COMPLETED").wait_for(timeout=120_000)
    assert page.evaluate("window.__noReload") is True, "the page reloaded"
    page.locator("#changes").wait_for()
    shot(page, name)
    return run_id


def test_run_reaches_completed_live(page: Any) -> None:
    run_id = run_and_watch(page, "run")
    counts = page.locator(".stats").first.inner_text()
    assert "Table" in counts and "Column" in counts
    assert page.get_by_role("button", name="Download").count() > 2
    page.get_by_role("link", name="Runs").first.click()
    page.get_by_role("link", name=run_id).wait_for()
    shot(page, "runs")


def test_open_a_table_and_its_columns(page: Any) -> None:
    page.get_by_role("link", name=re.compile(r"run-")).first.click()
    page.get_by_role("link", name="Entities").click()
    page.get_by_label("Search entities").fill("customers")
    page.get_by_label("Type").select_option("Table")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="customers", exact=True).click()
    page.get_by_role("heading", name="customers", exact=True).wait_for()
    children = page.locator("#children").inner_text()
    assert "email" in children and "Column" in children, children
    shot(page, "entity-table")
    page.locator("#children").get_by_role("link", name="email", exact=True).click()
    page.get_by_role("heading", name="email", exact=True).wait_for()
    assert "customers" in page.locator("#attributes").inner_text()


def test_a_view_shows_its_lineage(page: Any) -> None:
    page.get_by_role("link", name="Entities").click()
    page.get_by_label("Type").select_option("View")
    page.get_by_role("link", name="customer_orders", exact=True).click()
    lineage = page.locator("#lineage")
    lineage.wait_for()
    assert "customers" in lineage.inner_text() and "orders" in lineage.inner_text()
    shot(page, "entity-view")


def test_an_altered_table_is_exactly_the_change_in_the_comparison(page: Any, full_stack: LocalStack) -> None:
    with psycopg.connect(**full_stack.postgres.connect_kwargs(DEMO_DATABASE), autocommit=True) as conn:
        conn.execute(f"ALTER TABLE sales.customers ADD COLUMN {ADDED_COLUMN} text")
    new_extraction(page)
    fill_source(page, full_stack, full_stack.demo_password())
    page.get_by_role("button", name="Test connection").click()
    page.get_by_role("heading", name="Every check passed").wait_for()
    page.get_by_label("sales", exact=True).check()
    page.get_by_label("inventory", exact=True).check()
    run_and_watch(page, "run-again")
    page.get_by_role("link", name="Compare").click()
    kinds = page.locator("#compare-kinds")
    kinds.wait_for()
    assert kinds.inner_text().split("\n") == ["Created (1)", "Updated (1)", "Deleted (0)"], kinds.inner_text()
    updated = page.locator("#compare-items").inner_text()
    assert "sales/customers" in updated and "columnCount" in updated, updated
    shot(page, "compare")
    page.get_by_role("link", name="Created (1)").click()
    page.locator(f'#compare-items tr[data-qn$="/sales/customers/{ADDED_COLUMN}"]').wait_for()


def test_pages_fit_a_narrow_screen(page: Any) -> None:
    """At phone width nothing scrolls sideways except wide tables inside their own scroll box."""
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        for name, open_page in (
            ("narrow-runs", lambda: page.get_by_role("link", name="Runs").first.click()),
            ("narrow-new-extraction", lambda: new_extraction(page)),
        ):
            open_page()
            page.locator("main table, main form .panel").first.wait_for()
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"{name}: the page is {overflow} px wider than the screen"
            shot(page, name)
    finally:
        page.set_viewport_size({"width": 1280, "height": 860})


def test_an_outsider_gets_the_sign_in_page_and_401s(browser_context: Any, full_stack: LocalStack) -> None:
    api = full_stack.layout.api_url
    outsider = browser_context.new_page()  # a tab of its own: no token in its sessionStorage
    try:
        outsider.set_default_timeout(30_000)
        outsider.goto(f"{api}/console/#/runs")
        outsider.get_by_role("heading", name="Sign in").wait_for()
        assert outsider.locator("#nav").is_hidden() and not outsider.locator("table").count()
        outsider.get_by_label("API token").fill("pgm_000000000000_not-a-token")
        outsider.get_by_role("button", name="Sign in").click()
        assert "not accepted" in outsider.locator(".alert.error").inner_text()
        assert outsider.evaluate("sessionStorage.getItem('pgmeta.token')") is None
    finally:
        outsider.close()
    for path in ("/console/api/runs", "/console/api/whoami", "/runs"):
        assert httpx.get(f"{api}{path}", timeout=10).status_code == 401
        bogus = {"Authorization": "Bearer pgm_000000000000_not-a-token"}
        assert httpx.get(f"{api}{path}", headers=bogus, timeout=10).status_code == 401


def test_a_viewer_browses_but_cannot_run_or_cancel(browser_context: Any, full_stack: LocalStack) -> None:
    api = full_stack.layout.api_url
    created = httpx.post(
        f"{api}/tokens", json={"name": "auditor", "role": "viewer"}, headers=api_headers(full_stack), timeout=10
    )
    assert created.status_code == 201, created.text
    viewer_token = created.json()["token"]
    viewer = {"Authorization": f"Bearer {viewer_token}"}
    run_id = httpx.get(f"{api}/runs", headers=viewer, timeout=10).json()[0]["run_id"]
    tab = browser_context.new_page()
    try:
        tab.set_default_timeout(30_000)
        tab.goto(f"{api}/console")
        tab.get_by_label("API token").fill(viewer_token)
        tab.get_by_role("button", name="Sign in").click()
        tab.get_by_role("heading", name="Runs").wait_for()
        assert tab.locator("#whoami").inner_text() == "token:auditor · viewer"
        run_link = tab.get_by_role("link", name=run_id, exact=True).first
        run_link.wait_for()  # the runs a viewer may read
        assert tab.get_by_role("link", name="New extraction").count() == 0
        run_link.click()
        tab.get_by_role("heading", name=re.compile(f"Run {run_id}")).wait_for()
        assert tab.get_by_role("button", name="Cancel run").count() == 0
        tab.goto(f"{api}/console/#/new")
        tab.get_by_text("may browse runs, not start them").wait_for()
        assert tab.get_by_role("button", name="Run extraction").count() == 0
        shot(tab, "viewer")
        tab.get_by_role("button", name="Sign out").click()
        tab.get_by_role("heading", name="Sign in").wait_for()
        assert tab.evaluate("sessionStorage.getItem('pgmeta.token')") is None
        tab.goto(f"{api}/console/#/runs")
        tab.get_by_role("heading", name="Sign in").wait_for()
    finally:
        tab.close()
    # The page only hides what the API itself refuses.
    run = {"source": {"host": "127.0.0.1", "port": full_stack.layout.postgres_port, "username": "postgres"}}
    assert httpx.post(f"{api}/runs", json=run | {"password": "x"}, headers=viewer, timeout=10).status_code == 403
    assert httpx.post(f"{api}/runs/{run_id}/cancel", headers=viewer, timeout=10).status_code == 403
    assert httpx.post(f"{api}/preflight", json=run | {"password": "x"}, headers=viewer, timeout=10).status_code == 403
