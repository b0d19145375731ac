"""The demo run's trace in the local stack's trace viewer (Zipkin's UI), in Debian's Chromium, through the link
`make run` prints. The screenshot docs/observability.md shows is taken here (docs/zipkin-trace.png).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgmeta_devstack.layout import SERVICES
from pgmeta_devstack.stack import LocalStack
from pgmeta_devstack.tracing import print_trace_link, run_traces
from tests.browser.test_console import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "zipkin-trace.png"
# Zipkin's UI builds the whole span tree in the browser before it shows anything but its spinner: seconds for
# the demo run's ~700 spans on an idle machine, minutes when other work starves Chromium of CPU.
TRACE_RENDERED_MS = 600_000
# The services named by the span rows ("<service>: <span name>") of Zipkin's span list, scrolled from top to
# bottom (it keeps only the rows in view in the page).
SERVICES_IN_SPAN_LIST = """
async (services) => {
  const rowName = new RegExp("^(" + services.join("|") + "): ");
  const rows = () => [...document.querySelectorAll("*")]
    .filter(e => e.children.length === 0 && rowName.test(e.textContent));
  const scrollable = e => e.scrollHeight > e.clientHeight + 1
    && ["auto", "scroll"].includes(getComputedStyle(e).overflowY);
  let list = rows().at(-1);
  while (list && !scrollable(list)) list = list.parentElement;
  const seen = new Set();
  for (let top = 0; list && top <= list.scrollHeight && seen.size < services.length; top += list.clientHeight / 2) {
    list.scrollTop = top;
    await new Promise(done => requestAnimationFrame(() => setTimeout(done, 50)));
    rows().forEach(e => seen.add(rowName.exec(e.textContent)[1]));
  }
  if (list) list.scrollTop = 0;
  return [...seen];
}
"""


@pytest.fixture(scope="module")
def zipkin_page(traced_stack: LocalStack) -> Iterator[Any]:
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
                viewport={"width": 1280, "height": 760},
            )
            try:
                yield context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


# A stack with Zipkin, a run, and the UI's rendering: beyond the suite's 900 s on a loaded machine.
@pytest.mark.timeout(2400)
def test_the_demo_runs_trace_opens_in_zipkin_with_spans_from_every_service(
    traced_stack: LocalStack, zipkin_page: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = "trace-ui-demo"
    done = subprocess.run(
        traced_stack.extract_argv(run_id), env=traced_stack.cli_env(), capture_output=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Every process's spans in Zipkin before the page asks for them: the UI reads the trace once.
    (spans,) = run_traces(traced_stack.layout, run_id, settle=8.0, timeout=60.0)
    print_trace_link(traced_stack, run_id)
    printed = capsys.readouterr().out
    links = re.findall(r"the run's trace: (\S+)", printed)
    assert links == [f"{traced_stack.layout.zipkin_url}/zipkin/traces/{spans[0]['traceId']}"], printed

    page = zipkin_page
    page.goto(links[0], wait_until="commit", timeout=60_000)
    page.get_by_text("Total Spans").wait_for(timeout=TRACE_RENDERED_MS)
    header = page.locator("body").inner_text()
    assert re.search(rf"Total Spans\s*{len(spans)}\b", header), header[:500]
    assert spans[0]["traceId"] in header
    # Span rows read "<service>: <span name>"; the list draws only the rows in view, so it is scrolled through.
    assert sorted(page.evaluate(SERVICES_IN_SPAN_LIST, list(SERVICES))) == sorted(SERVICES)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), animations="disabled", caret="hide")
