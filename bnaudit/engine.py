"""Run the selected rules over models: load, check, collect, select.

One :class:`Auditor` holds the plugin manager and the rule set for a whole run; each
model is audited independently, so one unreadable model never stops the others.
"""

from __future__ import annotations

import glob
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pluggy

from .findings import ExitCode, Severity
from .keras_builtins import KERAS_LAYER_CLASSES
from .loaders import LoadError, check_not_lfs_pointer, is_savedmodel_dir
from .plugins import collect_rules, make_plugin_manager
from .result import AuditResult, ModelError, SkippedRule
from .rule import Rule
from .selection import Selection
from .context import RuleContext

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5", ".onnx")


@dataclass
class AuditOptions:
    """Everything that shapes an audit, whatever set it (CLI flags, config, Python caller)."""

    selection: Selection = field(default_factory=Selection)
    fail_on: Severity = Severity.ERROR
    #: Rule thresholds and plugin settings, ``"bn301.mean-shift": 0.5`` style keys.
    settings: dict[str, Any] = field(default_factory=dict)
    #: Data for the statistics rules (``--data``); None runs no data-driven rule.
    data: str | None = None
    #: Re-run inference on synthetic inputs even without data (``--inference``).
    inference: bool = False
    #: Options only the TensorFlow runtime reads (batch size, devices, tolerances...).
    runtime: dict[str, Any] = field(default_factory=dict)
    #: ``-p`` plugin modules, and ``no:NAME`` to block one.
    plugins: tuple[str, ...] = ()
    debug: bool = False


class Auditor:
    def __init__(self, options: AuditOptions | None = None, pm: pluggy.PluginManager | None = None) -> None:
        self.options = options or AuditOptions()
        self.pm = pm or make_plugin_manager(self.options.plugins)
        self.rules: dict[str, Rule] = collect_rules(self.pm)
        self.pm.hook.bnaudit_configure(settings=self.options.settings)

    def selected_rules(self) -> list[Rule]:
        return [r for c, r in self.rules.items() if self.options.selection.is_selected(c)]

    def audit(self, path: str | Path) -> AuditResult:
        path = Path(path)
        result = AuditResult(path=str(path))
        started = time.perf_counter()
        try:
            graph = self._load(path)
        except LoadError as exc:
            result.errors.append(ModelError(exc.message, hint=exc.hint))
            return result
        try:
            self._describe(graph, result)
            self._run_rules(path, graph, result)
        finally:
            if graph.weights is not None:
                graph.weights.close()
        try:
            self.pm.hook.bnaudit_modify_findings(findings=result.findings, result=result)
        except Exception as exc:  # a plugin's bug costs its own change, not the audit
            if self.options.debug:
                raise
            result.errors.append(ModelError(f"bnaudit_modify_findings failed: {type(exc).__name__}: {exc}", rule="plugin", hint="run with --debug for the traceback"))
        result.findings = [f for f in result.findings if self.options.selection.is_selected(f.code)]
        result.findings.sort(key=lambda f: (-f.severity, f.code, f.layer))
        result.meta["seconds"] = round(time.perf_counter() - started, 4)
        return result

    def _load(self, path: Path):
        if not path.is_file() and not is_savedmodel_dir(path):
            raise LoadError("no such file", "check the path")
        try:
            if path.is_file():
                check_not_lfs_pointer(path)
            graph = self.pm.hook.bnaudit_load_model(path=path)
        except LoadError:
            raise
        except OSError as exc:
            raise LoadError(f"cannot be read ({exc.strerror or exc})", "check the file's permissions") from None
        except Exception as exc:  # a loader bug or a file that defeats it: say which
            if self.options.debug:
                raise
            raise LoadError(f"could not read the model ({type(exc).__name__}: {exc})", "run with --debug for details") from None
        if graph is None:
            raise LoadError(
                "not a model file bnaudit can read",
                "bnaudit reads .keras and full-model .h5 files written by Keras 2 or 3, .onnx files and SavedModel directories",
            )
        return graph

    def _describe(self, graph, result: AuditResult) -> None:
        result.meta.update(
            format=graph.format,
            keras_version=graph.keras_version,
            **({"producer": graph.producer} if graph.producer else {}),
            model_name=graph.name,
            layers=len(graph.layers),
            batchnorm_layers=len(graph.batchnorms()),
        )
        result.measurements["layers"] = batchnorm_neighbourhoods(graph)
        result.notes.extend(graph.notes)
        # Operators of a non-Keras graph (ONNX) are opaque by design, not worth a note each.
        unknown = sorted({l.class_name for l in graph if l.class_name not in KERAS_LAYER_CLASSES and not l.module.startswith("onnx:")})
        for class_name in unknown:
            paths = [l.path for l in graph if l.class_name == class_name]
            result.notes.append(
                f"unknown layer class {class_name!r} ({', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''}): "
                "treated as an opaque layer; rules do not look through it"
            )

    def _run_rules(self, path: Path, graph, result: AuditResult) -> None:
        runtime_cache: dict[str, Any] = {}

        def runtime() -> Any:
            if "runtime" not in runtime_cache:
                from .runtime import open_runtime  # TensorFlow only from here on

                runtime_cache["runtime"] = open_runtime(path, graph, self.options)
            return runtime_cache["runtime"]

        try:
            for rule in self.selected_rules():
                reason = self._skip_reason(rule, graph)
                if reason:
                    result.skipped.append(SkippedRule(rule.code, reason))
                    continue
                rule_started = time.perf_counter()
                context = RuleContext(path, graph, rule, self.options.settings, result, runtime)
                try:
                    result.findings.extend(rule.check(context) or [])
                except LoadError as exc:
                    result.errors.append(ModelError(exc.message, rule=rule.code, hint=exc.hint))
                except Exception as exc:
                    if self.options.debug:
                        traceback.print_exc()
                    result.errors.append(
                        ModelError(f"rule crashed: {type(exc).__name__}: {exc}", rule=rule.code, hint="run with --debug for the traceback")
                    )
                result.rules_run.append(rule.code)
                result.meta.setdefault("rule_seconds", {})[rule.code] = round(time.perf_counter() - rule_started, 4)
        finally:
            closer = getattr(runtime_cache.get("runtime"), "close", None)
            if closer:
                closer()

    def _skip_reason(self, rule: Rule, graph) -> str:
        if "weights" in rule.needs and graph.weights is None:
            return graph.weights_missing or "the file holds no weights"
        if "data" in rule.needs and not self.options.data and not self.options.runtime.get("stats"):
            return "needs --data"
        if "runtime" in rule.needs and not (self.options.data or self.options.inference):
            return "needs --data or --inference"
        if graph.format == "onnx":  # re-run with ONNX Runtime: BN401, BN402, BN404 on synthetic inputs
            if "data" in rule.needs or rule.code == "BN403":
                return "not measured on ONNX files (one call path; statistics from --data need Keras)"
            if "runtime" in rule.needs and not self.options.inference:
                return "ONNX files are re-run on synthetic inputs: pass --inference"
        elif graph.format == "savedmodel" and ("runtime" in rule.needs or "data" in rule.needs):
            return "the data and inference rules run .keras and .h5 files with Keras; re-running a SavedModel is not supported"
        return ""


def batchnorm_neighbourhoods(graph) -> dict[str, dict[str, Any]]:
    """For each BN layer (in graph order), the layers up to two steps before and after it.

    Reports draw "producer -> BN -> consumer" from this without the graph, so it is kept
    in the result (and its JSON): ``{"before": [[[path, class], ...], ...], "class": ...,
    "after": [...]}``, steps nearest the BN last in ``before`` and first in ``after``.
    A step lists every branch (at most four); the walk stops where the graph branches.
    """

    def steps(layer, follow) -> list[list[list[str]]]:
        found, current = [], [layer]
        for _ in range(2):
            nxt = [n for c in current for n in follow(c)]
            if not nxt:
                break
            found.append([[n.path, n.class_name] for n in nxt[:4]])
            if len(nxt) != 1:
                break
            current = nxt
        return found

    return {
        bn.path: {"before": steps(bn, graph.producers)[::-1], "class": bn.class_name, "after": steps(bn, graph.consumers)}
        for bn in graph.batchnorms()
    }


def discover(paths: Iterable[str | Path]) -> tuple[list[Path], list[AuditResult]]:
    """Expand files, directories (recursively) and globs into model files.

    Returns the files found and, for arguments that name nothing auditable, a result
    carrying the error, so the caller reports it like any other unreadable model.
    """
    found: list[Path] = []
    problems: list[AuditResult] = []
    for raw in paths:
        path = Path(raw)
        if is_savedmodel_dir(path):
            found.append(path)
        elif path.is_dir():
            models = _models_under(path)
            if not models:
                problems.append(_problem(raw, "no .keras, .h5 or .onnx files or SavedModel directories in this directory", "pass model files or a directory holding them"))
            found.extend(models)
        elif path.exists():
            found.append(path)
        elif glob.has_magic(str(raw)):
            matches = sorted(Path(p) for p in glob.glob(str(raw), recursive=True) if Path(p).is_file())
            if not matches:
                problems.append(_problem(raw, "the pattern matches no file", "check the glob"))
            found.extend(matches)
        else:
            problems.append(_problem(raw, "no such file or directory", "check the path"))
    unique = list(dict.fromkeys(found))
    return unique, problems


def _models_under(folder: Path) -> list[Path]:
    """Model files and SavedModel directories below ``folder`` (not the files inside a SavedModel)."""
    found: list[Path] = []
    for current, dirs, files in os.walk(folder):
        here = Path(current)
        if is_savedmodel_dir(here):
            found.append(here)
            dirs.clear()
            continue
        dirs.sort()
        found.extend(here / f for f in sorted(files) if Path(f).suffix.lower() in MODEL_SUFFIXES and (here / f).is_file())
    return sorted(found)


def _problem(path: str | Path, message: str, hint: str) -> AuditResult:
    return AuditResult(path=str(path), errors=[ModelError(message, hint=hint)])


def exit_code(results: Iterable[AuditResult], fail_on: Severity) -> ExitCode:
    results = list(results)
    if any(r.errors for r in results):
        return ExitCode.ERROR
    if any(f.severity >= fail_on for r in results for f in r.findings):
        return ExitCode.FINDINGS
    return ExitCode.OK
