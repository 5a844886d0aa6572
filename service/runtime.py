"""One loaded model: an onnxruntime session plus its contract. No FastAPI, no protocol here.

A :class:`ModelRuntime` is built once, at start-up, by :func:`load_model`, which checks that the graph and the
contract agree (tensor names, widths, dtypes) and runs probe rows built from the training statistics
through the session, checking its outputs keep the contract's promises, before accepting it.
Everything a request needs (tensor specs, label tables) is computed here, so per-request work is one
``session.run`` and a finiteness check.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

import contract
from service.decoding import FLOAT32_MAX
from service.errors import BadRequest, ModelLoadError
from service.tabular import Tabular

log = logging.getLogger("bnserve.runtime")

#: Called with the float32 rows (N, F) of every successful inference, after the outputs are computed. The
#: service wraps each observer (``ObserverFeeder.wrap``) so that the real work happens later, batched, off the
#: request's path.
#: A model with a ``categorical`` input calls its observers with the pair ``(x, categorical)`` instead.
Observer = Callable[[Any], None]
#: Called with the served rows (N, F) and each hidden layer's outputs on a sample of them (``(k, units)``, the
#: rows :attr:`ModelRuntime.layer_sampler` picked), or None when the run computed no hidden layer.
LayerObserver = Callable[[np.ndarray, Sequence[np.ndarray] | None], None]


class RowSampler(Protocol):
    """Which rows of each served batch the layer observers take (``service.hidden_drift.RowBudget``)."""

    def wants(self) -> bool:
        """Whether the next batch may have rows taken (else its run need not compute the hidden layers)."""
        ...

    def take(self, n: int) -> np.ndarray | None:
        """The rows taken of a batch of ``n``: sorted indices (maybe none), or None for all of them."""
        ...


@dataclass(frozen=True)
class TensorSpec:
    """Name, KServe V2 datatype and shape (``-1`` for the batch axis) of a graph tensor."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class ModelRuntime:
    """A servable model: session, contract, tensor specs, and the observers fed after each inference."""

    name: str
    version: int
    path: Path
    contract: contract.ModelContract
    session: ort.InferenceSession
    input_spec: TensorSpec
    output_specs: tuple[TensorSpec, ...]
    observers: list[Observer] = field(default_factory=list)
    #: Observers of the rows and the hidden layers' outputs (one array per layer, in
    #: ``hidden_output_names`` order) computed in the same run: the hidden-layer drift monitor.
    layer_observers: list[LayerObserver] = field(default_factory=list)
    #: Which rows the layer observers get (None: every row). Decided where the model runs: a run computes the
    #: hidden layers only when the sampler wants rows, and hands over only the rows taken.
    layer_sampler: RowSampler | None = None
    #: Which rows of each served batch the observers and the layer observers' inputs get (None: every row).
    row_sampler: RowSampler | None = None
    #: Inputs are refused beyond [-input_limit, input_limit] (:func:`input_limit`): the outputs stay finite there.
    input_limit: float = FLOAT32_MAX
    #: The string input ``categorical`` of a model with categorical or boolean features, else None.
    categorical_spec: TensorSpec | None = None
    #: The features as clients send them, for a model with categorical or imputed features, else None (the
    #: plain float path).
    tabular: Tabular | None = field(init=False)
    #: Computed once: ``predict`` runs per request, and a property rebuilding these showed in the profile.
    output_names: tuple[str, ...] = field(init=False)
    #: The hidden layers' outputs (``bnserve.hidden_stats``): computed for a client only when it names them.
    hidden_output_names: tuple[str, ...] = field(init=False)
    _run_names: list[str] = field(init=False, repr=False)
    _float_outputs: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.output_names = tuple(spec.name for spec in self.output_specs)
        self.hidden_output_names = tuple(h.output for h in self.contract.hidden_stats)
        self._run_names = list(self.output_names)
        self._float_outputs = tuple(i for i, s in enumerate(self.output_specs) if s.datatype.startswith("FP"))
        self.tabular = Tabular.of(self.contract)
        self.n_features = self.contract.n_features  # read on every request: not recomputed
        # Every output's datatype by name, the hidden layers' (FP32) too: for the V2 responses.
        self.output_datatypes = {spec.name: spec.datatype for spec in self.output_specs}
        self.output_datatypes.update(dict.fromkeys(self.hidden_output_names, "FP32"))

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        """The graph's inputs: ``input``, then ``categorical`` when the model has one."""
        if self.categorical_spec is None:
            return (self.input_spec,)
        return (self.input_spec, self.categorical_spec)

    @property
    def is_classification(self) -> bool:
        return self.contract.task == contract.TASK_CLASSIFICATION

    def predict(
        self, x: np.ndarray, hidden: Sequence[str] = (), categorical: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Run the frozen test-time graph on float32 rows ``x`` (N, F); every output, all finite, plus the
        hidden outputs named in ``hidden`` (from :attr:`hidden_output_names`) when a client asks for them;
        then hand the rows to the observers. ``categorical``: the string rows (N, K) of a model with a
        ``categorical`` input (checked by the codec).

        Each row is computed independently of the others (BatchNorm is folded into the weights), so a
        row's result does not depend on the batch it came in: :class:`service.batching.Batcher` relies on it.
        """
        self.check_rows(x)
        layers = self.wants_layers()
        names = self.run_names(hidden, layers)
        results = dict(zip(names, self.session.run(names, self.feed(x, categorical))))
        bad = self.first_nonfinite(results, 0, len(x))
        if bad is not None:
            raise bad
        self.observe(x, results if layers else None, categorical)
        if layers:  # what the client asked for, not every hidden layer the observers wanted
            return {name: results[name] for name in (*self.output_names, *hidden)}
        return results

    @staticmethod
    def feed(x: np.ndarray, categorical: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The graph's inputs: ``input``, and ``categorical`` for a model that has it."""
        if categorical is None:
            return {contract.INPUT_NAME: x}
        return {contract.INPUT_NAME: x, contract.INPUT_CATEGORICAL: categorical}

    def check_rows(self, x: np.ndarray) -> None:
        """:class:`BadRequest` unless ``x`` is float32 rows of this model's features."""
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != self.n_features:
            raise BadRequest(
                f"expected float32 rows of {self.n_features} features, got {x.dtype} {list(x.shape)}"
            )

    @property
    def watches_layers(self) -> bool:
        """Whether an observer wants the hidden layers' outputs of served rows."""
        return bool(self.layer_observers) and bool(self.hidden_output_names)

    def wants_layers(self) -> bool:
        """Whether the next run should compute the hidden layers for the layer observers: they watch, and the
        sampler (if any) has room for rows."""
        return self.watches_layers and (self.layer_sampler is None or self.layer_sampler.wants())

    def run_names(self, hidden: Sequence[str] = (), layers: bool = False) -> list[str]:
        """The graph outputs to compute: the served ones, the hidden ones a client named, and every hidden one
        when ``layers`` (for the layer observers: computed in the same run, not in a second one)."""
        if layers:
            return [*self._run_names, *self.hidden_output_names]
        return self._run_names if not hidden else [*self._run_names, *hidden]

    def first_nonfinite(self, results: dict[str, np.ndarray], start: int, stop: int) -> BadRequest | None:
        """The error for the first non-finite served output among rows ``start:stop`` (numbered from
        ``start``), or None: a far-out input can overflow the network, and NaN is no answer."""
        for i in self._float_outputs:
            name = self._run_names[i]
            values = results[name][start:stop]
            # One reduction instead of an isfinite array: a NaN or inf anywhere makes the max non-finite.
            if not math.isfinite(np.abs(values).max(initial=0.0)):
                row = int(np.argwhere(~np.isfinite(values))[0][0])
                return BadRequest(
                    f"the model produced a non-finite {name!r} for row {row}; "
                    "its inputs are probably far outside the training range"
                )
        return None

    def observe(
        self,
        x: np.ndarray,
        results: dict[str, np.ndarray] | None = None,
        categorical: np.ndarray | None = None,
    ) -> None:
        """Hand served rows ``x`` to the observers (``(x, categorical)`` for a model with a ``categorical``
        input), and with them the hidden layers' outputs in ``results`` to the layer observers (when the run
        computed them): the rows :attr:`row_sampler` takes (all without one), and the layers on the rows
        :attr:`layer_sampler` takes, each sampled from the whole batch."""
        layers: list[np.ndarray] | None = None
        if results is not None and self.layer_observers:
            picked = None if self.layer_sampler is None else self.layer_sampler.take(len(x))
            if picked is None:
                layers = [results[name] for name in self.hidden_output_names]
            elif len(picked):  # a copy of the few rows taken: the run's whole arrays are not held on to
                layers = [results[name][picked] for name in self.hidden_output_names]
        rows = None if self.row_sampler is None else self.row_sampler.take(len(x))
        if rows is not None:  # over the observers' budget: a uniform sample of the batch
            x = x[rows]
            categorical = None if categorical is None else categorical[rows]
        if len(x):
            batch = x if categorical is None else (x, categorical)
            for observe in self.observers:
                try:
                    observe(batch)
                except Exception:  # an observer must never fail a prediction
                    log.exception("observer %r failed for model %s/%d", observe, self.name, self.version)
        if not len(x) and layers is None:
            return
        for observe_layers in self.layer_observers:
            try:
                observe_layers(x, layers)
            except Exception:
                log.exception("observer %r failed for model %s/%d", observe_layers, self.name, self.version)

    def hidden_outputs(self, x: np.ndarray, categorical: np.ndarray | None = None) -> list[np.ndarray]:
        """Each hidden layer's output (the extra graph outputs ``bnserve.hidden_stats`` names) on float32 rows
        ``x`` (N, F) (and the string rows of the ``categorical`` input, if any), for the drift monitor: never
        part of a client's response unless it asks."""
        names = [h.output for h in self.contract.hidden_stats]
        if not names:
            return []
        return list(self.session.run(names, self.feed(x, categorical)))


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    """One sequential session: ``intra_op_threads`` threads for a node, none spinning idle."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: a bad file is reported by us, in one line
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def load_model(name: str, version: int, path: Path, intra_op_threads: int = 1) -> ModelRuntime:
    """Open ``path`` with onnxruntime, check it against its contract, and run the probe rows; :class:`ModelLoadError`."""
    if not path.exists():
        raise ModelLoadError(path, "file is missing")
    if not path.is_file():
        raise ModelLoadError(path, "is not a regular file")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ModelLoadError(path, f"cannot read the file ({exc.strerror or exc})") from None
    try:
        session = ort.InferenceSession(
            str(path), sess_options=session_options(intra_op_threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf / RuntimeError types
        raise ModelLoadError(path, f"not a loadable ONNX model ({_ort_reason(exc)})") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    try:
        model_contract = contract.ModelContract.from_metadata(meta)
    except contract.ContractError as exc:
        raise ModelLoadError(path, f"bad contract metadata: {exc}") from None
    try:
        input_spec, categorical_spec, output_specs = _check_graph(session, model_contract)
        _smoke_test(session, model_contract, output_specs)
        limit = input_limit(session, model_contract, output_specs)
    except ValueError as exc:
        raise ModelLoadError(path, str(exc)) from None
    return ModelRuntime(
        name=name,
        version=version,
        path=path,
        contract=model_contract,
        session=session,
        input_spec=input_spec,
        output_specs=output_specs,
        input_limit=limit,
        categorical_spec=categorical_spec,
    )


def _ort_reason(exc: Exception) -> str:
    """onnxruntime's message, on one line, without the repeated file path and error-code prefix."""
    text = re.sub(r"\s+", " ", str(exc)).strip()
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ", "", text)
    text = re.sub(r"Load model from \S+ failed:\s*", "", text)
    return text[:300] or type(exc).__name__


def _check_graph(
    session: ort.InferenceSession, mc: contract.ModelContract
) -> tuple[TensorSpec, TensorSpec | None, tuple[TensorSpec, ...]]:
    """The graph's tensors must be exactly what the contract promises; ValueError naming the mismatch."""
    inputs = session.get_inputs()
    n_categorical = len(mc.categorical_names)
    wanted = [contract.INPUT_NAME, *([contract.INPUT_CATEGORICAL] if n_categorical else [])]
    if [i.name for i in inputs] != wanted:
        what = (
            f"the inputs {wanted} (it lists {n_categorical} categorical or boolean features)"
            if n_categorical
            else f"one input {contract.INPUT_NAME!r}"
        )
        raise ValueError(f"graph inputs are {[i.name for i in inputs]}, the contract needs {what}")
    categorical_spec = None
    if n_categorical:
        cat = inputs[1]
        fixed = len(cat.shape) == 2 and isinstance(cat.shape[1], int)
        if cat.type != "tensor(string)" or len(cat.shape) != 2 or (fixed and cat.shape[1] != n_categorical):
            raise ValueError(
                f"input {cat.name!r} is {cat.type} {cat.shape}, expected tensor(string) [batch, {n_categorical}] "
                "(one column per categorical feature of the contract)"
            )
        categorical_spec = TensorSpec(contract.INPUT_CATEGORICAL, "BYTES", (-1, n_categorical))
    inp = inputs[0]
    if inp.type != "tensor(float)":
        raise ValueError(f"input {inp.name!r} is {inp.type}, expected tensor(float)")
    if len(inp.shape) != 2:
        raise ValueError(f"input {inp.name!r} has shape {inp.shape}, expected [batch, {mc.n_features}]")
    if isinstance(inp.shape[0], int):
        raise ValueError(f"input {inp.name!r} has a fixed batch size {inp.shape[0]}; it must be symbolic")
    width = inp.shape[1]
    if isinstance(width, int) and width != mc.n_features:
        raise ValueError(f"metadata lists {mc.n_features} features but input {inp.name!r} has width {width}")
    expected = contract.output_names(mc.task)
    outputs = {o.name: o for o in session.get_outputs()}
    hidden = {h.output: h.stats.n_columns for h in mc.hidden_stats}
    if sorted(outputs) != sorted([*expected, *hidden]):
        extra = f" plus the hidden outputs {sorted(hidden)} its metadata lists" if hidden else ""
        raise ValueError(
            f"graph outputs are {sorted(outputs)}, a {mc.task} model must output {list(expected)}{extra}"
        )
    for name, width in hidden.items():
        out = outputs[name]
        fixed = len(out.shape) == 2 and isinstance(out.shape[1], int)
        if out.type != "tensor(float)" or len(out.shape) != 2 or (fixed and out.shape[1] != width):
            raise ValueError(
                f"hidden output {name!r} is {out.type} {out.shape}, expected tensor(float) [batch, {width}] "
                "as its metadata says"
            )
    specs = []
    for name in expected:
        out = outputs[name]
        wanted_type = "tensor(int64)" if name == contract.OUTPUT_LABEL else "tensor(float)"
        if out.type != wanted_type:
            raise ValueError(f"output {name!r} is {out.type}, expected {wanted_type}")
        if name == contract.OUTPUT_LABEL:
            if len(out.shape) != 1:
                raise ValueError(f"output {name!r} has shape {out.shape}, expected [batch]")
            specs.append(TensorSpec(name, "INT64", (-1,)))
            continue
        if len(out.shape) != 2:
            raise ValueError(f"output {name!r} has shape {out.shape}, expected [batch, {mc.n_outputs}]")
        width = out.shape[1]
        if isinstance(width, int) and width != mc.n_outputs:
            what = "class labels" if name == contract.OUTPUT_PROBABILITIES else "target names"
            raise ValueError(f"metadata lists {mc.n_outputs} {what} but output {name!r} has width {width}")
        specs.append(TensorSpec(name, "FP32", (-1, mc.n_outputs)))
    return TensorSpec(contract.INPUT_NAME, "FP32", (-1, mc.n_features)), categorical_spec, tuple(specs)


def probe_rows(stats: contract.InputStats) -> np.ndarray:
    """Rows spanning the training distribution: its mean, mean +- 2 std, and each decile edge of every
    feature at once (12 rows, float32 ``(12, F)``), so that a check sees more than one region of the input."""
    mean = np.asarray(stats.mean, dtype=np.float64)  # (F,)
    std = np.asarray(stats.std, dtype=np.float64)  # (F,)
    edges = np.asarray(stats.decile_edges, dtype=np.float64).T  # (9, F)
    return np.vstack([mean, mean - 2 * std, mean + 2 * std, edges]).astype(np.float32)  # (12, F)


#: A category no model was trained on, for the probe rows: the graph must send it to its unknown bucket.
PROBE_UNKNOWN = "\x00bnserve probe: unknown category"


def probe_inputs(mc: contract.ModelContract) -> dict[str, np.ndarray]:
    """The probe rows as the graph's inputs: :func:`probe_rows`, plus, for a model with categorical features,
    each feature's categories in turn (most frequent first), an unknown category and a missing cell (``""``)
    where the feature is imputed; imputed numeric features get a missing cell (NaN) in one row too."""
    x = probe_rows(mc.input_stats)  # (R, F)
    if not mc.inputs:
        return {contract.INPUT_NAME: x}
    rows = len(x)
    numeric = [s for s in mc.inputs if s.is_numeric]
    imputed = [j for j, s in enumerate(numeric) if s.impute is not None]
    x[rows - 1, imputed] = np.nan
    feed = {contract.INPUT_NAME: x}
    categorical = [s for s in mc.inputs if not s.is_numeric]
    if categorical:
        s = np.empty((rows, len(categorical)), dtype=object)  # (R, K)
        for j, spec in enumerate(categorical):
            by_frequency = [c for _, c in sorted(zip(spec.frequencies, spec.categories), reverse=True)]
            column = [by_frequency[r % len(by_frequency)] for r in range(rows - 2)]
            column += [PROBE_UNKNOWN, "" if spec.impute is not None else by_frequency[0]]
            s[:, j] = column
        feed[contract.INPUT_CATEGORICAL] = s
    return feed


def _smoke_test(
    session: ort.InferenceSession, mc: contract.ModelContract, specs: Sequence[TensorSpec]
) -> None:
    """Run the probe rows: a graph whose symbolic shapes hide a mismatch, or whose outputs break the promises
    of the contract (a label that is not the argmax of a probability distribution over the classes), fails
    now rather than on a request."""
    feed = probe_inputs(mc)
    try:
        results = session.run([s.name for s in specs], feed)
    except Exception as exc:
        raise ValueError(
            f"a test inference on {len(mc.feature_names)} features failed ({_ort_reason(exc)})"
        ) from None
    rows = len(feed[contract.INPUT_NAME])
    for spec, value in zip(specs, results):
        expected = (rows, *spec.shape[1:])
        if value.shape != expected:
            raise ValueError(
                f"output {spec.name!r} has shape {list(value.shape)} for {rows} rows, expected {list(expected)}"
            )
    outputs = dict(zip((s.name for s in specs), results))
    for name, value in outputs.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            row = int(np.argwhere(~np.isfinite(value))[0][0])
            raise ValueError(
                f"output {name!r} is not finite for probe row {row} (built from the training statistics)"
            )
    if mc.task == contract.TASK_CLASSIFICATION:
        _check_classifier(
            outputs[contract.OUTPUT_PROBABILITIES], outputs[contract.OUTPUT_LABEL], mc.n_outputs
        )


#: How much larger than the served input limit the probes go: they are a few hundred directions, not the worst
#: one for the network, whose gain (the growth of its outputs with its inputs' size) can be larger in another.
_LIMIT_MARGIN = 1e6


def input_limit(
    session: ort.InferenceSession, mc: contract.ModelContract, specs: Sequence[TensorSpec]
) -> float:
    """The served input range ``[-L, L]``: ``L`` the largest power of ten up to 1e38 such that every output,
    hidden ones included, stays finite on probe rows scaled to ``L`` times a margin of 1e6.

    Far outside its training range a network's float32 arithmetic overflows (inf, then NaN probabilities); an
    input bound lets the service refuse such rows by a rule a client (and the OpenAPI schema) can know, rather
    than after the fact. The probes: sign patterns (a fixed seed), each feature alone at each sign, and the
    training-statistics probe rows, each scaled to unit size. Raises ``ValueError`` when that range does not
    even hold the training-statistics probe rows.
    """
    f = mc.n_features
    training = probe_rows(mc.input_stats).astype(np.float64)  # (12, F)
    directions = np.vstack(
        [
            np.random.default_rng(0).choice([-1.0, 1.0], size=(64, f)),  # (64, F) corners
            np.eye(f),
            -np.eye(f),  # (2F, F)
            training / np.maximum(np.abs(training).max(axis=1, keepdims=True), 1e-30),  # (12, F)
        ]
    )
    names = [s.name for s in specs if s.datatype.startswith("FP")] + [h.output for h in mc.hidden_stats]
    categories = probe_inputs(mc).get(contract.INPUT_CATEGORICAL)  # (12, K) or None
    if categories is not None:  # the probe rows' categories (known, unknown, missing), over and over
        categories = np.resize(categories, (len(directions), categories.shape[1]))  # (R, K)
    for exponent in range(38, -1, -1):
        limit = 10.0**exponent
        if limit < float(np.abs(training).max()):
            break
        x = (directions * min(limit * _LIMIT_MARGIN, FLOAT32_MAX)).astype(np.float32)
        if all(np.isfinite(v).all() for v in session.run(names, ModelRuntime.feed(x, categories))):
            return limit
    raise ValueError(
        "the outputs overflow float32 on inputs within a factor 1e6 of the training range (probe rows "
        "built from the training statistics, scaled up)"
    )


#: How far probabilities may stray from a distribution in float32 (a softmax of 1000 classes sums to 1 +- 1e-6).
_PROBABILITY_TOLERANCE = 1e-4


def _check_classifier(probabilities: np.ndarray, labels: np.ndarray, n_classes: int) -> None:
    """Probabilities (R, C) form a distribution per row; labels (R,) index the classes and pick a most likely one."""
    low, high = float(probabilities.min()), float(probabilities.max())
    if low < -_PROBABILITY_TOLERANCE or high > 1 + _PROBABILITY_TOLERANCE:
        row = int(
            np.argwhere(
                (probabilities < -_PROBABILITY_TOLERANCE) | (probabilities > 1 + _PROBABILITY_TOLERANCE)
            )[0][0]
        )
        raise ValueError(
            f"output 'probabilities' has values outside [0, 1] for probe row {row} "
            f"(min {low:.4g}, max {high:.4g}): not probabilities (is the Softmax missing?)"
        )
    sums = probabilities.sum(axis=1, dtype=np.float64)  # (R,)
    bad = np.abs(sums - 1.0) > _PROBABILITY_TOLERANCE
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"output 'probabilities' sums to {sums[row]:.6g} for probe row {row}, expected 1")
    outside = (labels < 0) | (labels >= n_classes)
    if outside.any():
        row = int(np.argmax(outside))
        raise ValueError(
            f"output 'label' is {int(labels[row])} for probe row {row}, not a class index 0..{n_classes - 1}"
        )
    chosen = probabilities[np.arange(len(labels)), labels]  # (R,)
    best = probabilities.max(axis=1)  # (R,)
    wrong = chosen < best - _PROBABILITY_TOLERANCE  # a tie may pick either of the top classes
    if wrong.any():
        row = int(np.argmax(wrong))
        raise ValueError(
            f"output 'label' is {int(labels[row])} for probe row {row} but the most likely class is "
            f"{int(np.argmax(probabilities[row]))}: the label must be the argmax of the probabilities"
        )
