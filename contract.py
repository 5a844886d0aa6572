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
=============================  ===============================================================================
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

# Tensor names of the served graph.
INPUT_NAME = "input"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_LABEL = "label"
OUTPUT_PREDICTION = "prediction"

TASK_CLASSIFICATION = "classification"
TASK_REGRESSION = "regression"
TASKS = (TASK_CLASSIFICATION, TASK_REGRESSION)

N_BINS = 10  # deciles: 9 inner edges, 10 bins

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

    @classmethod
    def from_json(cls, obj: Any, n_features: int) -> InputStats:
        if not isinstance(obj, dict):
            raise ContractError(f"{KEY_INPUT_STATS} must be a JSON object, got {type(obj).__name__}")
        missing = {"mean", "std", "decile_edges", "decile_freqs", "rows"} - obj.keys()
        if missing:
            raise ContractError(f"{KEY_INPUT_STATS} lacks {sorted(missing)}")
        mean = _floats(obj["mean"], f"{KEY_INPUT_STATS}.mean", n_features)
        std = _floats(obj["std"], f"{KEY_INPUT_STATS}.std", n_features)
        if any(s < 0 for s in std):
            raise ContractError(f"{KEY_INPUT_STATS}.std has a negative entry")
        edges = _table(obj["decile_edges"], f"{KEY_INPUT_STATS}.decile_edges", n_features, N_BINS - 1)
        for j, row in enumerate(edges):
            if any(b < a for a, b in itertools.pairwise(row)):
                raise ContractError(f"{KEY_INPUT_STATS}.decile_edges[{j}] is not sorted")
        freqs = _table(obj["decile_freqs"], f"{KEY_INPUT_STATS}.decile_freqs", n_features, N_BINS)
        for j, row in enumerate(freqs):
            if any(f < 0 for f in row) or abs(sum(row) - 1.0) > 1e-6:
                raise ContractError(f"{KEY_INPUT_STATS}.decile_freqs[{j}] is not a distribution")
        rows = obj["rows"]
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
            raise ContractError(f"{KEY_INPUT_STATS}.rows must be a positive integer, got {rows!r}")
        return cls(mean=mean, std=std, decile_edges=edges, decile_freqs=freqs, rows=rows)


@dataclass(frozen=True)
class ModelContract:
    """What a ``model.onnx`` promises its server, beyond the graph itself."""

    task: str
    feature_names: list[str]
    input_stats: InputStats
    class_labels: list[str | int | float] = field(default_factory=list)
    target_names: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    contract_version: int = CONTRACT_VERSION

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

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

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
        stats = InputStats.from_json(_json(meta, KEY_INPUT_STATS), len(names))
        training = _json(meta, KEY_TRAINING) if KEY_TRAINING in meta else {}
        if not isinstance(training, dict):
            raise ContractError(f"{KEY_TRAINING} must be a JSON object")
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
            contract_version=version,
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
