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
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLES, run_bnaudit
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


@contextmanager
def opened(page: Path, profile: Path):
    """Chromium showing ``page`` at 1280x900, every event kept."""
    chromium = Browser(profile)
    try:
        for domain in ("Page", "Runtime", "Network", "Log"):
            chromium.page(f"{domain}.enable")
        chromium.page("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
        chromium.page("Page.navigate", url=page.as_uri())
        chromium.wait_for("Page.loadEventFired")
        chromium.settle()
        yield chromium
    finally:
        chromium.close()


@pytest.fixture(scope="module")
def browser(report, tmp_path_factory):
    with opened(report, tmp_path_factory.mktemp("profile")) as chromium:
        yield chromium


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
    for selector in ("#summary", "#overview tr.verdict-fail", "#overview tr.verdict-unreadable", "#findings", "#rule-error-BN106 .message", ".node.marked"):
        assert browser.evaluate(f"({visible})({json.dumps(selector)})"), selector
    assert browser.evaluate("document.querySelector('#summary').getBoundingClientRect().top") < browser.evaluate(
        "document.querySelector('#findings').getBoundingClientRect().top"
    )
    assert browser.evaluate("document.querySelector('#overview tr.verdict-fail td.verdict').innerText") == "fails the gate (fail-on error): 1 error, 1 info"
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


# -- the report as people use it: one model, many models, and with --data, each looked at --

#: Text that does not fit where it is drawn: SVG text outside its chart, table cells whose
#: content overflows, and model paths split inside a name (only "/" may end a line).
CLIPPED = """(() => {
    const clipped = [];
    for (const svg of document.querySelectorAll("svg.chart")) {
        const frame = svg.getBoundingClientRect();
        for (const text of svg.querySelectorAll("text")) {
            const box = text.getBoundingClientRect();
            if (box.left < frame.left - 0.5 || box.right > frame.right + 0.5 || box.top < frame.top - 0.5 || box.bottom > frame.bottom + 0.5)
                clipped.push("chart text " + text.textContent);
        }
    }
    for (const cell of document.querySelectorAll("#overview td, #overview th"))
        if (cell.scrollWidth > cell.clientWidth + 1) clipped.push("cell " + cell.textContent);
    for (const link of document.querySelectorAll("#overview td.path a")) {
        for (const node of link.childNodes) {
            if (node.nodeType !== Node.TEXT_NODE) continue;
            const range = document.createRange();
            range.selectNodeContents(node);
            const lines = new Set(Array.from(range.getClientRects()).map(r => Math.round(r.top)));
            if (lines.size > 1) clipped.push("name split " + node.textContent);
        }
    }
    return clipped;
})()"""


def screenshot(chromium: Browser, path: Path, selector: str | None = None) -> bytes:
    """A PNG of the viewport, or of one element (scrolled into view), kept next to the test's files."""
    params = {"format": "png"}
    if selector:
        box = chromium.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView(); const r = e.getBoundingClientRect();"
            " return [r.x, r.y + window.scrollY, r.width, Math.min(r.height, 2000)]; })()"
        )
        params.update(clip={"x": box[0], "y": box[1], "width": box[2], "height": box[3], "scale": 1}, captureBeyondViewport=True)
    shot = base64.b64decode(chromium.page("Page.captureScreenshot", **params)["data"])
    path.write_bytes(shot)
    assert shot.startswith(b"\x89PNG") and len(shot) > 5_000
    return shot


def top(chromium: Browser, selector: str) -> float:
    return chromium.evaluate(f"document.querySelector({json.dumps(selector)}).getBoundingClientRect().top + window.scrollY")


def test_one_model_reads_verdict_first_with_nothing_clipped(tmp_path):
    run = run_bnaudit("check", SAMPLES / "dropout_before_bn.keras", "--isolated", "-o", tmp_path / "one.html", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    with opened(tmp_path / "one.html", tmp_path / "profile") as chromium:
        screenshot(chromium, tmp_path / "one.png")
        assert chromium.evaluate("document.querySelector('.run-verdict').innerText") == "The run passes the gate (fail-on error): no finding is at error or above."
        assert chromium.evaluate("document.querySelector('#overview td.verdict').innerText") == "passes the gate (fail-on error): 1 warning"
        assert top(chromium, ".run-verdict") < top(chromium, "#overview") < top(chromium, "#findings")
        assert chromium.evaluate("document.querySelector('#overview').getBoundingClientRect().bottom") < 900  # on the first screen
        assert chromium.evaluate(CLIPPED) == []


def test_many_models_start_with_one_compact_sortable_table(tmp_path):
    """The 81 Keras sample models: one row each, failing first, before any finding; sortable; linked."""
    keras_samples = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".keras", ".h5"))
    run = run_bnaudit("check", *keras_samples, "--isolated", "-o", tmp_path / "many.html", cwd=ROOT)
    assert run.returncode == 1, run.stderr
    with opened(tmp_path / "many.html", tmp_path / "profile") as chromium:
        screenshot(chromium, tmp_path / "many.png")
        rows = chromium.evaluate("Array.from(document.querySelectorAll('#overview tbody tr')).map(r => [r.className, r.cells[2].innerText, r.cells[3].innerText])")
        assert len(rows) == 81
        verdicts = [css for css, _, _ in rows]
        assert verdicts == sorted(verdicts, key=lambda v: ["verdict-unreadable", "verdict-incomplete", "verdict-fail", "verdict-pass"].index(v))
        assert verdicts.count("verdict-fail") == 18 and verdicts[0] == "verdict-fail"
        assert top(chromium, "#overview") < top(chromium, "#findings") and top(chromium, "#overview") < 900
        row_height = chromium.evaluate("document.querySelector('#overview tbody tr').getBoundingClientRect().height")
        assert row_height < 48  # compact: a line or two, not a card
        assert chromium.evaluate("document.querySelectorAll('.card').length") == 0
        assert chromium.evaluate("document.body.innerText.split('needs --data or --inference').length - 1") == 1  # said once
        assert chromium.evaluate(CLIPPED) == []
        # sort by warnings, most first (two clicks), then back to the verdict order
        chromium.evaluate("document.querySelectorAll('#overview thead th')[3].click(); document.querySelectorAll('#overview thead th')[3].click()")
        warnings = chromium.evaluate("Array.from(document.querySelectorAll('#overview tbody tr')).map(r => Number(r.cells[3].innerText))")
        assert warnings == sorted(warnings, reverse=True) and warnings[0] > 0
        chromium.evaluate("document.querySelectorAll('#overview thead th')[0].click()")
        again = chromium.evaluate("Array.from(document.querySelectorAll('#overview tbody tr')).map(r => r.className)")
        assert again == verdicts
        # a row leads to its model's details
        chromium.evaluate("document.querySelector('#overview tbody tr td.path a').click()")
        target = chromium.evaluate("location.hash")
        assert target.startswith("#model-") and chromium.evaluate(f"document.querySelector('{target}').getBoundingClientRect().top") < 5


@pytest.fixture(scope="module")
def data_report(tmp_path_factory) -> Path:
    """A real --data run where one layer drifts by thousands of standard deviations and one not at all."""
    import keras
    import numpy as np
    from keras import layers

    from model_builders import set_trained_statistics

    out = tmp_path_factory.mktemp("data_report")
    inputs = keras.Input((6,), name="x")
    calm = layers.BatchNormalization(name="calm_bn")(inputs)
    wild = layers.BatchNormalization(name="wild_bn_with_a_rather_long_name")(layers.Dense(6, name="fc")(calm))
    model = keras.Model(inputs, layers.Dense(2, name="out")(wild))
    set_trained_statistics(model)
    model.get_layer("fc").set_weights([np.eye(6, dtype=np.float32) * 1e4, np.zeros(6, np.float32)])
    calm_bn = model.get_layer("calm_bn")
    calm_bn.moving_mean.assign(np.zeros(6, np.float32))
    calm_bn.moving_variance.assign(np.ones(6, np.float32))
    model.save(out / "drift.keras")
    np.save(out / "data.npy", np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32))
    run = run_bnaudit("check", out / "drift.keras", "--isolated", "--data", out / "data.npy", "--select", "BN3", "--format", "json", "-o", out / "r.json", "--format", "html", "-o", out / "report.html", cwd=out)
    assert run.returncode == 0, run.stderr  # warnings only: the default gate passes
    return out / "report.html"


@pytest.mark.slow
def test_with_data_the_drift_chart_draws_the_threshold_and_names_every_flagged_layer(data_report, tmp_path):
    document = json.loads((data_report.parent / "r.json").read_text())
    (model,) = document["models"]
    flagged = {f["layer"] for f in model["findings"] if f["code"] == "BN301"}
    assert flagged == {"wild_bn_with_a_rather_long_name"}
    with opened(data_report, tmp_path / "profile") as chromium:
        screenshot(chromium, tmp_path / "data.png")
        screenshot(chromium, tmp_path / "data-chart.png", "figure.chart")
        assert chromium.evaluate("document.querySelector('#overview td.verdict').innerText").startswith("passes the gate (fail-on error): ")
        assert "warning" in chromium.evaluate("document.querySelector('#overview td.verdict').innerText")
        threshold = chromium.evaluate("(() => { const l = document.querySelector('figure.chart svg line.threshold'); const r = l.getBoundingClientRect(); return [r.width, l.textContent]; })()")
        assert threshold[0] > 300 and threshold[1] == "BN301 threshold (bn301.drift-score) 0.5"
        assert chromium.evaluate("document.querySelector('figure.chart svg text.threshold').textContent") == "BN301 threshold (bn301.drift-score) 0.5"
        labels = chromium.evaluate("Array.from(document.querySelectorAll('figure.chart svg text.layer.marked')).map(t => t.textContent)")
        assert labels == ["wild_bn_with_a_rather…"]  # shortened; the bar's own tooltip gives the whole name
        assert "logarithmic axis" in chromium.evaluate("document.querySelector('figure.chart svg').textContent")
        bars = chromium.evaluate("Array.from(document.querySelectorAll('figure.chart svg rect.bar')).map(b => b.getBoundingClientRect().height)")
        assert len(bars) == 2 and min(bars) >= 1 and max(bars) / min(bars) < 40  # the calm layer stays visible next to the wild one
        headers = chromium.evaluate("Array.from(document.querySelectorAll('.model table.data'))"
                                    ".filter(t => t.caption && t.caption.innerText.startsWith('Per BN layer, input'))"
                                    ".map(t => Array.from(t.querySelectorAll('thead th')).slice(0, 3).map(th => th.innerText))")
        assert headers == [["verdict", "layer", "channels"]]
        verdicts = chromium.evaluate("Array.from(document.querySelectorAll('.model table.data tbody td.verdict')).map(td => td.innerText)")
        assert verdicts == ["no finding", "finding: BN301"]
        assert "drift score (symmetric KL, nats)" in chromium.evaluate("document.querySelector('#findings').nextElementSibling.innerText")
        assert chromium.evaluate(CLIPPED) == []
