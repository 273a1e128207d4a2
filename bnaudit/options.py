"""The options of the TensorFlow-backed rules as frozen dataclasses, and the one
validation that the command line, the config file and ``bnaudit.audit()`` go through.

A misspelt option that is silently ignored is a CI gate that silently lets things
through, so every way in checks the same things and raises :class:`OptionsError` naming
the key: an unknown option (``batchsize``), a value of the wrong type, a rule code or
prefix that matches no rule, a threshold its rule does not declare.

Runtime options are given flat (``batch_size=64, devices="CPU:1"``: the keyword names
of :func:`bnaudit.audit`, the ``--flag`` names with ``_``) and land in the dataclass that
reads them: :class:`RuntimeOptions` (what both the statistics pass and the re-runs read),
:class:`StatisticsOptions` (BN3xx) and :class:`InferenceOptions` (BN4xx).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from .rule import Rule
    from .selection import Selection


class OptionsError(ValueError):
    """An option, threshold or rule code that bnaudit does not know, or a value of the wrong type."""


@dataclass(frozen=True)
class StatisticsOptions:
    """How the statistics pass behind BN301-BN303 runs (``--data``) or what it reads (``--stats``)."""

    #: BN layers before the measured one normalize with moving statistics ("inference")
    #: or with batch statistics ("training").
    upstream: typing.Literal["inference", "training"] = "inference"
    #: Add per-channel arrays to the ``statistics`` measurement.
    per_channel: bool = False
    #: A ``.npz`` of merged moments (``bnaudit merge``) to read instead of measuring.
    stats: str | None = None
    #: Measure only shard K of N (batches K, K+N, ...): ``(K, N)``, 1-based K.
    shard: tuple[int, int] | None = None
    #: Write the measured moments to this ``.npz``.
    save_statistics: str | None = None
    #: The terminal to draw progress on (None: no progress); not compared.
    progress_terminal: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class InferenceOptions:
    """How the BN401-BN404 re-runs compare outputs (see docs/inference.md)."""

    #: Devices compared with the first CPU, e.g. "CPU:1,GPU:0" (None: all).
    devices: str | None = None
    #: BN401 compares with the first CPU ("cpu") or with a float64 run on it ("float64").
    reference: typing.Literal["cpu", "float64"] = "cpu"
    #: Absolute and relative tolerance (None: by the model's compute dtype).
    atol: float | None = None
    rtol: float | None = None
    #: Leave TensorFloat-32 on for GPU matmuls and convolutions.
    allow_tf32: bool = False
    #: Seed of the synthetic inputs (``--inference`` without ``--data``).
    seed: int = 0


@dataclass(frozen=True)
class RuntimeOptions:
    """What every TensorFlow-backed rule reads: loading the model and reading the data."""

    #: Samples per batch of the data (None: 32).
    batch_size: int | None = None
    #: Read at most this many samples of the data (None: all; the re-runs default to 128).
    max_samples: int | None = None
    #: Let Keras load Lambda and custom layers (executes their code).
    unsafe_load: bool = False
    #: ``module:dict`` of custom layer classes, for ``unsafe_load``.
    custom_objects: str | None = None
    #: The order the data is read in: a seeded shuffle (default) or as stored.
    data_order: typing.Literal["shuffled", "sorted"] = "shuffled"
    #: The seed of the shuffled order.
    data_seed: int = 0
    statistics: StatisticsOptions = field(default_factory=StatisticsOptions)
    inference: InferenceOptions = field(default_factory=InferenceOptions)

    def replace(self, **values: Any) -> "RuntimeOptions":
        """A copy with flat ``values`` changed (checked as :func:`runtime_options` checks them)."""
        return runtime_options(values, self)


_GROUPS = {"": RuntimeOptions, "statistics": StatisticsOptions, "inference": InferenceOptions}
#: Flat option name -> (group attribute, type hint); "" is :class:`RuntimeOptions` itself.
#: (Each class's hints are evaluated once: ``get_type_hints`` evaluates every annotation.)
RUNTIME_KEYS: dict[str, tuple[str, Any]] = {
    f.name: (group, hints[f.name])
    for group, cls in _GROUPS.items()
    for hints in (typing.get_type_hints(cls),)
    for f in dataclasses.fields(cls)
    if f.name not in _GROUPS
}


def runtime_options(values: Mapping[str, Any], base: RuntimeOptions | None = None, suggest: Iterable[str] = ()) -> RuntimeOptions:
    """``base`` (default: all defaults) with the flat ``values`` applied.

    Raises :class:`OptionsError` naming the key for an unknown option (with the nearest
    known one, among the runtime options and ``suggest``: the other keywords of the
    caller, so that ``bnaudit.audit(ignor=...)`` hears of ``ignore``), or a value of the
    wrong type; None leaves an option as it is.
    """
    base = base or RuntimeOptions()
    changes: dict[str, dict[str, Any]] = {group: {} for group in _GROUPS}
    for key, value in values.items():
        if key not in RUNTIME_KEYS:
            raise OptionsError(f"unknown option {key!r}{did_you_mean(key, (*RUNTIME_KEYS, *suggest))}")
        if value is None:
            continue
        group, hint = RUNTIME_KEYS[key]
        changes[group][key] = _checked(key, value, hint)
    return dataclasses.replace(
        base,
        **changes[""],
        statistics=dataclasses.replace(base.statistics, **changes["statistics"]),
        inference=dataclasses.replace(base.inference, **changes["inference"]),
    )


def check_keywords(values: Mapping[str, Any], hints: Mapping[str, Any]) -> None:
    """Check a function's own keywords (:func:`bnaudit.fix`'s) as runtime options are
    checked: each value not None against its type in ``hints`` (``bool``, ``int``, ``str``,
    ``X | None``...). Raises :class:`OptionsError` naming the key (``option 'fold' =
    'no': expected True or False``)."""
    for key, value in values.items():
        if value is not None:
            _checked(key, value, hints[key])


def check_selection(selection: "Selection", rules: "Mapping[str, Rule]", keys: tuple[str, str, str] = ("select", "ignore", "extend-select")) -> None:
    """Every code or prefix of ``select``, ``ignore`` and ``extend-select`` must match a
    rule, and ``select`` may not be empty (a gate that runs nothing passes everything);
    the message names the list by its key in ``keys`` (``--select`` on the command line)."""
    if not selection.select:
        raise OptionsError(f"{keys[0]} is empty: it selects no rule (leave it out to run every rule, or name codes)")
    for key, codes in zip(keys, (selection.select, selection.ignore, selection.extend_select)):
        unknown = [code for code in codes if code != "ALL" and not any(known.startswith(code) for known in rules)]
        if unknown:
            raise OptionsError(f"{key} {', '.join(unknown)} {'matches' if len(unknown) == 1 else 'match'} no rule; `bnaudit rules` lists the codes")


def check_settings(settings: Mapping[str, Any], rules: "Mapping[str, Rule]") -> None:
    """Every ``"bn301.drift-score"`` key must name a rule and a threshold it declares,
    with a value of the kind of its declared default (a number, a bool, text)."""
    for key, value in settings.items():
        code, _, name = str(key).partition(".")
        if not name:
            raise OptionsError(f"setting {key!r}: settings are \"code.threshold\", like \"bn301.drift-score\"")
        check_setting(rules, code.upper(), name, value, where=f"setting {key!r}: ")


def check_setting(rules: "Mapping[str, Rule]", code: str, name: str, value: Any, where: str) -> None:
    """Threshold ``name`` of rule ``code`` must exist and ``value`` be of its kind;
    messages start with ``where`` (the key, or the config file and table)."""
    rule = rules.get(code)
    if rule is None:
        raise OptionsError(f"{where}there is no rule {code}; `bnaudit rules` lists the codes")
    if name not in rule.settings:
        declared = ", ".join(rule.settings) or "none"
        raise OptionsError(f"{where}unknown threshold {name!r}{did_you_mean(name, rule.settings)} (the thresholds of {code}: {declared})")
    check_threshold(f"{code.lower()}.{name}", value, rule.settings[name], rule.ranges.get(name))


def check_threshold(key: str, value: Any, default: Any, bounds: "tuple[float | None, float | None] | None" = None) -> None:
    """A threshold takes the kind of value its declared default is (a number, a bool,
    text); a number is finite and within the rule's declared ``bounds`` (inclusive)."""
    if default is None:
        return
    number = isinstance(default, (int, float)) and not isinstance(default, bool)
    kinds: tuple[type, ...] = (int, float) if number else (type(default),)
    if not (isinstance(value, kinds) and isinstance(value, bool) == isinstance(default, bool)):
        raise OptionsError(f"{key} = {value!r}: expected a {type(default).__name__} like its default {default!r}")
    if not number:
        return
    low, high = bounds or (None, None)
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        raise OptionsError(f"{key} = {value!r}: expected {_range_text(low, high)} (default {default!r})")


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"a number from {low:g} to {high:g}"
    if low is not None:
        return f"a number >= {low:g}"
    if high is not None:
        return f"a number <= {high:g}"
    return "a finite number"


def _checked(key: str, value: Any, hint: Any) -> Any:
    """``value`` if it fits the type ``hint`` (ints accepted for floats; a list for a tuple)."""
    choices = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        if value in choices:
            return value
        raise OptionsError(f"option {key!r} = {value!r}: choose from {', '.join(map(repr, choices))}")
    if origin in (typing.Union, types.UnionType):  # "X | None": None was handled by the caller
        hint = choices[0]
        origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value) and len(value) == len(typing.get_args(hint)):
            return tuple(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
    elif hint is int:
        minimum = ZERO_ALLOWED.get(key, 1)
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return value
        raise OptionsError(f"option {key!r} = {value!r}: expected {'a positive integer' if minimum else 'an integer >= 0'}")
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, str) and value:
            return value
    elif hint is Any:
        return value
    kind = getattr(hint, "__name__", str(hint))
    raise OptionsError(f"option {key!r} = {value!r}: expected {_KINDS.get(kind, kind)}")


#: Integer options that may be 0 (a seed); every other integer option counts something.
ZERO_ALLOWED = {"seed": 0}
_KINDS = {"float": "a number >= 0", "bool": "True or False", "str": "text", "tuple": "(K, N)"}


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'batch_size'?)`` for the known key nearest ``key``; "" when none is near."""
    import difflib  # only for a misspelt key

    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
