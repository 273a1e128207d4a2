"""Run the selected rules over models: load, check, collect, select.

One :class:`Auditor` holds the plugin manager and the rule set for a whole run, built
once (``bnaudit_register_rules`` and ``bnaudit_configure`` are called once per run);
each model is audited independently, with its own options where the config gives it
some (per-file ignores, data per glob), so one unreadable model never stops the others.
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

from .findings import ExitCode, Finding, Severity
from .graph import ConfigError, ModelGraph
from .keras_builtins import KERAS_LAYER_CLASSES
from .loaders import LoadError, check_not_lfs_pointer, is_savedmodel_dir
from .options import RuntimeOptions, check_selection, check_settings
from .plugins import collect_rules, make_plugin_manager
from .context import RuleContext, RuleStopped, error_from
from .measurements import BatchNormNeighbourhood, Measured, Measurement, add
from .result import AuditResult, ModelError, RuleOutcome, Status
from .rule import Note, Rule, SkipRule, effective_settings
from .selection import Selection

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5", ".onnx")
#: The file that marks a TensorFlow SavedModel directory (``tf.saved_model.save``, ``model.export``).
SAVED_MODEL_FILE = "saved_model.pb"


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
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    #: ``-p`` plugin modules, and ``no:NAME`` to block one.
    plugins: tuple[str, ...] = ()
    debug: bool = False
    #: Run exactly the static rules (``--static``): no data, no TensorFlow, whatever the config says.
    static: bool = False


class Auditor:
    """The plugin manager, the rules and the settings of one run.

    ``options`` are the run's; :meth:`audit` takes a model's own options (the run's with
    that model's per-file ignores and data) without rebuilding anything.
    """

    def __init__(self, options: AuditOptions | None = None, pm: pluggy.PluginManager | None = None) -> None:
        self.options = options or AuditOptions()
        self.pm = pm or make_plugin_manager(self.options.plugins)
        self.rules: dict[str, Rule] = collect_rules(self.pm)
        self.pm.hook.bnaudit_configure(settings=self.options.settings)

    def check_options(self, keys: tuple[str, str, str] = ("select", "ignore", "extend-select")) -> None:
        """Raise :class:`~bnaudit.options.OptionsError` for a selected code or a setting
        that matches no rule of this run (its plugins included); ``keys`` name the lists."""
        check_selection(self.options.selection, self.rules, keys)
        check_settings(self.options.settings, self.rules)

    def selected_rules(self, options: AuditOptions | None = None, pair: bool = False) -> list[Rule]:
        """The selected rules of ``check`` (one model), or of ``diff`` (``pair``): those
        that compare with a base checkpoint (they need "base")."""
        options = options or self.options
        return [
            r for c, r in self.rules.items()
            if options.selection.is_selected(c) and (r.static or not options.static) and ("base" in r.needs) == pair
        ]

    def audit(self, path: str | Path, options: AuditOptions | None = None) -> AuditResult:
        """Audit one model with ``options`` (default: the run's); never raises for a bad file."""
        options = options or self.options
        path = Path(path)
        result = AuditResult(path=str(path))
        started = time.perf_counter()
        try:
            graph = self.load(path)
        except LoadError as exc:
            result.errors.append(ModelError(exc.message, hint=exc.hint))
            return result
        try:
            self._describe(graph, result)
            self._run_rules(path, graph, result, options)
        finally:
            if graph.weights is not None:
                graph.weights.close()
        return self._finish(result, options, started, graph)

    def audit_pair(self, base_path: str | Path, tuned_path: str | Path, options: AuditOptions | None = None) -> AuditResult:
        """Run the rules that compare checkpoints (``bnaudit diff``) on ``tuned_path``.

        The result is the tuned model's, with the pairing and each pair's change among its
        measurements (:class:`~bnaudit.measurements.CheckpointPairing`,
        :class:`~bnaudit.measurements.BatchNormChange`) and ``meta["base"]``. An
        unreadable file or two unrelated models is an error of the result, with no rule;
        never raises for a bad file.
        """
        from .checkpoints import pair_checkpoints

        options = options or self.options
        base_path, tuned_path = Path(base_path), Path(tuned_path)
        result = AuditResult(path=str(tuned_path), meta={"base": str(base_path)})
        started = time.perf_counter()
        graphs = []
        try:
            for role, path in (("BASE", base_path), ("TUNED", tuned_path)):
                try:
                    graphs.append(self.load(path))
                except LoadError as exc:
                    raise LoadError(f"{role} {path}: {exc.message}", exc.hint) from None
            base, tuned = graphs
            self._describe(tuned, result)
            try:
                checkpoints = pair_checkpoints(base, tuned, str(base_path))
            except LoadError as exc:  # about the pair: both paths, then what is wrong
                raise LoadError(f"BASE {base_path}, TUNED {tuned_path}: {exc.message}", exc.hint) from None
            except OSError:
                raise
            except Exception as exc:  # a file that defeats the pairing: say so, on one line
                if self.options.debug:
                    raise
                raise LoadError(f"could not compare the models ({type(exc).__name__}: {exc})", "run with --debug for details") from None
            for item in checkpoints.measurements():
                add(result.measurements, item)
            for role, paths in (("BASE", checkpoints.unpaired_base), ("TUNED", checkpoints.unpaired_tuned)):
                if paths:
                    listed = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
                    result.notes.append(f"{len(paths)} BN layer{'s' if len(paths) != 1 else ''} of {role} without a counterpart, not compared: {listed}")
            if checkpoints.pairs and all(p.paired_by == "position" and p.base.path.endswith("/" + p.tuned.path) for p in checkpoints.pairs):
                # BASE nests TUNED's layers, the transfer-learning shape the other way round
                result.notes.append("BASE holds TUNED's BN layers inside a nested model: if TUNED is the model before fine-tuning, give it first (bnaudit diff BASE TUNED)")
            self._run_rules(tuned_path, tuned, result, options, base=checkpoints)
        except LoadError as exc:
            result.errors.append(ModelError(exc.message, hint=exc.hint))
            return result
        finally:
            for graph in graphs:
                if graph.weights is not None:
                    graph.weights.close()
        return self._finish(result, options, started, graphs[-1] if len(graphs) == 2 else None)

    def _finish(self, result: AuditResult, options: AuditOptions, started: float, graph: "ModelGraph | None" = None) -> AuditResult:
        """Let plugins adjust the findings, apply the selection, order them, time the audit.

        Findings are ordered by severity, then code, then where their layer stands in the
        model's layer list (``block_2`` before ``block_10``, as the network runs), as a
        linter orders by line; findings on no layer of ``graph`` come last, by name.
        """
        try:
            self.pm.hook.bnaudit_modify_findings(findings=result.findings, result=result)
        except Exception as exc:  # a plugin's bug costs its own change, not the audit
            if self.options.debug:
                raise
            result.errors.append(ModelError(f"bnaudit_modify_findings failed: {type(exc).__name__}: {exc}", rule="plugin", hint="run with --debug for the traceback"))
        result.findings = [f for f in result.findings if options.selection.is_selected(f.code)]
        position = {layer.path: index for index, layer in enumerate(graph)} if graph is not None else {}
        result.findings.sort(key=lambda f: (-f.severity, f.code, position.get(f.layer, len(position)), f.layer))
        result.meta["seconds"] = round(time.perf_counter() - started, 4)
        return result

    def first_read(self, path: str | Path) -> AuditResult | None:
        """Read what the static rules read (the config, every BN vector) and keep nothing.

        A child process runs this under its reading limits before an audit that runs
        the model, since a native crash or endless loop comes from reading the file.
        Returns the result with the error when the model cannot be loaded (the audit
        would fail the same way), else None: a vector refused is left to the rule that
        reads it, which reports it as a plain audit does.
        """
        try:
            graph = self.load(Path(path))
        except LoadError as exc:
            return AuditResult(str(path), errors=[ModelError(exc.message, hint=exc.hint)])
        try:
            read_batchnorm_vectors(graph)
        except (LoadError, ConfigError):
            pass
        return None

    def load(self, path: Path):
        """The model's graph (weights opened lazily); :class:`LoadError` when it cannot be read."""
        if path.is_dir() and not is_savedmodel_dir(path):
            raise LoadError("a directory, not a model file or SavedModel directory", "audit the models in it with bnaudit check DIR or bnaudit.audit_many(DIR)")
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
        result.measurements.extend(batchnorm_neighbourhoods(graph))
        result.notes.extend(graph.notes)
        if not graph.batchnorms():
            result.notes.append(
                "the model holds no BatchNormalization layer (nested models and wrappers included): "
                "no BN rule had a layer to check"
            )
        # Operators of a non-Keras graph (ONNX, a SavedModel's serving ops) are opaque by design, not worth a note each.
        unknown = sorted({l.class_name for l in graph if l.class_name not in KERAS_LAYER_CLASSES and not l.module.startswith(("onnx:", "tensorflow:"))})
        for class_name in unknown:
            paths = [l.path for l in graph if l.class_name == class_name]
            result.notes.append(
                f"unknown layer class {class_name!r} ({', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''}): "
                "treated as an opaque layer; rules do not look through it"
            )

    def _run_rules(self, path: Path, graph, result: AuditResult, options: AuditOptions, base: Any = None) -> None:
        runtime_cache: dict[str, Any] = {}

        def runtime() -> Any:
            if "runtime" not in runtime_cache:
                from .runtime import open_runtime  # TensorFlow only from here on

                runtime_cache["runtime"] = open_runtime(path, graph, options)
            return runtime_cache["runtime"]

        try:
            for rule in self.selected_rules(options, pair=base is not None):
                reason = _skip_reason(rule, graph, options)
                if reason:
                    result.outcomes.append(RuleOutcome(rule.code, Status.SKIPPED, reason=reason))
                    continue
                rule_started = time.perf_counter()
                context = RuleContext(path, graph, rule, options.settings, runtime, base)
                outcome = self._check(rule, context, result)
                if outcome.status is Status.RAN:
                    outcome.settings = effective_settings(rule, options.settings)
                result.outcomes.append(outcome)
                result.meta.setdefault("rule_seconds", {})[rule.code] = round(time.perf_counter() - rule_started, 4)
        finally:
            closer = getattr(runtime_cache.get("runtime"), "close", None)
            if closer:
                closer()

    def _check(self, rule: Rule, context: RuleContext, result: AuditResult) -> RuleOutcome:
        """Run one rule, keep what it yields, and say how it ended.

        An error shared by several rules (:class:`RuleStopped`) is recorded once: the
        rule that met it first failed with it, each later one is skipped pointing at it,
        and the error names them all.
        """
        try:
            for item in rule.check(context) or ():
                record(result, item)
        except SkipRule as skip:
            return RuleOutcome(rule.code, Status.SKIPPED, reason=str(skip))
        except RuleStopped as stopped:
            error = stopped.error
            if error.rule != rule.code:
                error.rules.append(rule.code)
                return RuleOutcome(rule.code, Status.SKIPPED, reason=f"not checked: see the error of {error.rule}")
            if self.options.debug and not isinstance(stopped.__cause__, LoadError):
                traceback.print_exception(stopped.__cause__)
            result.errors.append(error)
            return RuleOutcome(rule.code, Status.FAILED, error=error)
        except (LoadError, ConfigError) as exc:
            exc = exc if isinstance(exc, LoadError) else LoadError(str(exc), "the file was not written by Keras as saved")
            first = next((e for e in result.errors if e.message == exc.message), None)
            if first is not None:  # one broken array fails every weights rule: say it once
                first.rules.append(rule.code)
                return RuleOutcome(rule.code, Status.SKIPPED, reason=f"not checked: see the error of {first.rule}")
            error = error_from(exc, rule.code)
            result.errors.append(error)
            return RuleOutcome(rule.code, Status.FAILED, error=error)
        except Exception as exc:
            if self.options.debug and not isinstance(exc, LoadError):
                traceback.print_exc()
            error = error_from(exc, rule.code)
            result.errors.append(error)
            return RuleOutcome(rule.code, Status.FAILED, error=error)
        return RuleOutcome(rule.code, Status.RAN)



def read_batchnorm_vectors(graph) -> None:
    """Read every BN vector of ``graph`` once, as the weights rules read them, then close
    its weights: a vector ``check`` refuses raises :class:`LoadError` (or ``ConfigError``)."""
    if graph.weights is None:
        return
    try:
        for bn in graph.batchnorms():
            graph.weights.bn_arrays(bn)
    finally:
        graph.weights.close()


#: What each runner that re-runs a model cannot measure, and why (the other data and
#: inference rules it runs; see ``ModelGraph.runner``).
NOT_MEASURED = {
    "onnxruntime": {
        "BN403": "not measured on ONNX files (one call path)",
        "BN302": (
            "not measured on ONNX files: an ONNX BatchNormalization runs on its stored statistics, and the file "
            "no longer says which BN layers trained; audit the .keras original for BN302"
        ),
    },
    "serving": {
        "BN403": "not measured on a SavedModel without keras_metadata.pb: its serving signature is its one call path (no model(x) beside predict)",
        **dict.fromkeys(("BN301", "BN302", "BN303"), (
            "not measured on a SavedModel without keras_metadata.pb: its serving signature gives the model's outputs "
            "only, not each BN layer's input; audit the .keras file it was exported from for this rule"
        )),
    },
}
#: Runners that re-run a model on synthetic inputs only, whatever ``--data`` holds.
SYNTHETIC_ONLY = {
    "onnxruntime": "ONNX files are re-run on synthetic inputs: pass --inference",
    "serving": "SavedModels without keras_metadata.pb are re-run on synthetic inputs: pass --inference",
}


def _skip_reason(rule: Rule, graph, options: AuditOptions) -> str:
    """Why ``rule`` cannot run on this model with these options; empty when it can."""
    reruns = "runtime" in rule.needs or "data" in rule.needs
    if rule.code in graph.not_recorded:
        return graph.not_recorded[rule.code]
    not_measured = NOT_MEASURED.get(graph.runner, {}).get(rule.code, "") if reruns else ""
    if "weights" in rule.needs and graph.weights is None and not not_measured:
        return graph.weights_missing or "the file holds no weights"
    if "data" in rule.needs and not options.data and not options.runtime.statistics.stats:
        return "needs --data"
    if "runtime" in rule.needs and not (options.data or options.inference):
        return "needs --data or --inference"
    if not reruns:
        return ""
    if not graph.runner:
        return (
            "the data and inference rules run .keras and .h5 files and tf-keras SavedModels with Keras, .onnx files "
            f"with ONNX Runtime and other SavedModels through their serving signature; re-running a {graph.format} model is not supported"
        )
    if not_measured:
        return not_measured
    if graph.runner in SYNTHETIC_ONLY and "data" not in rule.needs and not options.inference:
        return SYNTHETIC_ONLY[graph.runner]
    return ""


def record(result: AuditResult, item: Any) -> None:
    """Put one thing a rule yielded where it belongs in ``result``.

    A typed measurement yielded again (the rules sharing one statistics pass each yield
    it) is kept once; a plugin's plain mappings under one topic merge key by key in the
    JSON; a note is kept once.
    """
    if isinstance(item, Finding):
        result.findings.append(item)
    elif isinstance(item, (Measured, Measurement)):
        add(result.measurements, item)
    elif isinstance(item, Note):
        if item.text not in result.notes:
            result.notes.append(item.text)
    else:
        raise TypeError(f"a rule yielded {type(item).__name__}; rules yield Finding, Measurement or Note")


def batchnorm_neighbourhoods(graph) -> list[BatchNormNeighbourhood]:
    """For each BN layer (in graph order), the layers up to two steps before and after it.

    Reports draw "producer -> BN -> consumer" from these without the graph, so they are
    kept in the result (and its JSON, ``measurements.layers``); steps nearest the BN
    last in ``before`` and first in ``after``. A step lists every branch (at most four);
    the walk stops where the graph branches.
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

    return [
        BatchNormNeighbourhood(bn.path, bn.class_name, steps(bn, graph.producers)[::-1], steps(bn, graph.consumers))
        for bn in graph.batchnorms()
    ]


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
            if not models and (path / "variables").is_dir():  # what a SavedModel keeps besides its graph
                problems.append(_problem(raw, f"this looks like a SavedModel (it has variables/) but holds no {SAVED_MODEL_FILE}", "the SavedModel is incomplete: copy or save it again"))
            elif not models:
                problems.append(_problem(raw, "no .keras, .h5, .hdf5 or .onnx files or SavedModel directories in this directory", "pass model files or a directory holding them"))
            found.extend(models)
        elif path.name == SAVED_MODEL_FILE and path.is_file():
            problems.append(_problem(raw, "the graph file of a TensorFlow SavedModel, not a model by itself", f"pass its directory: bnaudit check {path.parent}"))
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
