"""The HTML report: escaped, offline, summary first, overridable, small, shipped in the wheel."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from html import unescape
from pathlib import Path

import pytest

from conftest import ROOT, invoke, run_bnaudit

MODELS = ["sample_models/bn_training_baked.keras", "sample_models/dropout_before_bn.keras", "sample_models/custom_layer.keras", "sample_models/nope.keras"]
SCRIPT_NAME = "<script>alert(1)</script>"
ATTRIBUTE_NAME = 'bn"><img src=x onerror=alert(2)>'


def save_hostile_model(path: Path) -> None:
    """A model, saved by Keras, whose layer names are markup (Keras refuses "/" only at call time)."""
    import keras
    from keras import layers

    inp = keras.Input((4,), name="x")
    dense = layers.Dense(3, name="dense")  # a bias before BN: BN102 names this layer in its details
    bn = layers.BatchNormalization(name=ATTRIBUTE_NAME)
    model = keras.Model(inp, layers.Dense(1, name="out")(bn(dense(inp))))
    dense.name = SCRIPT_NAME
    model.save(path)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile")
    save_hostile_model(out / "hostile.keras")
    return out / "hostile.keras"


def render(tmp_path: Path, *args: str, cwd: Path = ROOT) -> tuple[str, dict]:
    run = invoke("check", *args, "--format", "json", "-o", str(tmp_path / "r.json"), "--format", "html", "-o", str(tmp_path / "r.html"), cwd=cwd)
    assert "Traceback" not in run.stderr, run.stderr
    return (tmp_path / "r.html").read_text(), json.loads((tmp_path / "r.json").read_text())


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    return render(tmp_path_factory.mktemp("page"), *MODELS)


def test_layer_names_from_the_model_are_escaped(hostile, tmp_path):
    html, document = render(tmp_path, str(hostile))
    [model] = document["models"]
    assert SCRIPT_NAME in json.dumps(model["measurements"]["layers"])  # the name reached the report...
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # ...and is shown as text
    assert "bn&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert "alert(1)</script>" not in html and "<img" not in html
    assert html.count("<script") == 1  # bnaudit's own, pinned by the CSP


def test_summary_first_an_overview_row_per_model_failing_first(page):
    html, document = page
    assert html.index('id="summary"') < html.index('id="overview"') < html.index('id="findings"') < html.index('id="models"')
    table = html[html.index('id="overview"') : html.index("</table>", html.index('id="overview"'))]
    rows = re.findall(r'<tr class="verdict-(\w+)"(?: data-findings)?><td class="verdict" data-sort="(\d+)">([^<]*)</td><td class="path"><a href="#(model-\d+)">(.*?)</a></td>(.*?)</tr>', table)
    assert len(rows) == len(document["models"])
    got = [(verdict, words, unescape(re.sub("<wbr>", "", path))) for verdict, _, words, _, path, _ in rows]
    assert got == [  # failing first: unreadable, then fails, then passes with the most findings
        ("unreadable", "unreadable: not audited", "sample_models/nope.keras"),
        ("fail", "fails the gate (fail-on error): 1 error", "sample_models/bn_training_baked.keras"),
        ("pass", "passes the gate (fail-on error): 1 warning", "sample_models/custom_layer.keras"),
        ("pass", "passes the gate (fail-on error): 1 warning", "sample_models/dropout_before_bn.keras"),
    ]
    assert [int(order) for _, order, *_ in rows] == [0, 1, 2, 3]
    assert "<wbr>" in rows[0][4] and "_<wbr>" not in table  # names wrap at "/" only
    for _, _, _, anchor, path, cells in rows:
        model = next(m for m in document["models"] if m["path"] == unescape(re.sub("<wbr>", "", path)))
        values = re.findall(r"<td[^>]*>([^<]*)</td>", cells)
        if model["errors"]:
            assert values == ["0", "0", "0", "—", "—"]
            continue
        counts = {label: sum(f["severity"] == label for f in model["findings"]) for label in ("error", "warning", "info")}
        writer = f"Keras {model['meta']['keras_version']} ({model['meta']['format']})"
        assert values == [str(counts["error"]), str(counts["warning"]), str(counts["info"]), str(model["meta"]["batchnorm_layers"]), writer]
        detail = html[html.index(f'id="{anchor}"') :]
        detail = detail[: detail.index("</section>")]
        assert f"<dd>{model['meta']['batchnorm_layers']} of {model['meta']['layers']} layers</dd>" in detail
        assert f"<summary>{len(model['rules_run'])} rules</summary>{', '.join(model['rules_run'])}" in detail
        assert "none (no inference run)" in detail
        assert "needs --data" not in detail  # said once for the whole run
    common = re.search(r'<p class="common-skipped">(.*?)</p>', html).group(1)
    assert common == (
        "Not run on any model: BN301, BN302, BN303 (needs --data); BN401, BN402, BN403, BN404 (needs --data or --inference); "
        "BN205 (the file holds no optimizer state: saved with include_optimizer=False, or never compiled)."
    )


def test_the_verdict_says_what_the_gate_decided_and_what_was_found(tmp_path):
    """A model with warnings only passes the default gate; the words say both."""
    html, _ = render(tmp_path, "sample_models/dropout_before_bn.keras")
    assert '<p class="run-verdict">The run passes the gate (fail-on error): no finding is at error or above.</p>' in html
    assert '<p class="verdict">passes the gate (fail-on error): 1 warning</p>' in html
    strict, _ = render(tmp_path, "sample_models/dropout_before_bn.keras", "--fail-on", "warning")
    assert '<p class="run-verdict">The run fails the gate (fail-on warning): 1 of 1 model fails.</p>' in strict
    assert '<p class="verdict">fails the gate (fail-on warning): 1 warning</p>' in strict
    assert "PASS" not in html and "FAIL" not in strict


def test_findings_are_grouped_by_severity_and_rule_with_docs_fix_and_the_layers_around(page):
    html, _ = page
    findings = html[html.index('id="findings"') : html.index('id="models"')]
    sections = re.findall(r'<section class="severity sev-(\w+)" data-severity="\w+">(.*?)</section>', findings, re.DOTALL)
    assert [s for s, _ in sections] == ["error", "warning"]
    rules = {severity: re.findall(r'<span class="code">(BN\d+)</span>', body) for severity, body in sections}
    assert rules == {"error": ["BN106"], "warning": ["BN101", "BN501"]}
    bn101 = findings[findings.index('id="rule-warning-BN101"') :]
    bn101 = bn101[: bn101.index("</article>")]
    assert "<h5>What it does</h5>" in bn101 and "<h5>Why is this bad?</h5>" in bn101 and "<pre><code>" in bn101
    assert "<strong>Fix:</strong> move &#39;drop&#39; after the BN" in bn101
    nodes = re.findall(r'<span class="node([^"]*)"><code>([^<]*)</code>', bn101)
    assert nodes == [("", "conv2"), (" involved", "drop"), (" marked bn", "bn2"), ("", "relu2"), ("", "gap")]


def test_the_page_loads_nothing_and_pins_its_style_and_script(page):
    html, _ = page
    assert not re.search(r"""\s(src|srcset|action|poster|data)\s*=|<link|<iframe|<object|<embed|@import|url\(""", html, re.IGNORECASE)
    assert not re.search(r"""href=(?!["']?#)""", html)  # only links within the page
    style = re.search(r"<style>(.*?)</style>", html, re.DOTALL).group(1)
    script = re.search(r"<script>(.*?)</script>", html, re.DOTALL).group(1)
    csp = unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1))

    def pinned(text):
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    assert csp.startswith("default-src 'none'; ")
    assert f"style-src {pinned(style)};" in csp and f"script-src {pinned(script)};" in csp


def test_templates_override_blocks_and_styles(tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "report.html.j2").write_text('{% extends "default:report.html.j2" %}{% block title %}Nightly BN audit{% endblock %}')
    (templates / "report.css").write_text("body { font-size: 20px; }")
    run = invoke("check", MODELS[0], "--templates", str(templates), "--format", "html", cwd=ROOT)
    assert run.returncode == 1, run.stderr
    assert "<title>Nightly BN audit</title>" in run.stdout
    assert "<style>body { font-size: 20px; }</style>" in run.stdout
    assert "BN106" in run.stdout  # the rest is the built-in report
    digest = base64.b64encode(hashlib.sha256(b"body { font-size: 20px; }").digest()).decode()
    assert f"style-src 'sha256-{digest}'" in run.stdout


def test_a_plugin_adjusts_the_jinja_environment(tmp_path):
    (tmp_path / "brand_plugin.py").write_text(
        "import jinja2\n"
        "from bnaudit import hookimpl\n\n"
        "@hookimpl\n"
        "def bnaudit_prepare_jinja2_environment(env):\n"
        "    env.loader = jinja2.ChoiceLoader([jinja2.DictLoader({'report.js': '/* branded */'}), env.loader])\n"
    )
    run = run_bnaudit("check", MODELS[0], "-p", "brand_plugin", "--format", "html", cwd=ROOT, env={"PYTHONPATH": str(tmp_path)})
    assert run.returncode == 1, run.stderr
    assert "<script>/* branded */</script>" in run.stdout


def drift(layer: str, score: float, channels: int, per_channel: dict | None = None):
    """A per-layer drift measurement as BN301 records it (numbers made up for the page)."""
    from bnaudit.measurements import BatchNormDrift

    return BatchNormDrift(
        layer, channels=channels, values_per_channel=64, drift_score=score, worst_channel=0, worst_channel_kl=score,
        mean_shift=0.1, max_mean_shift=0.2, variance_ratio=1.5, max_abs_log_variance_ratio=0.4, dead_channels=0,
        full_batches=2, batch_mean_spread=0.01, batch_variance_spread=0.02, per_channel=per_channel,
    )


def comparison(output: str, run: str, max_abs: float, mismatched: int):
    from bnaudit.analysis.tolerances import Comparison

    worst = {"sample": 3, "index": [1], "value": 1.0 + max_abs, "reference": 1.0, "abs": max_abs, "rel": max_abs}
    return Comparison(output, run, "CPU:0", max_abs, max_abs / 2, max_abs, max_abs, max_abs / 2, max_abs, mismatched, 40, worst)


def test_each_kind_of_measurement_renders_by_its_type(page, tmp_path):
    """Typed measurements written to JSON and read back by `bnaudit report`: the drift chart
    and table, per-channel charts grouped by what each series is, the device table with its
    verdicts; durations only with --timestamp."""
    from bnaudit.measurements import DeviceComparison, InferenceSetup, StatisticsPass, to_json

    _, document = page
    model = next(m for m in document["models"] if m["path"] == MODELS[1])
    channels = 8
    per_channel = {
        "data_mean": [0.1 * c + 1 for c in range(channels)],
        "data_variance": [1.5] * channels,
        "moving_mean": [0.1 * c for c in range(channels)],
        "moving_variance": [1.0] * channels,
        "mean_shift": [1.0] * channels,
        "batch_mean_std": [0.01] * channels,
    }
    layers = list(model["measurements"]["layers"])
    setup = InferenceSetup(["CPU:0", "CPU:1"], "CPU:0", "no GPU found", None, {"source": "synthetic", "seed": 0}, "float32",
                           {"atol": 1e-4, "rtol": 1e-3, "source": "default for float32"}, {"predict CPU:0": 1.25})
    model["measurements"].update(to_json([
        StatisticsPass(samples=64, batches=2, batch_size=32, upstream="inference", replicas=1, source="data", seconds=3.5),
        *(drift(bn, 0.1 * (i + 1), channels, per_channel) for i, bn in enumerate(layers)),
        setup,
        DeviceComparison(comparison("head", "CPU:1", 0.0, 0)),
        DeviceComparison(comparison("head", "GPU:0", 0.5, 7)),
    ]))
    (tmp_path / "edited.json").write_text(json.dumps(document))
    run = invoke("report", str(tmp_path / "edited.json"), "--format", "html", cwd=ROOT)
    assert run.returncode == 0, run.stderr
    detail = model_detail(run.stdout, "model-3")
    assert detail.count('<rect class="bar') == 2  # one drift bar per BN layer
    assert "drift score (symmetric KL, nats) per BN layer, input to output" in detail
    assert '<line class="threshold"' not in detail  # BN301 did not run: no threshold to draw
    first_layer = detail[detail.index('<details class="channels">') : detail.index("</details>", detail.index('<details class="channels">'))]
    legends = {
        caption: re.findall(r'<text class="legend"[^>]*>([^<]+)</text>', chart)
        for caption, chart in re.findall(r'<figure class="chart"><figcaption>([^<]+)</figcaption>(<svg.*?</svg>)', first_layer)
    }
    assert legends == {
        "mean per channel": ["moving_mean", "data_mean"],
        "variance per channel": ["moving_variance", "data_variance"],
        "other numbers per channel": ["mean_shift", "batch_mean_std"],
    }
    assert detail.count('<details class="channels">') == 2  # collapsed by default
    assert "<td><code>bn2</code></td><td>8</td><td>64</td><td>0.2</td>" in detail
    assert "Devices: CPU:0, CPU:1." in detail and "<dt>Devices</dt>\n<dd>CPU:0, CPU:1</dd>" in detail
    assert re.search(r'<tr class="failed"><td>FAILS: beyond tolerance</td><td>head</td><td>GPU:0</td><td>CPU:0</td><td>0.5</td>', detail)
    assert re.search(r'<tr><td>within tolerance</td><td>head</td><td>CPU:1</td><td>CPU:0</td><td>0</td>', detail)
    assert '<th scope="col">verdict</th><th scope="col">output</th><th scope="col">run</th><th scope="col">compared with</th><th scope="col">max |difference|</th>' in detail
    assert "sample 3, index [1]: 1.5 vs 1" in detail  # the worst element, in words
    assert "predict CPU:0" not in detail and "3.5" not in detail  # durations only with --timestamp
    assert "Other measurements" not in detail  # every kind had its own renderer
    for stamp in ((), ("--timestamp",)):
        again = invoke("report", str(tmp_path / "edited.json"), "--format", "json", *stamp, cwd=ROOT)
        written = json.loads(again.stdout)["models"][2]["measurements"]
        assert ("seconds" in written["inference"]) == bool(stamp)
        if stamp:  # read back into types and written again: the same document
            assert written == model["measurements"]


def test_a_plugins_measurement_and_unknown_shapes_render_generically_and_escaped(page, tmp_path):
    """A plain topic becomes tables; a typed topic that does not hold its kind's fields (a
    hand-edited document) stays plain: shown as tables, never charted, never a crash."""
    _, document = page
    model = next(m for m in document["models"] if m["path"] == MODELS[1])
    model["measurements"]["thermal"] = {"zones": {"a": {"celsius": 41}}, "sensor": "<b>x</b>"}
    model["measurements"]["statistics"] = {"layers": {"bn1": {"drift_score": 0.5, "<i>odd</i>": 1}}}
    odd = next(m for m in document["models"] if m["path"] == MODELS[0])
    odd["measurements"].update(statistics="not a mapping", inference=[1, 2], layers={"bn1": {"before": "garbage"}})
    (tmp_path / "edited.json").write_text(json.dumps(document))
    run = invoke("report", str(tmp_path / "edited.json"), "--format", "html", cwd=ROOT)
    assert run.returncode == 0, run.stderr
    detail = model_detail(run.stdout, "model-3")
    assert "&lt;b&gt;x&lt;/b&gt;" in detail and "<td>41</td>" in detail
    assert "&lt;i&gt;odd&lt;/i&gt;" in detail and "<i>odd</i>" not in detail
    assert '<rect class="bar' not in detail  # not a drift measurement: not charted
    assert "<h4>Other measurements</h4>" in detail
    again = invoke("report", str(tmp_path / "edited.json"), "--format", "json", "--timestamp", cwd=ROOT)
    written = {m["path"]: m["measurements"] for m in json.loads(again.stdout)["models"]}
    assert written[MODELS[1]]["statistics"] == model["measurements"]["statistics"]  # kept as given
    assert written[MODELS[0]]["layers"] == {"bn1": {"before": "garbage"}}


def model_detail(html: str, anchor: str) -> str:
    detail = html[re.search(rf'<section class="model verdict-\w+" id="{anchor}">', html).start() :]
    return detail[: detail.index("</section>")]


@pytest.mark.slow
def test_a_resnet50_report_stays_under_2_mb_even_with_per_channel_statistics(tmp_path):
    """Static audit as it comes, then with nine per-channel series of noise on every BN
    layer (its real channel count): the worst case for the charts' size."""
    import keras
    import numpy as np

    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    model.save(tmp_path / "resnet50.keras")
    html, document = render(tmp_path, str(tmp_path / "resnet50.keras"))
    assert document["models"][0]["meta"]["batchnorm_layers"] == 53
    assert html.count("<tr><td><code>conv") + html.count('<tr class="marked"><td><code>conv') == 53
    assert len(html.encode()) <= 2 * 1024 * 1024
    rng = np.random.default_rng(0)
    series = ("data_mean", "data_variance", "moving_mean", "moving_variance", "mean_shift", "log_variance_ratio", "symmetric_kl", "batch_mean_std", "batch_variance_std")
    channels = {layer.name: int(layer.gamma.shape[0]) for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    from bnaudit.measurements import to_json

    document["models"][0]["measurements"].update(
        to_json(drift(bn, float(rng.random()), n, {name: rng.normal(size=n).tolist() for name in series}) for bn, n in channels.items())
    )
    (tmp_path / "with_data.json").write_text(json.dumps(document))
    run = invoke("report", str(tmp_path / "with_data.json"), "--format", "html", "-o", str(tmp_path / "with_data.html"))
    assert run.returncode == 0, run.stderr
    with_data = (tmp_path / "with_data.html").read_text()
    assert with_data.count('<details class="channels">') == 53 and sum(channels.values()) == 26560
    assert len(with_data.encode()) <= 2 * 1024 * 1024, len(with_data.encode())


@pytest.mark.slow
def test_the_wheel_ships_the_templates(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(
        ROOT, source, symlinks=True,
        ignore=shutil.ignore_patterns(".git", "sample_models", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "benchmarks", "plugins"),
    )
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("bnaudit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n for n in names if n.startswith("bnaudit/templates/"))
    assert shipped == sorted(f"bnaudit/templates/{p.name}" for p in (ROOT / "templates").iterdir())
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"), str(wheel)], check=True, capture_output=True)
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    where = subprocess.run(
        [sys.executable, "-c", "from bnaudit.reporters.html import BUILTIN_TEMPLATES as t; print(t)"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert where.stdout.strip() == str(tmp_path / "site" / "bnaudit" / "templates"), where.stderr
    installed = subprocess.run(
        [sys.executable, "-m", "bnaudit", "check", str(ROOT / MODELS[1]), "--format", "html"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert installed.returncode == 0, installed.stderr
    assert "dropout-before-batchnorm" in installed.stdout


def shifted_statistics(model: Path, out: Path, shift: float) -> Path:
    """A statistics file (as `bnaudit merge` writes) for ``model``: every BN layer's input
    measured ``shift`` moving standard deviations off its moving mean. Read with --stats,
    BN301 runs without TensorFlow."""
    import numpy as np

    from bnaudit.analysis import statistics_file
    from bnaudit.analysis.moments import Moments
    from bnaudit.analysis.statistics import DataStatistics, LayerStatistics, fingerprint
    from bnaudit.engine import Auditor

    graph = Auditor().load(model)
    moving, layers = [], {}
    for bn in graph.batchnorms():
        arrays = graph.weights.bn_arrays(bn)
        mean, variance = arrays.moving_mean.astype(np.float64), arrays.moving_variance.astype(np.float64)
        moving.append((bn.path, arrays.moving_mean, arrays.moving_variance))
        data_mean = mean + shift * np.sqrt(variance + 1e-3)
        spread = Moments.of_observation(data_mean).merge(Moments.of_observation(data_mean))
        layers[bn.path] = LayerStatistics(bn.path, Moments.of_batch(16, data_mean, variance), spread, spread)
    graph.weights.close()
    statistics_file.save(DataStatistics(layers, 8, "inference", fingerprint(moving), samples=16, batches=2), out)
    return out


def test_the_drift_chart_draws_the_threshold_the_rule_applied(tmp_path):
    """The config's bn301.drift-score, not the default, is the dashed line, and the JSON
    records it with BN301's outcome; without the config, the default is drawn."""
    model = tmp_path / "model.keras"
    shutil.copy(ROOT / "sample_models" / "clean_conv_bn_relu.keras", model)
    stats = shifted_statistics(model, tmp_path / "stats.npz", shift=0.3)
    (tmp_path / "bnaudit.toml").write_text("[bn301]\ndrift-score = 0.0123\n")
    drawn = {}
    for config in ("bnaudit.toml", None):
        where = ("--config", str(tmp_path / "bnaudit.toml")) if config else ("--isolated",)
        run = invoke("check", "model.keras", "--stats", stats, "--select", "BN301", *where, "--format", "json", "-o", "r.json", "--format", "html", "-o", "r.html", cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        [model_json] = json.loads((tmp_path / "r.json").read_text())["models"]
        [outcome] = model_json["outcomes"]
        assert (outcome["code"], outcome["status"]) == ("BN301", "ran")
        html = (tmp_path / "r.html").read_text()
        drawn[config] = (outcome["settings"], re.findall(r'<text class="threshold"[^>]*>([^<]*)</text>', html))
    settings, labels = drawn["bnaudit.toml"]
    assert settings == {"drift-score": 0.0123, "mean-shift": 1.0, "log-variance-ratio": pytest.approx(1.3862944), "channel-fraction": 0.25}
    assert labels == ["BN301 threshold (bn301.drift-score) 0.0123"]
    settings, labels = drawn[None]
    assert settings["drift-score"] == 0.5 and labels == ["BN301 threshold (bn301.drift-score) 0.5"]
