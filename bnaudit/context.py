"""What a rule sees while it checks one model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .findings import Finding, Severity
from .loaders import LoadError
from .result import SkippedRule

if TYPE_CHECKING:
    from .graph import Layer, ModelGraph
    from .loaders.arrays import BNArrays
    from .result import AuditResult
    from .rule import Rule


class RuleContext:
    """The model under audit, the rule's settings, and a way to report findings.

    ``runtime`` is created on first use and shared by every rule of the same model, so
    one forward pass serves all the rules that need statistics.
    """

    def __init__(
        self,
        model_path: Path,
        graph: "ModelGraph",
        rule: "Rule",
        settings: dict[str, Any],
        result: "AuditResult",
        runtime: Callable[[], Any],
    ) -> None:
        self.model_path = model_path
        self.graph = graph
        self.rule = rule
        self.settings = settings
        self.result = result
        self._runtime = runtime

    @property
    def runtime(self) -> Any:
        return self._runtime()

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """What several rules of this model need (one statistics pass, one set of re-runs),
        computed once through the runtime.

        When computing it fails, the rule that tried reports the error and every later
        rule is listed as skipped, pointing at it, and gets None: one cause, one error.
        """

        def attempt() -> Any:
            try:
                return compute()
            except Exception as error:
                return _SharedFailure(error, self.rule.code)

        outcome = self.runtime.memo(key, attempt)
        if isinstance(outcome, _SharedFailure):
            if outcome.rule == self.rule.code:
                raise outcome.error
            self.result.skipped.append(SkippedRule(self.rule.code, f"not checked: see the error of {outcome.rule}"))
            return None
        return outcome

    def setting(self, key: str, default: Any = None) -> Any:
        """A rule threshold: ``settings["bn301.mean-shift"]`` style keys, lower-case code.

        Without ``default``, the default the rule declared (``@rule(settings=...)``).
        """
        if default is None:
            default = self.rule.settings.get(key)
        return self.settings.get(f"{self.rule.code.lower()}.{key}", default)

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


class _SharedFailure:
    """A shared computation that failed, and the rule that reports it."""

    def __init__(self, error: Exception, rule: str) -> None:
        self.error = error
        self.rule = rule
