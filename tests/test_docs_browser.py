"""The docs site in a real browser: headless Chromium (Debian's package; .ci/run installs it), driven through its
DevTools protocol, renders every page of the navigation at 1400 px and at 420 px. What `mkdocs build --strict` cannot
see is checked on the laid-out page: tables and code blocks stay inside the content column (a wide one scrolls in its
own box; on the key pages at 1400 px none needs to), the quick start's commands show whole, flag names are never
broken, no cross-reference markup shows raw, the math is typeset (and each formula shows whole at 1400 px), and
nothing sticks out of a 420 px screen. Screenshots go to ``$DOCS_SCREENSHOTS`` when it is set."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
METHOD_PAGES = [
    "methods/eda/", "methods/gec/", "methods/cov/", "methods/dynamic-sampling/", "methods/cov-scope/",
    "methods/entropy-law/",
]  # fmt: skip
KEY_PAGES = ["", "quickstart/", "cli-reference/", *METHOD_PAGES, "api/", "recipes/", "guides/own-data-and-reward/"]


def nav_pages() -> list[str]:
    """Every page of the site's navigation, as its URL path."""
    import yaml

    def walk(nav: list) -> list[str]:
        pages = []
        for entry in nav:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            pages += walk(value) if isinstance(value, list) else [value]
        return pages

    nav = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())["nav"]
    return [re.sub(r"(index)?\.md$", "", page).rstrip("/") + "/" if page != "index.md" else "" for page in walk(nav)]


PAGES = nav_pages()
WIDTHS = (1400, 420)
CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)

if CHROMIUM is None:
    if os.environ.get("EDGE_TRL_REQUIRE_BROWSER"):
        pytest.fail("chromium is not installed (apt-get install -y chromium); .ci/run installs it.", pytrace=False)
    pytest.skip(
        "chromium is not installed (apt-get install -y chromium); .ci/run installs it.", allow_module_level=True
    )

# Measured in the page: one JSON report per page and width.
CHECKS = r"""
(() => {
  const content = document.querySelector('.md-content__inner');
  // the column: Material lets tables and code bleed into the column's padding (and to the screen's edges on a phone)
  const column = document.querySelector('.md-content').getBoundingClientRect();
  const box = {left: Math.max(0, column.left), right: Math.min(document.documentElement.clientWidth, column.right)};
  const inScroller = (el) => el.closest('pre, .md-typeset__scrollwrap, div.arithmatex, .katex-display');
  const report = {overflowing: [], codeCut: [], brokenFlags: [], raw: [], offScreen: []};
  for (const el of content.querySelectorAll('table, pre')) {
    const shown = el.closest('.md-typeset__scrollwrap') || el;
    const r = shown.getBoundingClientRect();
    if (r.right > box.right + 1 || r.left < box.left - 1)
      report.overflowing.push(el.tagName + ' ' + Math.round(r.left) + '-' + Math.round(r.right));
  }
  report.tableScroll = [...content.querySelectorAll('table')].filter((t) => t.scrollWidth > t.clientWidth + 1)
    .map((t) => t.querySelector('th') ? t.querySelector('tr').innerText.slice(0, 60) : 'table');
  for (const code of content.querySelectorAll('pre > code')) {
    if (code.scrollWidth > code.clientWidth + 1) report.codeCut.push(code.innerText.slice(0, 60));
  }
  for (const name of content.querySelectorAll('.flag-name code, .flag-field')) {
    if (name.getClientRects().length > 1) report.brokenFlags.push(name.innerText);
  }
  const clone = content.cloneNode(true);
  clone.querySelectorAll('pre, .katex, script').forEach((el) => el.remove());
  // code that holds brackets itself is literal (`edge-trl configs [NAME]`); raw markup has them around the code
  clone.querySelectorAll('code').forEach((el) => { if (/[\[\]]/.test(el.textContent)) el.remove(); });
  const text = clone.innerText;
  for (const pattern of [/\[`?(?:trl\.|edge_trl\.)?[A-Z][A-Za-z]+`?\](?!\()/g, /:(?:func|class|mod|meth|attr):/g, /\{:[^}]*\}/g])
    for (const match of text.matchAll(pattern)) report.raw.push(match[0]);
  const width = document.documentElement.clientWidth;
  report.pageScroll = document.documentElement.scrollWidth - width;
  if (report.pageScroll > 1)  // name what sticks out
    report.widest = [...content.querySelectorAll('*')].filter((el) => !inScroller(el) &&
      el.getBoundingClientRect().right > width + 1).slice(0, 3).map((el) => el.tagName + '.' + el.className + ': ' +
      (el.innerText || '').slice(0, 40));
  for (const el of content.querySelectorAll('p, li, h1, h2, h3, h4, dt, dd, .flag-name, img')) {
    if (inScroller(el)) continue;
    const r = el.getBoundingClientRect();
    if (r.width && (r.right > width + 1 || r.left < -1)) report.offScreen.push(el.tagName + ': ' + el.innerText.slice(0, 50));
  }
  const maths = [...content.querySelectorAll('.arithmatex')];
  report.math = maths.length;
  report.mathTypeset = maths.filter((el) => el.querySelector('.katex')).length;
  report.mathErrors = content.querySelectorAll('.katex-error').length;
  report.mathScroll = [...content.querySelectorAll('div.arithmatex')].filter((m) => m.scrollWidth > m.clientWidth + 1)
    .map((m) => m.innerText.slice(0, 40));
  return JSON.stringify(report);
})()
"""


class DevTools:
    """The smallest DevTools protocol client: send a command, wait for its answer or for an event."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.socket = connect(url, max_size=None, open_timeout=30)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message.get("result", {})

    def wait_for(self, event: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self.socket.recv(timeout=deadline - time.monotonic()))
            if message.get("method") == event:
                return
        raise TimeoutError(event)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def served_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    process = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            url = match.group(1) if match else None
            assert line or process.poll() is None, "chromium exited before it listened"
        assert url, "chromium did not print its DevTools address"
        port = re.search(r":(\d+)/", url).group(1)
        from urllib.request import urlopen

        targets = json.loads(urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        tools.call("Page.enable")
        tools.call("Runtime.enable")
        yield tools
    finally:
        process.terminate()
        process.wait(timeout=30)


def render(browser: DevTools, url: str) -> dict[int, dict]:
    """Load ``url`` once and measure it at each width (the layout follows the window, no reload needed)."""
    reports = {}
    for index, width in enumerate(WIDTHS):
        browser.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1,
                     mobile=width < 600)  # fmt: skip
        if index == 0:
            browser.call("Page.navigate", url=url)
            browser.wait_for("Page.loadEventFired")
        # fonts loaded and two frames drawn at this width before measuring
        browser.evaluate(
            "document.fonts.ready.then(() => new Promise((done) => requestAnimationFrame(() => "
            "requestAnimationFrame(() => done(true)))))"
        )
        reports[width] = json.loads(browser.evaluate(CHECKS))
        shots = os.environ.get("DOCS_SCREENSHOTS")
        if shots:
            name = (url.rstrip("/").rsplit("/", 1)[-1] or "home") if url.count("/") > 3 else "home"
            shot = browser.call("Page.captureScreenshot", format="png")
            Path(shots).mkdir(parents=True, exist_ok=True)
            (Path(shots) / f"{name}-{width}.png").write_bytes(base64.b64decode(shot["data"]))
    return reports


def problems_of(page: str, width: int, report: dict) -> dict:
    bad = {key: report[key] for key in ("overflowing", "brokenFlags", "raw", "offScreen") if report[key]}
    if report["pageScroll"] > 1:
        bad["pageScroll"] = [report["pageScroll"], *report["widest"]]
    if width >= 1400 and report["tableScroll"] and page in KEY_PAGES:  # on a wide screen every column shows
        bad["tableScroll"] = report["tableScroll"]
    if width >= 1400 and report["mathScroll"]:  # and every formula shows whole
        bad["mathScroll"] = report["mathScroll"]
    if page == "quickstart/" and report["codeCut"]:
        bad["codeCut"] = report["codeCut"]
    if report["mathTypeset"] != report["math"] or report["mathErrors"]:
        bad["math"] = report
    if page in METHOD_PAGES and not report["math"]:
        bad["no math"] = report["math"]
    return bad


def test_every_page_fits_and_renders(served_site, browser):
    problems = {}
    for page in PAGES:
        for width, report in render(browser, served_site + page).items():
            bad = problems_of(page, width, report)
            if bad:
                problems[f"{page or 'home'} at {width} px"] = bad
    assert not problems, json.dumps(problems, indent=1)[:4000]
