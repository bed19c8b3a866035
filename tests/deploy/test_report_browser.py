"""The report's pages in a real headless Chromium: charts render, no console errors, readable on a phone.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages, each
ended by a NUL byte, commands on fd 3 and answers and events on fd 4), so no WebSocket client is needed.
Chromium comes from `bash deploy/install-system-deps.sh` (Debian package `chromium`); without it the
test fails.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sensors.registry import BUILTIN_DIR, load_registry
from tests.deploy.test_report import run, write_dataset
from tests.servers import StackHandle

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
)
TIMEOUT_S = 20.0
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}
DESKTOP = {"width": 1366, "height": 900, "deviceScaleFactor": 1, "mobile": False}


class Browser:
    """One headless Chromium and a DevTools session on one page."""

    def __init__(self, profile: Path) -> None:
        if not CHROMIUM.exists():
            pytest.fail(f"{CHROMIUM} not found: install it with 'bash deploy/install-system-deps.sh'", pytrace=False)
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()
        # Copies at fd >= 10 (closed at exec), so moving them onto 3 and 4 in the child cannot clobber one.
        child_in = fcntl.fcntl(to_child, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_child, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_child)
        os.close(from_child)

        def child_fds() -> None:  # Chromium reads commands on fd 3 and writes answers on fd 4
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        # close_fds=False: closing runs after preexec_fn and would take 3 and 4 away; Python's own fds are
        # close-on-exec anyway.
        self.process = subprocess.Popen(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=child_fds,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(child_in)
        os.close(child_out)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=True)

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: bool = False) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive(f"the answer to {method}")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self.events.append(reply)

    def _receive(self, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise AssertionError(f"Chromium sent nothing for {TIMEOUT_S:.0f} s while waiting for {what}")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise AssertionError(f"Chromium closed the DevTools pipe while waiting for {what}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def open(self, url: str, viewport: dict[str, Any]) -> None:
        """Load `url` at `viewport` size and wait for its load event; events from before are dropped."""
        self.send("Emulation.setDeviceMetricsOverride", viewport, session=True)
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session=True)
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._receive(f"the load event of {url}"))

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str) -> Any:
        deadline = time.monotonic() + TIMEOUT_S
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"still false after {TIMEOUT_S:.0f} s: {expression}")
            time.sleep(0.1)
        return value

    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error/assert calls and browser log errors (e.g. a failed load)."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}")
        return found

    def close(self) -> None:
        with contextlib.suppress(AssertionError):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self._out)
        os.close(self._in)


@pytest.fixture(scope="module")
def report(stack: StackHandle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dataset = write_dataset(stack, "report_browser", load_registry([BUILTIN_DIR]))
    out = tmp_path_factory.mktemp("report")
    code, _, stderr = run(dataset.env(stack), "--out", str(out))
    assert code == 0, stderr
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        handle = Browser(Path(profile))
        try:
            yield handle
        finally:
            handle.close()


CHART_COUNTS = """(() => ({
  containers: document.querySelectorAll('.chart').length,
  rendered: [...document.querySelectorAll('.chart')].filter(p => p.querySelector('svg.main-svg g.trace')).length,
  notes: document.querySelectorAll('.nodata').length,
}))()"""


@pytest.mark.timeout(60)
def test_index_loads_and_links_every_page(browser: Browser, report: Path) -> None:
    browser.open((report / "index.html").as_uri(), DESKTOP)
    links = browser.evaluate("[...document.querySelectorAll('.clusters h2 a')].map(a => a.getAttribute('href'))")
    assert links == ["andaman.html", "lanna.html"]
    assert browser.errors() == []


@pytest.mark.timeout(60)
def test_cluster_page_renders_every_chart_without_errors(browser: Browser, report: Path) -> None:
    html = (report / "lanna.html").read_text(encoding="utf-8")
    browser.open((report / "lanna.html").as_uri(), DESKTOP)
    counts = browser.wait_for(f"(c => c.rendered === c.containers && c)({CHART_COUNTS})")
    assert counts["containers"] == html.count('<div class="chart"') > 5
    assert counts["notes"] == html.count('<div class="nodata"') > 0
    # The AQI chart draws its five band backgrounds, and a line per district with data.
    assert browser.evaluate("document.querySelectorAll('#lanna-aqi .shapelayer path').length") >= 5
    assert browser.evaluate("document.querySelectorAll('#lanna-aqi .scatterlayer .trace').length") == 5
    assert browser.errors() == []


@pytest.mark.timeout(60)
def test_cluster_page_fits_a_phone_screen(browser: Browser, report: Path) -> None:
    browser.open((report / "andaman.html").as_uri(), PHONE)
    browser.wait_for(f"(c => c.rendered === c.containers && c)({CHART_COUNTS})")
    # A mobile viewport widens to fit content that overflows, so compare with the device's width.
    width = browser.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide on a {PHONE['width']} px phone"
    plot_width = browser.evaluate("document.querySelector('#andaman-aqi .main-svg').getBoundingClientRect().width")
    assert 300 <= plot_width <= PHONE["width"]
    assert browser.errors() == []


# Two copies of the first Thai word of the page, in the font of the element that shows it: the word
# itself, and as many private-use characters (which no font has, so each is drawn as the missing-glyph
# box). Without a Thai font every Thai character is that same box, so both render the same pixels.
THAI_PROBES = r"""(() => {
  const thai = /[\u0E00-\u0E7F]+/;
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  let node;
  while ((node = walker.nextNode()) && !thai.test(node.textContent)) {}
  if (!node) return null;
  const word = node.textContent.match(thai)[0];
  const style = getComputedStyle(node.parentElement);
  const probe = (text, top) => {
    const span = document.createElement('span');
    span.textContent = text;
    Object.assign(span.style, {position: 'fixed', left: '0px', top: top + 'px', zIndex: 99999,
      background: '#fff', color: '#000', padding: '4px', whiteSpace: 'pre', lineHeight: '1.6',
      fontFamily: style.fontFamily, fontSize: '32px'});
    document.body.appendChild(span);
    const r = span.getBoundingClientRect();
    return {x: r.x, y: r.y, width: r.width, height: r.height};
  };
  return {word, font: style.fontFamily, thai: probe(word, 0), boxes: probe('\uE000'.repeat(word.length), 120)};
})()"""


@pytest.mark.timeout(60)
def test_thai_district_names_render_with_thai_glyphs(browser: Browser, report: Path) -> None:
    """A screenshot of a Thai district name must differ from the same number of missing-glyph boxes."""
    browser.open((report / "lanna.html").as_uri(), DESKTOP)
    probes = browser.evaluate(THAI_PROBES)
    assert probes, "no Thai text on the page"

    def shot(rect: dict[str, float]) -> bytes:
        clip = {**rect, "scale": 1}
        data = browser.send("Page.captureScreenshot", {"format": "png", "clip": clip}, session=True)["data"]
        return base64.b64decode(data)

    boxes_only = shot(probes["thai"]) == shot(probes["boxes"])
    assert not boxes_only, (
        f"{probes['word']!r} renders as missing-glyph boxes in {probes['font']}: "
        "install a Thai font with 'bash deploy/install-system-deps.sh' (fonts-thai-tlwg)"
    )
    # A Thai font draws tone marks and vowels above and below (no advance), so the word is narrower.
    assert probes["thai"]["width"] < probes["boxes"]["width"], probes
