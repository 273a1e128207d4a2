"""What a rule sees while it checks one model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .findings import Finding, Severity
from .loaders import LoadError
from .printable import exception_line
from .result import ModelError
from .rule import setting_key

if TYPE_CHECKING:
    from .checkpoints import Checkpoints
    from .graph import Layer, ModelGraph
    from .loaders.arrays import BNArrays
    from .rule import Rule


class RuleContext:
    """The model under audit, the rule's settings, and a way to make findings.

    A rule never edits the result: it yields findings, :class:`~bnaudit.rule.Measurement`
    and :class:`~bnaudit.rule.Note` values, or raises :class:`~bnaudit.rule.SkipRule`,
    and the engine records them with the rule's outcome.

    ``runtime`` is created on first use and shared by every rule of the same model, so
    one forward pass serves all the rules that need statistics. ``base`` is the pairing
    with an earlier checkpoint (:class:`bnaudit.checkpoints.Checkpoints`) for the rules
    that need "base" (``bnaudit diff``), None otherwise.
    """

    def __init__(
        self,
        model_path: Path,
        graph: "ModelGraph",
        rule: "Rule",
        settings: dict[str, Any],
        runtime: Callable[[], Any],
        base: "Checkpoints | None" = None,
    ) -> None:
        self.model_path = model_path
        self.graph = graph
        self.rule = rule
        self.settings = settings
        self._runtime = runtime
        self.base = base

    @property
    def runtime(self) -> Any:
        return self._runtime()

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """What several rules of this model need (one statistics pass, one set of re-runs),
        computed once through the runtime.

        When computing it fails, the failure becomes one :class:`ModelError` of the rule
        that tried; that rule and every later one that asks raise :class:`RuleStopped`
        with it, and the engine records the first as failed and the others as skipped,
        all named by that one error: one cause, one error. Two computations that fail for
        the same reason (a ``--data`` that fits neither the statistics pass nor the
        re-runs) share the first one's error.
        """
        failures: list[ModelError] = self.runtime.memo("shared failures", list)

        def attempt() -> Any:
            try:
                return compute()
            except Exception as error:  # noqa: BLE001 - recorded, and re-raised as RuleStopped
                new = error_from(error, self.rule.code)
                same = next((old for old in failures if (old.message, old.hint) == (new.message, new.hint)), None)
                if same is None:
                    failures.append(new)
                return _SharedFailure(same or new, error)

        outcome = self.runtime.memo(key, attempt)
        if isinstance(outcome, _SharedFailure):
            raise RuleStopped(outcome.error) from outcome.cause
        return outcome

    def setting(self, key: str, default: Any = None) -> Any:
        """A rule threshold: ``settings["bn301.mean-shift"]`` style keys, lower-case code.

        Without ``default``, the default the rule declared (``@rule(settings=...)``).
        """
        if default is None:
            default = self.rule.settings.get(key)
        return self.settings.get(setting_key(self.rule, key), default)

    def bn_arrays(self, layer: "Layer") -> "BNArrays":
        if self.graph.weights is None:
            raise LoadError("the file holds no weights")
        return self.graph.weights.bn_arrays(layer)

    def finding(
        self,
        layer: "Layer | str",
        message: str,
        *,
        details: dict[str, Any] | None = None,
        fix: str = "",
        severity: Severity | None = None,
    ) -> Finding:
        return Finding(
            code=self.rule.code,
            name=self.rule.name,
            severity=severity or self.rule.severity,
            message=message,
            model=str(self.model_path),
            layer=layer if isinstance(layer, str) else layer.path,
            details=details or {},
            fix=fix,
        )


class RuleStopped(Exception):
    """A rule could not run because of ``error``, which may have stopped other rules too."""

    def __init__(self, error: ModelError) -> None:
        super().__init__(error.message)
        self.error = error


class _SharedFailure:
    """A shared computation that failed: the error to report, and the exception behind it."""

    def __init__(self, error: ModelError, cause: Exception) -> None:
        self.error = error
        self.cause = cause


def error_from(exc: Exception, code: str) -> ModelError:
    """The one-line error of rule ``code`` for ``exc``: a :class:`LoadError` says what to
    do; anything else is a crash of the rule."""
    if isinstance(exc, LoadError):
        return ModelError(exc.message, rule=code, hint=exc.hint)
    return ModelError(f"rule crashed: {exception_line(exc)}", rule=code, hint="run with --debug for the traceback")
