"""What rules measure, as typed values: one frozen dataclass per kind of measurement.

A rule yields these next to its findings; the engine keeps them in order on the
:class:`~bnaudit.result.AuditResult`, and every reporter renders them by their class (the
HTML report's tables and charts, JUnit's test cases per BN layer), never by guessing
from key names. The JSON output is assembled from them: each kind names the ``topic``
it belongs to under ``measurements`` and where inside it its :meth:`~Measured.to_dict`
goes, which gives the document the shape docs/json-schema.json describes.

The kinds bnaudit's own rules yield:

=======================  ===========================================  ===========================
kind                     class                                        JSON
=======================  ===========================================  ===========================
batchnorm-neighbourhood  :class:`BatchNormNeighbourhood`              ``layers.<bn>``
statistics-pass          :class:`StatisticsPass` (BN301-BN303)        ``statistics`` (its fields)
layer-drift              :class:`BatchNormDrift` (BN301-BN303)        ``statistics.layers.<bn>``
layer-not-measured       :class:`BatchNormNotMeasured` (BN301-BN303)  ``statistics.layers.<bn>``
train-inference          :class:`TrainInferenceComparison` (BN302)    ``train_inference``
inference-setup          :class:`InferenceSetup` (BN401-BN404)        ``inference`` (its fields)
device-comparison        :class:`DeviceComparison` (BN401)            ``inference.device_table[]``
call-path-comparison     :class:`CallPathComparison` (BN402-BN404)    ``inference.<check>[]``
checkpoint-pairing       :class:`CheckpointPairing` (``diff``)        ``diff`` (its fields)
batchnorm-change         :class:`BatchNormChange` (``diff``)          ``diff.layers.<bn>``
=======================  ===========================================  ===========================

Adding a kind is one small class here (its fields, ``kind``, ``topic``, where it goes:
``slot``, merged into the topic, keyed by ``layer`` or appended to a list) and one
renderer in :mod:`bnaudit.reporters.measurements` (``RENDERERS``); listing it in
:data:`KINDS` lets :func:`from_json` read it back (``bnaudit report``). A re-run per
execution provider is a :class:`ComparisonRow` like :class:`DeviceComparison`.
A plugin may instead yield a plain :class:`Measurement` (a topic and any JSON value):
it is merged into the document as given and shown as generic, escaped tables.

No TensorFlow, no numpy: the values are plain numbers, strings, lists and mappings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, Mapping, TypeVar

if TYPE_CHECKING:
    from .analysis.tolerances import Comparison


@dataclass(frozen=True)
class Measurement:
    """A plugin's numbers for the reports, kept under ``topic`` as given: the untyped kind.

    ``value`` is JSON-serialisable; when several rules yield a mapping under one topic
    their keys are merged. Reporters show it as generic tables, every string escaped.
    """

    topic: str
    value: Any


@dataclass(frozen=True)
class Measured:
    """Base of the typed measurements: where a kind goes in the JSON and how it is named.

    ``slot`` says where :meth:`to_dict` is placed inside the topic's object: ``""``
    merges its fields into it; ``"<name>{layer}"`` keys it by its ``layer`` under
    ``name`` (``""`` for the topic itself); ``"<name>[]"`` appends it to a list.
    Two values with the same :attr:`identity` (the rules sharing one statistics pass
    each yield it) are kept once, the later one in the earlier one's place.
    """

    kind: ClassVar[str] = ""
    topic: ClassVar[str] = ""
    slot: ClassVar[str] = ""

    @property
    def identity(self) -> tuple:
        """What makes two values the same measurement (the later replaces the earlier)."""
        return (self.kind, getattr(self, "layer", None))

    def to_dict(self) -> dict[str, Any]:
        """The value's JSON object, exactly as it appears in the document."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "layer"}

    def place(self, topic: dict[str, Any]) -> None:
        """Put :meth:`to_dict` where ``slot`` says inside the topic's object."""
        name, _, _ = self.slot.partition("{")
        if self.slot.endswith("{layer}"):
            target = topic.setdefault(name, {}) if name else topic
            target[self.layer] = self.to_dict()  # type: ignore[attr-defined]
        elif self.slot.endswith("[]"):
            topic.setdefault(self.slot[:-2], []).append(self.to_dict())
        else:
            topic.update(self.to_dict())

    @classmethod
    def from_dict(cls: type[M], record: Any, **known: Any) -> M:
        """The value back from its JSON object (``known`` adds what the place said, the
        layer); raises :class:`ValueError` when the object is not this kind's."""
        if not isinstance(record, Mapping):
            raise ValueError(f"{cls.kind}: expected an object")
        names = {f.name for f in dataclasses.fields(cls)} - set(known)  # the layer is the key, not a field
        extra = set(record) - names
        if extra:
            raise ValueError(f"{cls.kind}: unexpected {sorted(extra)}")
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = required - set(record) - set(known)
        if missing:
            raise ValueError(f"{cls.kind}: missing {sorted(missing)}")
        return cls(**{**record, **known})


M = TypeVar("M", bound=Measured)


# -- the graph around each BN (every audit) --------------------------------------------


@dataclass(frozen=True)
class BatchNormNeighbourhood(Measured):
    """One BN layer and the layers up to two steps before and after it (every audit).

    ``before``/``after`` are steps of ``[path, class name]`` pairs, nearest the BN last
    in ``before`` and first in ``after``; a step lists every branch (at most four).
    Reports draw "producer -> BN -> consumer" from it without the graph.
    """

    kind: ClassVar[str] = "batchnorm-neighbourhood"
    topic: ClassVar[str] = "layers"
    slot: ClassVar[str] = "{layer}"

    layer: str
    class_name: str
    before: list = field(default_factory=list)
    after: list = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before, "class": self.class_name, "after": self.after}

    @classmethod
    def from_dict(cls, record: Any, **known: Any) -> "BatchNormNeighbourhood":
        if not isinstance(record, Mapping) or set(record) != {"before", "class", "after"}:
            raise ValueError(f"{cls.kind}: expected 'before', 'class' and 'after'")
        if not (isinstance(record["class"], str) and _steps(record["before"]) and _steps(record["after"])):
            raise ValueError(f"{cls.kind}: 'before' and 'after' are lists of steps of [path, class] pairs, 'class' a string")
        return cls(known["layer"], record["class"], record["before"], record["after"])


def _steps(value: Any) -> bool:
    """True for ``[[[path, class], ...], ...]``: what the reports unpack."""
    return isinstance(value, list) and all(
        isinstance(step, list) and all(isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair) for pair in step)
        for step in value
    )


# -- the statistics pass (BN301-BN303) -------------------------------------------------


@dataclass(frozen=True)
class StatisticsPass(Measured):
    """How the data statistics of one model were measured (BN301-BN303, ``bnaudit stats``).

    ``source`` is ``"data"`` (a forward pass over ``--data``) or ``"stats"`` (a merged
    statistics file); ``upstream`` the mode the BN layers before each measured one ran
    in (``"inference"`` or ``"training"``); ``seconds`` the pass's wall time; ``order``
    the order the samples were read in, when the data has one.
    """

    kind: ClassVar[str] = "statistics-pass"
    topic: ClassVar[str] = "statistics"

    samples: int
    batches: int
    batch_size: int
    upstream: str
    replicas: int
    source: str
    seconds: float
    order: str = ""

    def to_dict(self) -> dict[str, Any]:
        fields = super().to_dict()
        if not self.order:
            del fields["order"]
        return fields


@dataclass(frozen=True)
class BatchNormDrift(Measured):
    """One BN layer's input statistics on the data against its moving statistics.

    The numbers of :meth:`bnaudit.analysis.drift.LayerDrift.summary` (definitions in
    :mod:`bnaudit.analysis.drift` and docs/statistics.md): shifts in moving standard
    deviations, ``drift_score`` and ``worst_channel_kl`` in nats, ratios data/moving;
    None where no live channel defines them. ``per_channel`` (``--per-channel``) holds
    one list of ``channels`` floats per series: ``data_mean``, ``data_variance``,
    ``moving_mean``, ``moving_variance``, ``mean_shift``, ``log_variance_ratio``,
    ``symmetric_kl``, ``batch_mean_std``, ``batch_variance_std``.
    """

    kind: ClassVar[str] = "layer-drift"
    topic: ClassVar[str] = "statistics"
    slot: ClassVar[str] = "layers{layer}"

    layer: str
    channels: int
    values_per_channel: int
    drift_score: float | None
    worst_channel: int | None
    worst_channel_kl: float | None
    mean_shift: float | None
    max_mean_shift: float | None
    variance_ratio: float | None
    max_abs_log_variance_ratio: float | None
    dead_channels: int
    full_batches: int
    batch_mean_spread: float | None
    batch_variance_spread: float | None
    per_channel: Mapping[str, list] | None = None

    def to_dict(self) -> dict[str, Any]:
        fields = super().to_dict()
        if self.per_channel is None:
            del fields["per_channel"]
        return fields


@dataclass(frozen=True)
class BatchNormNotMeasured(Measured):
    """A BN layer the statistics pass reached but could not judge, and why (NaN moving
    statistics, a non-finite input on the data)."""

    kind: ClassVar[str] = "layer-not-measured"
    topic: ClassVar[str] = "statistics"
    slot: ClassVar[str] = "layers{layer}"

    layer: str
    channels: int
    not_measured: str


@dataclass(frozen=True)
class TrainInferenceComparison(Measured):
    """The model's outputs with BN on batch statistics against moving statistics (BN302).

    ``cka`` is linear CKA in [0, 1], ``top1_agreement`` the fraction of
    ``compared_predictions`` whose top-1 class agrees; None where not computable, and
    ``not_judged`` says why.
    """

    kind: ClassVar[str] = "train-inference"
    topic: ClassVar[str] = "train_inference"

    cka: float | None
    top1_agreement: float | None
    compared_predictions: int
    samples: int
    not_judged: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        fields = super().to_dict()
        if self.not_judged:
            fields["not_judged"] = list(self.not_judged)
        else:
            del fields["not_judged"]
        return fields

    @classmethod
    def from_dict(cls, record: Any, **known: Any) -> "TrainInferenceComparison":
        value = super().from_dict(record, **known)
        return dataclasses.replace(value, not_judged=tuple(value.not_judged))


# -- the inference re-runs (BN401-BN404) -----------------------------------------------

#: The call-path comparison tables of the re-runs, in the order the JSON lists them.
CALL_PATH_CHECKS = ("batch_dependence", "call_vs_predict", "repeatability")


@dataclass(frozen=True)
class InferenceSetup(Measured):
    """How one model's inference re-runs were made (BN401-BN404).

    ``devices`` lists the TensorFlow devices that ran (``"CPU:0"``), ``reference`` the
    run every device was compared with, ``gpu`` what became of the GPUs, ``inputs`` where
    the samples came from, ``tolerance`` the ``atol``/``rtol`` applied and their source,
    ``seconds`` the wall time of each pass.
    """

    kind: ClassVar[str] = "inference-setup"
    topic: ClassVar[str] = "inference"

    devices: list
    reference: str
    gpu: str
    tf32: Any
    inputs: Mapping[str, Any]
    compute_dtype: str
    tolerance: Mapping[str, Any]
    seconds: Mapping[str, float] = field(default_factory=dict)

    def place(self, topic: dict[str, Any]) -> None:
        """Its fields, then the comparison tables (empty until rows come), then the durations."""
        fields = self.to_dict()
        seconds = fields.pop("seconds")
        topic.update(fields)
        for table in (DeviceComparison.slot[:-2], *CALL_PATH_CHECKS):
            topic.setdefault(table, [])
        topic["seconds"] = seconds


@dataclass(frozen=True)
class ComparisonRow(Measured):
    """A row of a comparison table: one output of one run against a reference run.

    Its ``comparison`` (:class:`bnaudit.analysis.tolerances.Comparison`) holds the
    errors (max, mean, 99th percentile; absolute and relative) and the elements beyond
    tolerance; the JSON row is the comparison's own. Kinds of rows (per device, per
    call path, per execution provider...) subclass this with a ``comparison`` field.
    """

    @property
    def identity(self) -> tuple:
        c = self.comparison  # type: ignore[attr-defined]
        return (self.kind, c.output, c.run, c.reference)

    @property
    def passed(self) -> bool:
        return self.comparison.passed  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return self.comparison.to_dict()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DeviceComparison(ComparisonRow):
    """One output on one device against the reference run (BN401): a row of the device table."""

    kind: ClassVar[str] = "device-comparison"
    topic: ClassVar[str] = "inference"
    slot: ClassVar[str] = "device_table[]"

    comparison: "Comparison"

    @classmethod
    def from_dict(cls, record: Any, **known: Any):
        return cls(_comparison(record))


@dataclass(frozen=True)
class CallPathComparison(ComparisonRow):
    """One output of one call path against another run of the same model (BN402-BN404).

    ``check`` is the table it belongs to (:data:`CALL_PATH_CHECKS`): a sample alone
    against in its batch (BN402), ``model(x)`` against ``model.predict`` (BN403), a
    repeated run against the first (BN404).
    """

    kind: ClassVar[str] = "call-path-comparison"
    topic: ClassVar[str] = "inference"
    slot: ClassVar[str] = "{check}[]"

    check: str
    comparison: "Comparison"

    @property
    def identity(self) -> tuple:
        return (*super().identity, self.check)

    def place(self, topic: dict[str, Any]) -> None:
        topic.setdefault(self.check, []).append(self.to_dict())

    @classmethod
    def from_dict(cls, record: Any, **known: Any):
        if known.get("check") not in CALL_PATH_CHECKS:
            raise ValueError(f"{cls.kind}: unknown check {known.get('check')!r}")
        return cls(known["check"], _comparison(record))


# -- two checkpoints of one model (``bnaudit diff``) ----------------------------------


@dataclass(frozen=True)
class CheckpointPairing(Measured):
    """How the BN layers of the base checkpoint were paired with the tuned model's.

    ``base`` is the base checkpoint's path, ``nested_base`` the tuned model's nested
    model that holds the base (empty: the same architecture), ``pairs`` the number of
    BN layers paired; the ``unpaired_*`` lists name the BN layers left without a
    counterpart (:mod:`bnaudit.checkpoints`).
    """

    kind: ClassVar[str] = "checkpoint-pairing"
    topic: ClassVar[str] = "diff"

    base: str
    nested_base: str
    pairs: int
    unpaired_base: list
    unpaired_tuned: list


@dataclass(frozen=True)
class BatchNormChange(Measured):
    """One paired BN layer's change from the base checkpoint to the tuned one.

    ``layer`` is the tuned model's path, ``base`` its counterpart's, ``paired_by``
    ``"path"`` or ``"position"``. ``mean_shift``: max over channels of |moving mean
    change| / sqrt(base moving variance + epsilon), in base standard deviations;
    ``std_change``: max over channels of the standard deviation's relative change (a
    fraction); ``gamma_change``/``beta_change``: max absolute change, None where the
    layer has no scale/center. Definitions: :mod:`bnaudit.checkpoints`.
    """

    kind: ClassVar[str] = "batchnorm-change"
    topic: ClassVar[str] = "diff"
    slot: ClassVar[str] = "layers{layer}"

    layer: str
    base: str
    paired_by: str
    channels: int
    #: None where that file's format records no trainable flag (ONNX, a serving graph).
    frozen_base: bool | None
    frozen_tuned: bool | None
    mean_shift: float
    std_change: float
    gamma_change: float | None
    beta_change: float | None
    statistics_changed: bool


def _comparison(record: Any) -> "Comparison":
    """A :class:`Comparison` from its JSON row ("nan"/"inf" strings back to floats)."""
    from .analysis.tolerances import Comparison

    if not isinstance(record, Mapping):
        raise ValueError("a comparison row is an object")
    names = [f.name for f in dataclasses.fields(Comparison)]
    if set(record) - {"passed"} != set(names) or not isinstance(record["worst"], Mapping):
        raise ValueError(f"a comparison row holds exactly {names} and 'passed'")
    values = {name: _number(record[name]) for name in names}
    values["worst"] = {k: _number(v) for k, v in record["worst"].items()}
    for name in ("output", "run", "reference", "path"):
        if not isinstance(values[name], str):
            raise ValueError(f"a comparison row's {name!r} is a string")
    if not all(isinstance(values[n], int) and not isinstance(values[n], bool) for n in ("mismatched", "elements")):
        raise ValueError("a comparison row counts elements with integers")
    return Comparison(**values)


def _number(value: Any) -> Any:
    """JSON's stand-ins for non-finite floats ("nan", "inf", "-inf") back to floats."""
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return value


#: Every kind :func:`from_json` reads back, by topic and in the order tried.
KINDS: tuple[type[Measured], ...] = (
    BatchNormNeighbourhood,
    StatisticsPass,
    BatchNormDrift,
    BatchNormNotMeasured,
    TrainInferenceComparison,
    InferenceSetup,
    DeviceComparison,
    CallPathComparison,
    CheckpointPairing,
    BatchNormChange,
)


# -- a result's measurements: kept in order, to and from JSON ---------------------------


def add(items: list, item: "Measured | Measurement") -> None:
    """Keep ``item`` in ``items``: a typed value replaces an earlier one of the same
    identity in its place (several rules yield the one statistics pass); a plain
    :class:`Measurement` is appended (mappings under one topic merge in :func:`to_json`)."""
    if isinstance(item, Measured):
        for i, old in enumerate(items):
            if isinstance(old, Measured) and old.identity == item.identity:
                items[i] = item
                return
    items.append(item)


def of_kind(items: Iterable[Any], cls: type[M]) -> list[M]:
    """The values of one kind, in the order they were measured."""
    return [item for item in items if isinstance(item, cls)]


def to_json(items: Iterable["Measured | Measurement"]) -> dict[str, Any]:
    """The ``measurements`` object of the JSON output: topics in the order first measured."""
    document: dict[str, Any] = {}
    for item in items:
        if isinstance(item, Measurement):
            current = document.get(item.topic)
            document[item.topic] = _merged(current, item.value) if isinstance(current, dict) and isinstance(item.value, dict) else item.value
        else:
            topic = document.setdefault(item.topic, {})
            if not isinstance(topic, dict):  # a plugin's plain value under a typed topic
                topic = document[item.topic] = {}
            item.place(topic)
    return document


def _merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    for key, value in new.items():
        merged[key] = _merged(merged[key], value) if isinstance(merged.get(key), dict) and isinstance(value, dict) else value
    return merged


def from_json(document: Mapping[str, Any]) -> list["Measured | Measurement"]:
    """The measurements a JSON ``measurements`` object was written from.

    A topic is read back as typed values only when every part of it is one of
    :data:`KINDS`; otherwise (a plugin's topic, a hand-edited document) the whole topic
    stays a plain :class:`Measurement`, so nothing is lost when it is written again.
    """
    items: list[Measured | Measurement] = []
    for topic, value in document.items():
        kinds = [k for k in KINDS if k.topic == topic]
        try:
            items += _typed(kinds, value) if kinds else [Measurement(topic, value)]
        except (ValueError, TypeError):
            items.append(Measurement(topic, value))
    return items


def _typed(kinds: list[type[Measured]], value: Any) -> list[Measured]:
    if not isinstance(value, Mapping):
        raise ValueError("a typed topic is an object")
    rest = dict(value)
    found: list[Measured] = []
    keyed = [k for k in kinds if k.slot.endswith("{layer}")]
    for name in dict.fromkeys(k.slot[: -len("{layer}")] for k in keyed):
        records = rest.pop(name) if name else rest
        if name:
            if not isinstance(records, Mapping):
                raise ValueError(f"{name!r} is an object")
        else:
            rest = {}
        for layer, record in records.items():
            found.append(_first(k for k in keyed if k.slot == f"{name}{{layer}}")(record, layer=str(layer)))
    for kind in (k for k in kinds if k.slot.endswith("[]")):
        names = CALL_PATH_CHECKS if kind.slot == "{check}[]" else (kind.slot[:-2],)
        for name in names:
            rows = rest.pop(name, [])
            if not isinstance(rows, list):
                raise ValueError(f"{name!r} is a list")
            known = {"check": name} if kind.slot == "{check}[]" else {}
            found += [kind.from_dict(row, **known) for row in rows]
    if rest:  # the topic's own fields come first, as they were placed
        whole = next((k for k in kinds if not k.slot), None)
        if whole is None:
            raise ValueError(f"unexpected {sorted(rest)}")
        found.insert(0, whole.from_dict(rest))
    return found


def _first(kinds: Iterator[type[Measured]]):
    """A reader trying each kind in turn, the first that accepts the record wins."""
    candidates = list(kinds)

    def read(record: Any, **known: Any) -> Measured:
        problems = []
        for kind in candidates:
            try:
                return kind.from_dict(record, **known)
            except (ValueError, TypeError) as exc:
                problems.append(str(exc))
        raise ValueError("; ".join(problems))

    return read


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None: what a
    chart may draw from a value read back from a document."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
