"""Export: fold the frozen statistics into the weights, write ONNX, and verify before anything is written.

The folded graph (what is served) is ``front end -> [Gemm -> activation] * k -> Gemm -> Softmax / ArgMax`` on
raw, unstandardized features: the front end (:mod:`training.frontend`) imputes missing cells and one-hot
encodes categories, and, when folding the input standardization would lose precision (a large mean next to a
small spread: years, prices; :func:`training.precision.needs_centring`), subtracts the mean itself; the scale
is always folded. The unfolded graph (for inspection) keeps the standardization as ``Sub``/``Div`` and each BN
as an inference-mode ``BatchNormalization`` node.

Verification compares both graphs, in onnxruntime and in ``onnx.reference``, with the trained network
evaluated in float64 (:func:`network64`), each output within a tolerance derived from float32 rounding of
the actual magnitudes (:mod:`training.precision`); it names the comparison that failed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

import contract as C
from featurestats import input_statistics
from training import precision
from training.fold import fold_batchnorm, fold_output_scale, fold_standardization
from training.graph import (
    ONNX_ACTIVATIONS,
    Affine,
    affine_forward,
    build_folded,
    build_unfolded,
    hidden_output_name,
)
from training.plots import confusion_png
from training.tables import FeatureEncoder
from training.train import TrainedModel, TrainResult

#: The unfolded graph does more float32 operations than the folded one (a division, BN's four per unit):
#: it gets this multiple of the folded graph's tolerance.
UNFOLDED_SLACK = 4.0
#: Most training rows the hidden layers' reference statistics are computed on (a sample of a big table).
HIDDEN_STATS_ROWS = 100_000
#: The test split's confusion matrix, drawn beside history.json when matplotlib is installed.
CONFUSION_PNG = "confusion.png"


class ExportError(RuntimeError):
    """The export refused to write a model (verification failed, bad repository, ...)."""


def centring(model: TrainedModel) -> np.ndarray | None:
    """The mean the graph subtracts before the first Gemm (float32 values, as float64), or None when the
    whole standardization folds without losing precision."""
    std = model.standardizer
    if not precision.needs_centring(std.mean, std.std):
        return None
    return np.asarray(std.mean, np.float32).astype(np.float64)


def statistics_sample(rows: np.ndarray) -> np.ndarray:
    """At most ``HIDDEN_STATS_ROWS`` of the (shuffled) training ``rows``, evenly spaced: enough for decile
    edges, and a big table's hidden layers are not materialised whole in float64 (gigabytes)."""
    if len(rows) <= HIDDEN_STATS_ROWS:
        return rows
    return rows[np.linspace(0, len(rows) - 1, HIDDEN_STATS_ROWS).astype(np.int64)]


def hidden_statistics(layers: list[Affine], X: np.ndarray) -> list[C.HiddenLayerStats]:
    """Per hidden unit, the distribution of the folded Gemm output (BN's output) over rows ``X`` (the
    training split): what the service's drift monitor compares each hidden layer's live outputs with."""
    zs = affine_forward(layers, X)[:-1]  # the head is not a hidden layer
    return [
        C.HiddenLayerStats(f"layer{i}", hidden_output_name(i), input_statistics(z)) for i, z in enumerate(zs)
    ]


def fold_model(model: TrainedModel, centre: np.ndarray | None = None) -> list[Affine]:
    """The network as affine layers on raw features (minus ``centre``, when the graph subtracts one), folded
    in float64 (cast to float32 when written).

    With a centre ``c`` the first layer sees ``x - c`` and folds only the rest of the standardization,
    ``(x - c - (mean - c)) / std``: the bias repays the centre's float32 rounding ``c - mean``, so the graph
    is the trained network exactly, up to rounding of small numbers.
    """
    net = model.net
    std = model.standardizer
    shift = std.mean if centre is None else std.mean - centre
    act_op = ONNX_ACTIVATIONS[net.config.activation]
    layers: list[Affine] = []
    first = True
    for blk in net.blocks:
        W, b = blk.linear.W.astype(np.float64), blk.linear.b
        if first:
            W, b = fold_standardization(W, b, shift, std.std)
            first = False
        if blk.bn is not None:
            bn = blk.bn
            W, b = fold_batchnorm(W, bn.gamma, bn.beta, bn.running_mean, bn.running_var, bn.eps, b)
        layers.append(Affine(W, np.zeros(W.shape[1]) if b is None else np.asarray(b, np.float64), act_op))
    W, b = net.head.W.astype(np.float64), net.head.b
    if first:
        W, b = fold_standardization(W, b, shift, std.std)
    assert b is not None
    if model.task == C.TASK_REGRESSION:
        assert model.y_mean is not None and model.y_std is not None
        W, b = fold_output_scale(W, b, model.y_std, model.y_mean)
    layers.append(Affine(W, np.asarray(b, np.float64), None))
    return layers


def network64(model: TrainedModel, design: np.ndarray) -> np.ndarray:
    """The trained network, unfolded, every operation in float64: the pre-softmax logits (classification)
    or the de-standardized predictions (regression) of design rows ``design`` ``(N, D)``. The truth the
    exported graphs are verified against; independent of the fold."""
    net, std = model.net, model.standardizer
    act = ONNX_ACTIVATIONS[net.config.activation]
    h = (np.asarray(design, np.float64) - std.mean) / std.std  # (N, D)
    for blk in net.blocks:
        z = h @ blk.linear.W.astype(np.float64)
        if blk.linear.b is not None:
            z = z + blk.linear.b
        if blk.bn is not None:
            bn = blk.bn
            var = bn.running_var.astype(np.float64)
            z = (z - bn.running_mean) / np.sqrt(var + bn.eps) * bn.gamma.astype(np.float64) + bn.beta
        h = precision.activate(z, act)
    out = h @ net.head.W.astype(np.float64) + net.head.b
    if model.task == C.TASK_REGRESSION:
        assert model.y_mean is not None and model.y_std is not None
        out = out * model.y_std + model.y_mean
    return out


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All outputs of ``model`` on ``feeds`` in onnxruntime (CPU, one thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def feeds_for(contract: C.ModelContract, x: np.ndarray, s: np.ndarray | None) -> dict[str, np.ndarray]:
    """The graph's inputs: float32 numbers, and the categorical strings when the model has any."""
    feeds = {C.INPUT_NAME: np.asarray(x, np.float32)}
    if contract.categorical_names:
        assert s is not None
        feeds[C.INPUT_CATEGORICAL] = np.asarray(s, dtype=object)
    return feeds


def verify(
    folded: onnx.ModelProto,
    unfolded: onnx.ModelProto,
    truth: np.ndarray,
    layers: list[Affine],
    centre: np.ndarray | None,
    contract: C.ModelContract,
    x: np.ndarray,
    s: np.ndarray | None = None,
    unfolded_centre: np.ndarray | None = None,
) -> dict[str, float]:
    """Check both graphs on held-out rows (``x`` numbers, ``s`` strings, as a client sends them) against
    ``truth``, the network's outputs (probabilities or predictions) computed unfolded in float64; raise
    :class:`ExportError` naming the comparison that failed.

    The folded graph (``layers`` after an optional ``centre``) runs in onnxruntime and in ``onnx.reference``,
    the unfolded one in ``onnx.reference``; every output must be within the float32 tolerance of
    :func:`training.precision.error_bound` (the unfolded graph, which subtracts ``unfolded_centre``, within
    ``UNFOLDED_SLACK`` times its own), and the labels must be the truth's wherever its top two probabilities
    are further apart than twice the tolerance.
    """
    classification = contract.task == C.TASK_CLASSIFICATION
    key = C.OUTPUT_PROBABILITIES if classification else C.OUTPUT_PREDICTION
    x32 = np.asarray(x, np.float32)
    design = FeatureEncoder(contract.input_specs).design(x32.astype(np.float64), s)  # (N, D) float64
    # The design's own float32 rounding (stored medians and category frequencies), as a standard deviation.
    design_error = precision.U / np.sqrt(3.0) * np.abs(design)
    bound = precision.error_bound(layers, design, centre, design_error, softmax=classification)
    unfolded_bound = UNFOLDED_SLACK * precision.error_bound(
        layers, design, unfolded_centre, design_error, softmax=classification
    )
    feeds = feeds_for(contract, x32, s)
    served = run_onnxruntime(folded, feeds)
    checks = [
        precision.compare("the folded graph in onnxruntime", served[key], truth, bound),
        precision.compare("the folded graph in onnx.reference", _reference(folded, feeds)[key], truth, bound),
        precision.compare(
            "the unfolded graph in onnx.reference", _reference(unfolded, feeds)[key], truth, unfolded_bound
        ),
    ]
    for check in checks:
        if not check.ok:
            raise ExportError(
                f"verification failed on {len(x32)} held-out rows: {check.describe()} against the float64 "
                "network; nothing was written"
            )
    if classification:
        top2 = np.sort(truth, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * bound.max(axis=1)
        if np.any(served[C.OUTPUT_LABEL][clear] != truth[clear].argmax(axis=1)):
            raise ExportError("verification failed: the folded model's labels differ from the network's")
    return {
        "rows": float(len(x32)),
        "folded_vs_float64": checks[0].max_abs,
        "folded_share_of_tolerance": checks[0].worst_ratio,
        "reference_vs_float64": checks[1].max_abs,
        "unfolded_vs_float64": checks[2].max_abs,
        "centred": float(centre is not None),
    }


def _reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    evaluator = ReferenceEvaluator(model)
    return dict(zip([o.name for o in model.graph.output], evaluator.run(None, feeds)))


def make_contract(result: TrainResult, extra: dict[str, Any] | None = None) -> C.ModelContract:
    """The model's self-description: features, labels, training input statistics and a training summary."""
    data = result.data
    training = {
        "dataset": data.name,
        "source": data.source,
        "rows": dict(data.rows),
        **result.summary(),
        "seed": result.config.seed,
        "bn_stats": result.config.bn_stats,
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "numpy": np.__version__,
        **(extra or {}),
    }
    return C.ModelContract(
        task=data.task,
        feature_names=list(data.feature_names),
        input_stats=data.input_stats,
        class_labels=list(data.class_labels),
        target_names=list(data.target_names),
        training=_json_safe(training),
        hidden_stats=[]
        if result.train_rows is None
        else hidden_statistics(fold_model(result.model), statistics_sample(result.train_rows)),
        inputs=list(data.inputs),
    )


def standardization_note(model: TrainedModel, centre: np.ndarray | None, names: list[str]) -> dict[str, Any]:
    """How the graph standardizes its inputs, for the contract's training summary."""
    std = model.standardizer
    lost = precision.fold_bits_lost(std.mean, std.std)  # (D,)
    worst = int(np.argmax(lost)) if len(lost) else 0
    note: dict[str, Any] = {
        "mean": "subtracted by the graph (Sub before the first Gemm)" if centre is not None else "folded",
        "scale": "folded",
        "max_bits_lost_if_folded": round(float(lost[worst]), 2) if len(lost) else 0.0,
    }
    if len(lost):
        note["worst_feature"] = names[worst] if worst < len(names) else f"design column {worst}"
    return note


def _json_safe(obj: Any) -> Any:
    """Replace non-finite floats (e.g. R² of a constant target) with None so the metadata is strict JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def next_version(model_dir: Path) -> int:
    """The next free integer version under ``<repository>/<name>/``."""
    existing = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(existing, default=0) + 1


def triton_config(name: str, contract: C.ModelContract) -> str:
    """A ``config.pbtxt`` so that the same folder can be served by Triton's onnxruntime backend."""
    if contract.task == C.TASK_CLASSIFICATION:
        outputs = [
            (C.OUTPUT_PROBABILITIES, "TYPE_FP32", f"[ -1, {contract.n_outputs} ]"),
            (C.OUTPUT_LABEL, "TYPE_INT64", "[ -1 ]"),
        ]
    else:
        outputs = [(C.OUTPUT_PREDICTION, "TYPE_FP32", f"[ -1, {contract.n_outputs} ]")]

    def entries(tensors: list[tuple[str, str, str]]) -> str:
        return ",\n".join(
            f'  {{\n    name: "{n}"\n    data_type: {t}\n    dims: {d}\n  }}' for n, t, d in tensors
        )

    out = entries(outputs)
    tensors = [(C.INPUT_NAME, "TYPE_FP32", f"[ -1, {contract.n_features} ]")]
    if contract.categorical_names:
        tensors.append((C.INPUT_CATEGORICAL, "TYPE_STRING", f"[ -1, {len(contract.categorical_names)} ]"))
    inputs = entries(tensors)
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        f"input [\n{inputs}\n]\n"
        f"output [\n{out}\n]\n"
    )


@dataclass
class ExportReport:
    path: Path
    version: int
    verification: dict[str, float]
    unfolded_path: Path | None


def write_version(
    model_dir: Path,
    version: int,
    folded: onnx.ModelProto,
    files: dict[str, str | bytes],
    config_pbtxt: str,
) -> Path:
    """Write ``<model_dir>/<version>/model.onnx`` (and ``files`` beside it) whole, or not at all; refuses to
    overwrite a version. Returns the version's folder."""
    out_dir = model_dir / str(version)
    if out_dir.exists():
        raise ExportError(f"{out_dir} exists already; refusing to overwrite a model version")
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        # The version is written whole into a hidden folder, then renamed into place in one step: a server
        # polling the repository sees it complete or not at all.
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir))
    except OSError as exc:
        raise ExportError(f"cannot create {out_dir}: {exc.strerror}") from None
    try:
        onnx.save(folded, str(staging / "model.onnx"))
        for file_name, content in files.items():
            if isinstance(content, bytes):
                (staging / file_name).write_bytes(content)
            else:
                (staging / file_name).write_text(content)
        # Triton keeps one config.pbtxt per model, beside the version folders; an existing one is kept, as it
        # may carry the operator's version_policy.
        config = model_dir / "config.pbtxt"
        if not config.exists():
            config.write_text(config_pbtxt)
        os.rename(staging, out_dir)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"cannot write {out_dir}: {exc.strerror}") from None
    return out_dir


def export(
    result: TrainResult,
    repository: str | Path,
    name: str,
    unfolded_path: str | Path | None = None,
    version: int | None = None,
) -> ExportReport:
    """Fold, build, verify on the held-out split, then write ``<repository>/<name>/<version>/``."""
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"invalid model name {name!r}")
    model_dir = Path(repository) / name
    version = version or next_version(model_dir)
    centre = centring(result.model)
    design_names = result.data.design_names or result.data.feature_names
    note = standardization_note(result.model, centre, design_names)
    contract = make_contract(result, {"standardization": note})
    layers = fold_model(result.model, centre)
    folded = build_folded(layers, contract, version, centre)
    unfolded = build_unfolded(result.model, contract, version)
    x, s = result.held_out_inputs if result.held_out_inputs is not None else (result.held_out, None)
    truth = network64(
        result.model, FeatureEncoder(contract.input_specs).design(np.float32(x).astype(float), s)
    )
    if contract.task == C.TASK_CLASSIFICATION:
        truth = precision.softmax64(truth)
    mean = np.asarray(result.model.standardizer.mean, np.float64)
    report = verify(folded, unfolded, truth, layers, centre, contract, x, s, unfolded_centre=mean)

    # The per-epoch rows, and the final evaluation (per-class precision and recall, confusion matrices).
    history = (
        json.dumps(_json_safe({"epochs": result.history, "evaluation": result.evaluation}), indent=1) + "\n"
    )
    files: dict[str, str | bytes] = {"history.json": history}
    if (
        "test" in result.evaluation
    ):  # classification: the test split's confusion matrix, if matplotlib is there
        png = confusion_png(result.evaluation["test"], f"{name} v{version}, test split")
        if png is not None:
            files[CONFUSION_PNG] = png
    out_dir = write_version(model_dir, version, folded, files, triton_config(name, contract))
    path = out_dir / "model.onnx"
    if unfolded_path is not None:
        unfolded_path = Path(unfolded_path)
        unfolded_path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(unfolded, str(unfolded_path))
    return ExportReport(path, version, report, unfolded_path)
