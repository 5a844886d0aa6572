"""The artifact contract between ``training/`` (which writes ``model.onnx``) and ``service/`` (which serves it).

Everything the service must know about a model travels inside the ONNX file's ``metadata_props``
(string -> string), read at serving time with
``onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map``. This module holds the key names,
the graph's tensor names and the schema, and nothing else: it imports only the standard library so that both
sides can import it without pulling in the other's dependencies.

Keys (all values are strings; structured values are JSON):

=============================  ===============================================================================
``bnserve.contract_version``   integer, currently ``1``
``bnserve.task``               ``classification`` or ``regression``
``bnserve.feature_names``      JSON list of the input columns, in the order of ``input``'s last axis
``bnserve.class_labels``       classification: JSON list of the original class values (str, int or float), in
                               the order of the ``probabilities`` columns
``bnserve.target_names``       regression: JSON list of the target columns, in the order of ``prediction``
``bnserve.input_stats``        JSON object of training-split input statistics for covariate-shift monitoring:
                               ``mean``, ``std`` (per feature), ``decile_edges`` (per feature: 9 inner edges),
                               ``decile_freqs`` (per feature: 10 training frequencies of the bins those edges
                               make, ``bin = searchsorted(edges, x, side="right")``), ``rows``
``bnserve.training``           JSON object: a free-form training summary (dataset, split sizes, metrics,
                               hyper-parameters, seed, bn-stats mode, EWMA-vs-precise gap, date, ...)
``bnserve.hidden_stats``       optional JSON list, one object per hidden layer in forward order: ``name``,
                               ``output`` (the graph output holding the layer's folded Gemm output, i.e. Batch
                               Norm's output, before the activation) and, per unit, the training-split
                               statistics of that output with the keys and meaning of ``input_stats``
``bnserve.adaptation``         optional JSON object, only in versions written by ``python -m training adapt``:
                               ``parent_version``, ``rows``, ``date``, ``drift_score_before``, ``layers``, ...
``bnserve.inputs``             optional JSON list, one object per feature in ``feature_names`` order (see
                               :class:`InputSpec`): ``name``, ``kind`` (``numeric``, ``categorical`` or
                               ``boolean``), ``categories`` and their training ``frequencies``, ``impute`` (the
                               value a missing cell gets inside the graph, or null: missing is refused),
                               ``missing_indicator``, ``missing_rate``. Without it every feature is numeric and
                               nothing is imputed (models written before the key existed).
=============================  ===============================================================================

Numeric features travel in the float32 input ``input`` ``[N, n_numeric]`` (NaN marks a missing cell of an
imputed feature); categorical and boolean features in the string input ``categorical`` ``[N, n_categorical]``
(the empty string marks a missing cell), each in ``feature_names`` order. The graph maps a category it never
saw in training to an "unknown" bucket; the service counts those. ``input_stats`` describe the numeric
features only.

Hidden outputs are extra graph outputs: the service runs them only for its own drift monitor and never returns
them unless a client names them.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

CONTRACT_VERSION = 1
PREFIX = "bnserve."

KEY_CONTRACT_VERSION = PREFIX + "contract_version"
KEY_TASK = PREFIX + "task"
KEY_FEATURE_NAMES = PREFIX + "feature_names"
KEY_CLASS_LABELS = PREFIX + "class_labels"
KEY_TARGET_NAMES = PREFIX + "target_names"
KEY_INPUT_STATS = PREFIX + "input_stats"
KEY_TRAINING = PREFIX + "training"
KEY_HIDDEN_STATS = PREFIX + "hidden_stats"
KEY_ADAPTATION = PREFIX + "adaptation"
KEY_INPUTS = PREFIX + "inputs"

# Tensor names of the served graph.
INPUT_NAME = "input"
INPUT_CATEGORICAL = "categorical"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_LABEL = "label"
OUTPUT_PREDICTION = "prediction"

TASK_CLASSIFICATION = "classification"
TASK_REGRESSION = "regression"
TASKS = (TASK_CLASSIFICATION, TASK_REGRESSION)

N_BINS = 10  # deciles: 9 inner edges, 10 bins

KIND_NUMERIC = "numeric"
KIND_CATEGORICAL = "categorical"
KIND_BOOLEAN = "boolean"
KINDS = (KIND_NUMERIC, KIND_CATEGORICAL, KIND_BOOLEAN)
#: How a boolean feature's cells are written to the ``categorical`` input (JSON true/false map to these).
BOOLEAN_CATEGORIES = ["false", "true"]

#: The version a source tree that is not installed reports (PEP 440 local: never mistaken for a release).
UNINSTALLED_VERSION = "0.0.0+local"


def package_version() -> str:
    """The installed ``bnserve`` version (the models' producer version, the server's ``GET /v2``)."""
    try:
        return metadata.version("bnserve")
    except metadata.PackageNotFoundError:
        return UNINSTALLED_VERSION


class ContractError(ValueError):
    """The metadata of a model file does not follow the contract (missing key, bad JSON, inconsistent sizes)."""


def output_names(task: str) -> tuple[str, ...]:
    """The graph outputs a model of ``task`` must have, in order."""
    if task == TASK_CLASSIFICATION:
        return (OUTPUT_PROBABILITIES, OUTPUT_LABEL)
    if task == TASK_REGRESSION:
        return (OUTPUT_PREDICTION,)
    raise ContractError(f"task must be one of {TASKS}, got {task!r}")


@dataclass(frozen=True)
class InputStats:
    """Per-feature statistics of the training split, the reference for covariate-shift monitoring."""

    mean: list[float]
    std: list[float]
    decile_edges: list[list[float]]
    decile_freqs: list[list[float]]
    rows: int

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "std": self.std,
            "decile_edges": self.decile_edges,
            "decile_freqs": self.decile_freqs,
            "rows": self.rows,
        }

    @property
    def n_columns(self) -> int:
        return len(self.mean)

    @classmethod
    def from_json(cls, obj: Any, n_features: int | None, what: str = KEY_INPUT_STATS) -> InputStats:
        """Parse and validate; ``n_features`` None takes the width from ``mean`` (hidden layers)."""
        if not isinstance(obj, dict):
            raise ContractError(f"{what} must be a JSON object, got {type(obj).__name__}")
        missing = {"mean", "std", "decile_edges", "decile_freqs", "rows"} - obj.keys()
        if missing:
            raise ContractError(f"{what} lacks {sorted(missing)}")
        if n_features is None:
            n_features = len(obj["mean"]) if isinstance(obj["mean"], list) and obj["mean"] else 0
            if n_features < 1:
                raise ContractError(f"{what}.mean must be a non-empty list of numbers")
        mean = _floats(obj["mean"], f"{what}.mean", n_features)
        std = _floats(obj["std"], f"{what}.std", n_features)
        if any(s < 0 for s in std):
            raise ContractError(f"{what}.std has a negative entry")
        edges = _table(obj["decile_edges"], f"{what}.decile_edges", n_features, N_BINS - 1)
        for j, row in enumerate(edges):
            if any(b < a for a, b in itertools.pairwise(row)):
                raise ContractError(f"{what}.decile_edges[{j}] is not sorted")
        freqs = _table(obj["decile_freqs"], f"{what}.decile_freqs", n_features, N_BINS)
        for j, row in enumerate(freqs):
            if any(f < 0 for f in row) or abs(sum(row) - 1.0) > 1e-6:
                raise ContractError(f"{what}.decile_freqs[{j}] is not a distribution")
        rows = obj["rows"]
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
            raise ContractError(f"{what}.rows must be a positive integer, got {rows!r}")
        return cls(mean=mean, std=std, decile_edges=edges, decile_freqs=freqs, rows=rows)


@dataclass(frozen=True)
class HiddenLayerStats:
    """Training-split statistics of one hidden layer's units, read from the extra graph output ``output``."""

    name: str
    output: str
    stats: InputStats

    @property
    def unit_names(self) -> list[str]:
        """``<layer>.<unit>``: how drift reports and metrics name a hidden unit."""
        return [f"{self.name}.{k}" for k in range(self.stats.n_columns)]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "output": self.output, **self.stats.to_json()}

    @classmethod
    def from_json(cls, obj: Any, index: int) -> HiddenLayerStats:
        what = f"{KEY_HIDDEN_STATS}[{index}]"
        if not isinstance(obj, dict):
            raise ContractError(f"{what} must be a JSON object, got {type(obj).__name__}")
        for key in ("name", "output"):
            if not isinstance(obj.get(key), str) or not obj[key]:
                raise ContractError(f"{what}.{key} must be a non-empty string")
        return cls(name=obj["name"], output=obj["output"], stats=InputStats.from_json(obj, None, what))


@dataclass(frozen=True)
class InputSpec:
    """One feature as a client sends it: its kind, its categories, and what a missing cell becomes."""

    name: str
    kind: str = KIND_NUMERIC
    categories: list[str] = field(default_factory=list)
    frequencies: list[float] = field(default_factory=list)  # training share of each category
    impute: float | str | None = None  # None: a missing cell is refused, not imputed
    missing_indicator: bool = False
    missing_rate: float = 0.0  # share of missing cells in the training split

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ContractError(f"input {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == KIND_NUMERIC:
            if self.categories or self.frequencies:
                raise ContractError(f"input {self.name!r} is numeric but lists categories")
            if self.impute is not None and (
                isinstance(self.impute, (str, bool)) or not math.isfinite(self.impute)
            ):
                raise ContractError(
                    f"input {self.name!r}: impute must be a finite number, got {self.impute!r}"
                )
        else:
            if not self.categories or not all(isinstance(c, str) and c for c in self.categories):
                raise ContractError(
                    f"input {self.name!r}: categories must be a non-empty list of non-empty strings"
                )
            if len(set(self.categories)) != len(self.categories):
                raise ContractError(f"input {self.name!r}: categories have duplicates")
            if len(self.frequencies) != len(self.categories) or any(f < 0 for f in self.frequencies):
                raise ContractError(f"input {self.name!r}: needs one non-negative frequency per category")
            if self.impute is not None and self.impute not in self.categories:
                raise ContractError(
                    f"input {self.name!r}: impute {self.impute!r} is not one of its categories"
                )
        if not 0.0 <= self.missing_rate <= 1.0:
            raise ContractError(
                f"input {self.name!r}: missing_rate must be in [0, 1], got {self.missing_rate}"
            )

    @property
    def is_numeric(self) -> bool:
        return self.kind == KIND_NUMERIC

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if not self.is_numeric:
            out["categories"] = self.categories
            out["frequencies"] = self.frequencies
        out.update(
            impute=self.impute, missing_indicator=self.missing_indicator, missing_rate=self.missing_rate
        )
        return out

    @classmethod
    def from_json(cls, obj: Any) -> InputSpec:
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            raise ContractError(f"each entry of {KEY_INPUTS} must be an object with a 'name'")
        impute = obj.get("impute")
        if impute is not None and not isinstance(impute, (int, float, str)):
            raise ContractError(f"input {obj['name']!r}: impute must be a number, a string or null")
        try:
            return cls(
                name=obj["name"],
                kind=str(obj.get("kind", KIND_NUMERIC)),
                categories=list(obj.get("categories", [])),
                frequencies=[float(f) for f in obj.get("frequencies", [])],
                impute=float(impute) if isinstance(impute, int) and not isinstance(impute, bool) else impute,
                missing_indicator=bool(obj.get("missing_indicator", False)),
                missing_rate=float(obj.get("missing_rate", 0.0)),
            )
        except (TypeError, ValueError) as exc:
            raise ContractError(f"input {obj['name']!r}: {exc}") from None


@dataclass(frozen=True)
class ModelContract:
    """What a ``model.onnx`` promises its server, beyond the graph itself."""

    task: str
    feature_names: list[str]
    input_stats: InputStats
    class_labels: list[str | int | float] = field(default_factory=list)
    target_names: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    hidden_stats: list[HiddenLayerStats] = field(default_factory=list)
    adaptation: dict[str, Any] = field(default_factory=dict)
    contract_version: int = CONTRACT_VERSION
    #: One per feature, in ``feature_names`` order; empty means every feature numeric, nothing imputed.
    inputs: list[InputSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ContractError(f"task must be one of {TASKS}, got {self.task!r}")
        if not self.feature_names:
            raise ContractError("feature_names is empty")
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ContractError("feature_names has duplicates")
        if self.task == TASK_CLASSIFICATION:
            if len(self.class_labels) < 2:
                raise ContractError(
                    f"classification needs at least 2 class labels, got {len(self.class_labels)}"
                )
            if len({str(c) for c in self.class_labels}) != len(self.class_labels):
                raise ContractError("class_labels has duplicates")
        elif not self.target_names:
            raise ContractError("regression needs at least 1 target name")
        hidden = [h.output for h in self.hidden_stats]
        if len(set(hidden)) != len(hidden) or set(hidden) & {
            INPUT_NAME,
            INPUT_CATEGORICAL,
            *output_names(self.task),
        }:
            raise ContractError(
                f"{KEY_HIDDEN_STATS}: output names must be distinct from each other and the graph's"
            )
        if len({h.name for h in self.hidden_stats}) != len(self.hidden_stats):
            raise ContractError(f"{KEY_HIDDEN_STATS}: layer names have duplicates")
        if self.inputs and [i.name for i in self.inputs] != self.feature_names:
            raise ContractError(f"{KEY_INPUTS} must describe feature_names one by one, in order")
        if not self.numeric_names:
            # input_stats and the graph's float input are per numeric feature; an empty one helps nobody.
            raise ContractError("at least one numeric feature is needed")

    @property
    def n_features(self) -> int:
        """Width of the float input ``input``: the numeric features."""
        return len(self.numeric_names)

    @property
    def input_specs(self) -> list[InputSpec]:
        """One spec per feature (all numeric, nothing imputed, for a contract without ``inputs``)."""
        return self.inputs or [InputSpec(n) for n in self.feature_names]

    @property
    def numeric_names(self) -> list[str]:
        """The features of the float input ``input``, in its column order."""
        if not self.inputs:
            return list(self.feature_names)
        return [i.name for i in self.inputs if i.is_numeric]

    @property
    def categorical_names(self) -> list[str]:
        """The features of the string input ``categorical`` (categorical and boolean), in its column order."""
        return [i.name for i in self.inputs if not i.is_numeric]

    @property
    def n_outputs(self) -> int:
        """Width of the main output: the number of classes, or of regression targets."""
        return len(self.class_labels) if self.task == TASK_CLASSIFICATION else len(self.target_names)

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` entries, as strings."""
        meta = {
            KEY_CONTRACT_VERSION: str(self.contract_version),
            KEY_TASK: self.task,
            KEY_FEATURE_NAMES: json.dumps(self.feature_names),
            KEY_INPUT_STATS: json.dumps(self.input_stats.to_json(), allow_nan=False),
            KEY_TRAINING: json.dumps(self.training, allow_nan=False, default=str),
        }
        if self.task == TASK_CLASSIFICATION:
            meta[KEY_CLASS_LABELS] = json.dumps(self.class_labels)
        else:
            meta[KEY_TARGET_NAMES] = json.dumps(self.target_names)
        if self.hidden_stats:
            meta[KEY_HIDDEN_STATS] = json.dumps([h.to_json() for h in self.hidden_stats], allow_nan=False)
        if self.adaptation:
            meta[KEY_ADAPTATION] = json.dumps(self.adaptation, allow_nan=False, default=str)
        if self.inputs:
            meta[KEY_INPUTS] = json.dumps([i.to_json() for i in self.inputs], allow_nan=False)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> ModelContract:
        """Parse and validate ``metadata_props``; raise :class:`ContractError` naming the first problem."""
        if KEY_CONTRACT_VERSION not in meta:
            raise ContractError(
                f"no bnserve contract in the metadata (key {KEY_CONTRACT_VERSION} is missing)"
            )
        try:
            version = int(meta[KEY_CONTRACT_VERSION])
        except ValueError:
            raise ContractError(
                f"{KEY_CONTRACT_VERSION} is not an integer: {meta[KEY_CONTRACT_VERSION]!r}"
            ) from None
        if version != CONTRACT_VERSION:
            raise ContractError(
                f"contract version {version} is not supported (this build reads {CONTRACT_VERSION})"
            )
        task = _require(meta, KEY_TASK)
        names = _json(meta, KEY_FEATURE_NAMES)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ContractError(f"{KEY_FEATURE_NAMES} must be a JSON list of strings")
        inputs: list[InputSpec] = []
        if KEY_INPUTS in meta:
            raw_inputs = _json(meta, KEY_INPUTS)
            if not isinstance(raw_inputs, list):
                raise ContractError(f"{KEY_INPUTS} must be a JSON list")
            inputs = [InputSpec.from_json(i) for i in raw_inputs]
        n_numeric = sum(i.is_numeric for i in inputs) if inputs else len(names)
        stats = InputStats.from_json(_json(meta, KEY_INPUT_STATS), n_numeric)
        training = _json(meta, KEY_TRAINING) if KEY_TRAINING in meta else {}
        if not isinstance(training, dict):
            raise ContractError(f"{KEY_TRAINING} must be a JSON object")
        hidden_json = _json(meta, KEY_HIDDEN_STATS) if KEY_HIDDEN_STATS in meta else []
        if not isinstance(hidden_json, list):
            raise ContractError(f"{KEY_HIDDEN_STATS} must be a JSON list (one object per hidden layer)")
        hidden = [HiddenLayerStats.from_json(h, i) for i, h in enumerate(hidden_json)]
        adaptation = _json(meta, KEY_ADAPTATION) if KEY_ADAPTATION in meta else {}
        if not isinstance(adaptation, dict):
            raise ContractError(f"{KEY_ADAPTATION} must be a JSON object")
        labels: list[str | int | float] = []
        targets: list[str] = []
        if task == TASK_CLASSIFICATION:
            labels = _json(meta, KEY_CLASS_LABELS)
            if not isinstance(labels, list) or not all(
                isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in labels
            ):
                raise ContractError(f"{KEY_CLASS_LABELS} must be a JSON list of strings or numbers")
        elif task == TASK_REGRESSION:
            targets = _json(meta, KEY_TARGET_NAMES)
            if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                raise ContractError(f"{KEY_TARGET_NAMES} must be a JSON list of strings")
        return cls(
            task=task,
            feature_names=names,
            input_stats=stats,
            class_labels=labels,
            target_names=targets,
            training=training,
            hidden_stats=hidden,
            adaptation=adaptation,
            contract_version=version,
            inputs=inputs,
        )


def _require(meta: dict[str, str], key: str) -> str:
    if key not in meta:
        raise ContractError(f"metadata key {key} is missing")
    return meta[key]


def _json(meta: dict[str, str], key: str) -> Any:
    try:
        return json.loads(_require(meta, key))
    except json.JSONDecodeError as exc:
        raise ContractError(f"{key} is not valid JSON: {exc.msg} at position {exc.pos}") from None


def _floats(values: Any, what: str, n: int) -> list[float]:
    if not isinstance(values, list) or len(values) != n:
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise ContractError(f"{what} must be a list of {n} numbers (one per feature), got {got}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ContractError(f"{what} holds a non-finite or non-numeric entry: {v!r}")
        out.append(float(v))
    return out


def _table(rows: Any, what: str, n: int, width: int) -> list[list[float]]:
    if not isinstance(rows, list) or len(rows) != n:
        got = len(rows) if isinstance(rows, list) else type(rows).__name__
        raise ContractError(f"{what} must have one row per feature ({n}), got {got}")
    return [_floats(r, f"{what}[{j}]", width) for j, r in enumerate(rows)]
