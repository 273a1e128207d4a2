"""The HTML report in a real headless Chromium: visible, quiet, offline, and its script works.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
file descriptors 3 and 4, NUL-separated JSON), so no port, no websocket library and no
network are involved. Skipped only where no Chromium is installed.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_bnaudit
from test_html_report import MODELS, save_hostile_model

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--remote-debugging-pipe", "--window-size=1280,900",
]

pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (Debian: apt-get install chromium)")


class Browser:
    """Just enough of the DevTools protocol: commands to one page, and every event kept."""

    def __init__(self, profile: Path) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def on_fds_3_and_4() -> None:  # the pipe Chromium reads commands from, and the one it answers on
            command_in, answer_out = os.dup(to_browser), os.dup(from_browser)
            os.dup2(command_in, 3)
            os.dup2(answer_out, 4)

        self.process = subprocess.Popen(
            [BROWSER, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=on_fds_3_and_4, close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def send(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def page(self, method: str, **params) -> dict:
        return self.send(method, session=self.session, **params)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._receive(deadline))

    def settle(self, seconds: float = 0.5) -> None:
        """Collect whatever the page still sends (late requests, console messages)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._receive(deadline))
        except TimeoutError:
            pass

    def evaluate(self, expression: str):
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._read], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (OSError, TimeoutError, EOFError, RuntimeError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._read)
        os.close(self._write)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser")
    save_hostile_model(out / "hostile.keras")
    run = run_bnaudit("check", *MODELS, str(out / "hostile.keras"), "--format", "html", "-o", str(out / "report.html"), cwd=ROOT)
    assert run.returncode == 2 and "Traceback" not in run.stderr  # nope.keras
    return out / "report.html"


@pytest.fixture(scope="module")
def browser(report, tmp_path_factory):
    chromium = Browser(tmp_path_factory.mktemp("profile"))
    try:
        for domain in ("Page", "Runtime", "Network", "Log"):
            chromium.page(f"{domain}.enable")
        chromium.page("Page.navigate", url=report.as_uri())
        chromium.wait_for("Page.loadEventFired")
        chromium.settle()
        yield chromium
    finally:
        chromium.close()


def test_the_page_requests_nothing_but_itself(browser, report):
    requested = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert requested == [report.as_uri()]


def test_no_console_errors_no_exceptions_no_dialogs(browser):
    console = [e["params"] for e in browser.events if e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert", "warning")]
    logged = [e["params"]["entry"] for e in browser.events if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] in ("error", "warning")]
    thrown = [e["params"] for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
    dialogs = [e["params"] for e in browser.events if e.get("method") == "Page.javascriptDialogOpening"]
    assert (console, logged, thrown, dialogs) == ([], [], [], [])


def test_summary_and_findings_are_visible(browser, tmp_path):
    visible = """(selector) => {
        const el = document.querySelector(selector);
        if (!el) return false;
        const box = el.getBoundingClientRect(), style = getComputedStyle(el);
        return box.width > 0 && box.height > 0 && style.visibility === "visible" && style.display !== "none";
    }"""
    for selector in ("#summary", ".card.verdict-fail", ".card.verdict-unreadable", "#findings", "#rule-error-BN106 .message", ".node.marked"):
        assert browser.evaluate(f"({visible})({json.dumps(selector)})"), selector
    assert browser.evaluate("document.querySelector('#summary').getBoundingClientRect().top") < browser.evaluate(
        "document.querySelector('#findings').getBoundingClientRect().top"
    )
    assert "FAIL" in browser.evaluate("document.querySelector('.card.verdict-fail').innerText")
    assert browser.evaluate("document.querySelector('#rule-error-BN106 .message').innerText").startswith("BatchNormalization 'bn1' is called with training=True")
    texts = browser.evaluate("Array.from(document.querySelectorAll('.node code')).map(n => n.textContent)")
    assert "<script>alert(1)</script>" in texts  # shown as text, never run
    shot = base64.b64decode(browser.page("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "report.png").write_bytes(shot)
    assert shot.startswith(b"\x89PNG") and len(shot) > 20_000


def test_the_script_runs_under_the_policy(browser):
    assert browser.evaluate("document.getElementById('filter').hidden") is False  # unhidden by report.js
    browser.evaluate("(() => { const box = document.querySelector('#filter input[data-severity=warning]'); box.click(); })()")
    assert browser.evaluate("document.querySelector('#findings section[data-severity=warning]').hidden") is True
    browser.evaluate("document.querySelector('#filter input[data-severity=warning]').click()")
    assert browser.evaluate("document.querySelector('#findings section[data-severity=warning]').hidden") is False
