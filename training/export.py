"""Export: fold the frozen statistics into the weights, write ONNX, and verify before anything is written.

The folded graph (what is served) is ``[Gemm -> activation] * k -> Gemm -> Softmax / ArgMax`` on raw,
unstandardized features. The unfolded graph (for inspection) keeps the standardization as ``Sub``/``Div`` and
each BN as an inference-mode ``BatchNormalization`` node, so anyone can check that the fold is exact. Both are
built in :mod:`training.graph`; here they are folded, verified against each other and written.
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
from training.fold import fold_batchnorm, fold_output_scale, fold_standardization
from training.graph import (
    ONNX_ACTIVATIONS,
    Affine,
    affine_forward,
    build_folded,
    build_unfolded,
    hidden_output_name,
)
from training.train import TrainedModel, TrainResult

TOLERANCE = 1e-5


class ExportError(RuntimeError):
    """The export refused to write a model (verification failed, bad repository, ...)."""


def hidden_statistics(layers: list[Affine], X: np.ndarray) -> list[C.HiddenLayerStats]:
    """Per hidden unit, the distribution of the folded Gemm output (BN's output) over rows ``X`` (the
    training split): what the service's drift monitor compares each hidden layer's live outputs with."""
    zs = affine_forward(layers, X)[:-1]  # the head is not a hidden layer
    return [
        C.HiddenLayerStats(f"layer{i}", hidden_output_name(i), input_statistics(z)) for i, z in enumerate(zs)
    ]


def fold_model(model: TrainedModel) -> list[Affine]:
    """The network as affine layers on raw features, folded in float64 (cast to float32 when written)."""
    net = model.net
    std = model.standardizer
    act_op = ONNX_ACTIVATIONS[net.config.activation]
    layers: list[Affine] = []
    first = True
    for blk in net.blocks:
        W, b = blk.linear.W.astype(np.float64), blk.linear.b
        if first:
            W, b = fold_standardization(W, b, std.mean, std.std)
            first = False
        if blk.bn is not None:
            bn = blk.bn
            W, b = fold_batchnorm(W, bn.gamma, bn.beta, bn.running_mean, bn.running_var, bn.eps, b)
        layers.append(Affine(W, np.zeros(W.shape[1]) if b is None else np.asarray(b, np.float64), act_op))
    W, b = net.head.W.astype(np.float64), net.head.b
    if first:
        W, b = fold_standardization(W, b, std.mean, std.std)
    assert b is not None
    if model.task == C.TASK_REGRESSION:
        assert model.y_mean is not None and model.y_std is not None
        W, b = fold_output_scale(W, b, model.y_std, model.y_mean)
    layers.append(Affine(W, np.asarray(b, np.float64), None))
    return layers


def run_onnxruntime(model: onnx.ModelProto, X: np.ndarray) -> dict[str, np.ndarray]:
    """All outputs of ``model`` on ``X`` in onnxruntime (CPU, one thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {C.INPUT_NAME: X.astype(np.float32)})))


def verify(
    folded: onnx.ModelProto,
    unfolded: onnx.ModelProto,
    model: TrainedModel,
    X: np.ndarray,
    tol: float = TOLERANCE,
) -> dict[str, float]:
    """Compare the folded graph (onnxruntime) with the numpy test-time forward and with the unfolded graph
    (``onnx.reference``) on raw rows ``X``; raise :class:`ExportError` if any gap exceeds ``tol``.

    For classification the gap is the largest absolute difference in ``probabilities`` (and labels must agree
    wherever the top two probabilities are further apart than ``tol``); for regression the largest
    ``|a - b| / (1 + |b|)`` in ``prediction``.
    """
    key = C.OUTPUT_PROBABILITIES if model.task == C.TASK_CLASSIFICATION else C.OUTPUT_PREDICTION
    X32 = X.astype(np.float32)
    served = run_onnxruntime(folded, X32)
    reference = np.asarray(model.output(X), dtype=np.float64)
    ref_eval = ReferenceEvaluator(unfolded)
    unfolded_out = dict(zip([o.name for o in unfolded.graph.output], ref_eval.run(None, {C.INPUT_NAME: X32})))

    def gap(a: np.ndarray, b: np.ndarray) -> float:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if not np.all(np.isfinite(a)):
            return float("inf")
        d = np.abs(a - b)
        return float((d if key == C.OUTPUT_PROBABILITIES else d / (1.0 + np.abs(b))).max())

    report = {
        "folded_vs_numpy": gap(served[key], reference),
        "folded_vs_unfolded": gap(served[key], unfolded_out[key]),
        "unfolded_vs_numpy": gap(unfolded_out[key], reference),
        "rows": float(len(X)),
    }
    worst = max(report["folded_vs_numpy"], report["folded_vs_unfolded"], report["unfolded_vs_numpy"])
    if not worst <= tol:
        raise ExportError(
            f"verification failed: the folded model differs from the unfolded network by {worst:.3g} "
            f"in {key} (tolerance {tol:g}) on {len(X)} held-out rows; nothing was written"
        )
    if key == C.OUTPUT_PROBABILITIES:
        top2 = np.sort(reference, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * tol
        if np.any(served[C.OUTPUT_LABEL][clear] != reference[clear].argmax(axis=1)):
            raise ExportError("verification failed: the folded model's labels differ from the network's")
    return report


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
        else hidden_statistics(fold_model(result.model), result.train_rows),
    )


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
    out = ",\n".join(f'  {{\n    name: "{n}"\n    data_type: {t}\n    dims: {d}\n  }}' for n, t, d in outputs)
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        f'input [\n  {{\n    name: "{C.INPUT_NAME}"\n    data_type: TYPE_FP32\n    dims: [ -1, {contract.n_features} ]\n  }}\n]\n'
        f"output [\n{out}\n]\n"
    )


@dataclass
class ExportReport:
    path: Path
    version: int
    verification: dict[str, float]
    unfolded_path: Path | None


def write_version(
    model_dir: Path, version: int, folded: onnx.ModelProto, files: dict[str, str], config_pbtxt: str
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
        for file_name, text in files.items():
            (staging / file_name).write_text(text)
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
    tol: float = TOLERANCE,
    version: int | None = None,
) -> ExportReport:
    """Fold, build, verify on the held-out split, then write ``<repository>/<name>/<version>/``."""
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"invalid model name {name!r}")
    model_dir = Path(repository) / name
    version = version or next_version(model_dir)
    contract = make_contract(result)
    folded = build_folded(fold_model(result.model), contract, version)
    unfolded = build_unfolded(result.model, contract, version)
    report = verify(folded, unfolded, result.model, result.held_out, tol)

    history = json.dumps(result.history, indent=1) + "\n"
    out_dir = write_version(
        model_dir, version, folded, {"history.json": history}, triton_config(name, contract)
    )
    path = out_dir / "model.onnx"
    if unfolded_path is not None:
        unfolded_path = Path(unfolded_path)
        unfolded_path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(unfolded, str(unfolded_path))
    return ExportReport(path, version, report, unfolded_path)
