"""Adaptation without labels (AdaBN, Li et al. 2016): re-estimate the input standardization and every Batch
Norm layer's population statistics on live rows, weights frozen, and publish the result as a new version.

Why it works on the served artifact alone
-----------------------------------------
The served graph has no BatchNormalization node left: hidden layer ``k`` is one Gemm whose output
``y = z * a + c`` (per unit) is Batch Norm's output, ``a = gamma / sqrt(var + eps)``, ``c = beta - mean * a``,
``z`` the pre-BN activation. Re-estimating BN's statistics on new rows (mean ``mu'``, variance ``var'`` of
``z``) gives ``y' = gamma (z - mu') / sqrt(var' + eps) + beta``. Because ``y`` is an affine function of ``z``,
standardizing ``y`` on the new rows is standardizing ``z`` on them, so (``eps`` aside)::

    y' = m + s * (y - mean_new(y)) / std_new(y)

where ``m`` and ``s`` are the mean and the standard deviation of ``y`` on the training split, the ones the
contract records per hidden unit (``bnserve.hidden_stats``; with population statistics ``m = beta`` and
``s = |gamma|``). The input standardization is re-estimated the same way from the contract's
``input_stats``: ``x' = mean_train + std_train * (x - mean_new) / std_new``. Each correction is an affine map
per unit, so it folds into the Gemm weights (``W' = W * alpha``, ``b' = b * alpha + delta``) exactly as
export folds BN: the adapted version has the same graph, only its weights differ. Weights are frozen: nothing
is learned, only statistics are re-estimated.

Layer by layer (PreciseBN-style, Wu & Johnson 2021): layer ``k``'s statistics are computed on all the rows
with layers ``< k`` already adapted and in test mode, so each estimate sees the distribution the served graph
will feed it, and no estimate depends on a batch size.

Two edge cases: a unit that was constant in training (a border pixel of the digits) is held at its training
value (``alpha = 0``): the network never learned anything from it. A unit constant in the adaptation rows but
not in training only has its mean moved (``alpha = 1``): the rows say nothing about its scale.

The new version's ``input_stats`` and ``hidden_stats`` are those of the adaptation rows (the distribution it
is now adapted to, so the drift monitor compares live traffic with them), and ``bnserve.adaptation`` records
the parent version, the rows, the date and the drift scores of the rows against the parent's statistics.

This module holds the maths (corrections, their fold, the verification graph); reading the rows and the
versions, writing the new one and the command line are in :mod:`training.adapt_cli`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

import contract as C
from training.graph import (
    ONNX_ACTIVATIONS,
    Affine,
    activate,
    f32,
    finish,
    head_nodes,
    io_values,
)

#: Fewer adaptation rows than this are refused: below ~100 the per-unit standard deviations are too noisy
#: (docs/experiments/adaptation.md measures accuracy after adapting on 10, 100 and 1000 rows).
MIN_ROWS = 100
#: A standard deviation below this is "constant" (training or adaptation rows), as the standardizer's floor.
STD_FLOOR = 1e-8
SCOPES = ("all", "inputs")
_ACTIVATIONS = set(ONNX_ACTIVATIONS.values())


class AdaptError(ValueError):
    """Adaptation refused (too few rows, feature mismatch, a model without Batch Norm, ...); one line."""


@dataclass(frozen=True)
class Correction:
    """The affine map ``v -> v * alpha + delta`` per column that re-estimates one layer's statistics."""

    alpha: np.ndarray  # (D,)
    delta: np.ndarray  # (D,)

    @classmethod
    def matching(
        cls, live: np.ndarray, train_mean: Sequence[float], train_std: Sequence[float]
    ) -> Correction:
        """The map giving ``live`` (N, D) the training mean and standard deviation per column."""
        live = np.asarray(live, dtype=np.float64)
        m_live, s_live = live.mean(axis=0), live.std(axis=0)  # (D,)
        m_tr, s_tr = np.asarray(train_mean, np.float64), np.asarray(train_std, np.float64)
        constant_live = s_live < STD_FLOOR
        alpha = np.where(constant_live, 1.0, s_tr / np.where(constant_live, 1.0, s_live))
        alpha = np.where(s_tr < STD_FLOOR, 0.0, alpha)  # constant in training: keep it at its training value
        return cls(alpha, m_tr - alpha * m_live)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        return v * self.alpha + self.delta


@dataclass
class Adapted:
    """An adapted network: the parent's folded layers, the corrections, and the corrections folded in."""

    parent: list[Affine]
    inputs: Correction
    hidden: list[Correction | None]  # one per hidden layer; None where the layer was left as it was
    task: str
    layers: list[Affine] = field(init=False)

    def __post_init__(self) -> None:
        self.layers = fold_corrections(self.parent, self.inputs, self.hidden)

    def hidden_outputs(self, X: np.ndarray) -> list[np.ndarray]:
        """Each hidden layer's output with the corrections applied explicitly (not folded), float64."""
        return self._forward(X)[0]

    def output(self, X: np.ndarray) -> np.ndarray:
        """Probabilities or predictions from raw rows, corrections applied as separate steps (for
        :func:`training.export.verify`, which compares it with the folded graph)."""
        return self._forward(X)[1]

    def _forward(self, X: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        h = self.inputs(np.asarray(X, dtype=np.float64))
        hidden = []
        for layer, corr in zip(self.parent[:-1], self.hidden):
            z = h @ layer.W + layer.b  # (N, out)
            z = corr(z) if corr is not None else z
            hidden.append(z)
            h = activate(layer.activation, z)
        out = h @ self.parent[-1].W + self.parent[-1].b
        if self.task == C.TASK_CLASSIFICATION:
            e = np.exp(out - out.max(axis=1, keepdims=True))
            out = e / e.sum(axis=1, keepdims=True)
        return hidden, out


def fold_corrections(
    layers: list[Affine], inputs: Correction, hidden: Sequence[Correction | None]
) -> list[Affine]:
    """Fold the input correction into the first Gemm and each hidden correction into its layer's Gemm."""
    first = layers[0]
    out = [Affine(first.W * inputs.alpha[:, None], first.b + inputs.delta @ first.W, first.activation)]
    out += layers[1:]
    for k, corr in enumerate(hidden):
        if corr is not None:
            layer = out[k]
            out[k] = Affine(layer.W * corr.alpha, layer.b * corr.alpha + corr.delta, layer.activation)
    return out


def adapt_layers(
    layers: list[Affine],
    input_stats: C.InputStats,
    hidden_stats: Sequence[C.HiddenLayerStats],
    X: np.ndarray,
    task: str,
    scope: str = "all",
) -> Adapted:
    """Re-estimate the input standardization (and, with ``scope="all"``, every hidden layer's statistics,
    layer by layer) on raw rows ``X`` (N, F); the folded ``layers`` are not modified."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    X = np.asarray(X, dtype=np.float64)
    inputs = Correction.matching(X, input_stats.mean, input_stats.std)
    corrections: list[Correction | None] = [None] * (len(layers) - 1)
    if scope == "all":
        if len(hidden_stats) != len(layers) - 1:
            raise ValueError(
                f"expected statistics for {len(layers) - 1} hidden layers, got {len(hidden_stats)}"
            )
        h = inputs(X)
        for k, (layer, ref) in enumerate(zip(layers[:-1], hidden_stats)):
            z = h @ layer.W + layer.b  # (N, out): layers < k adapted already
            corrections[k] = Correction.matching(z, ref.stats.mean, ref.stats.std)
            h = activate(layer.activation, corrections[k](z))
    return Adapted(layers, inputs, corrections, task)


# --- reading the served graph back --------------------------------------------------------------------------


def read_folded(model: onnx.ModelProto) -> list[Affine]:
    """The folded layers of a served graph written by export: ``[Gemm -> activation] * k -> Gemm -> head``."""
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers: list[Affine] = []
    h = C.INPUT_NAME
    while True:
        gemms = [n for n in consumers.get(h, []) if n.op_type == "Gemm"]
        if len(gemms) != 1 or any(
            a.name not in ("alpha", "beta", "transA", "transB") for a in gemms[0].attribute
        ):
            raise AdaptError(f"unsupported graph: expected one Gemm reading {h!r}")
        gemm = gemms[0]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
        if attrs.get("transA", 0) or attrs.get("transB", 0) or attrs.get("alpha", 1.0) != 1.0:
            raise AdaptError(f"unsupported graph: Gemm {gemm.name!r} is transposed or scaled")
        W, b = inits.get(gemm.input[1]), inits.get(gemm.input[2]) if len(gemm.input) > 2 else None
        if W is None or b is None:
            raise AdaptError(f"unsupported graph: Gemm {gemm.name!r} has no constant weights and bias")
        z = gemm.output[0]
        acts = [n for n in consumers.get(z, []) if n.op_type in _ACTIVATIONS]
        if not acts:
            layers.append(Affine(W.astype(np.float64), b.astype(np.float64), None))
            return layers
        layers.append(Affine(W.astype(np.float64), b.astype(np.float64), acts[0].op_type))
        h = acts[0].output[0]


def check_adaptable(path: Path, mc: C.ModelContract, layers: list[Affine]) -> None:
    """Refuse, in one line, a model that has no Batch Norm statistics to re-estimate."""
    model_config = mc.training.get("model_config", {})
    if len(layers) < 2 or not model_config.get("hidden", [1]):
        raise AdaptError(
            f"{path}: the model has no hidden layers, hence no Batch Norm statistics to re-estimate"
        )
    if model_config.get("batchnorm") is False:
        raise AdaptError(
            f"{path}: the model has no Batch Norm layers (trained with --no-batchnorm); adaptation re-estimates "
            "Batch Norm statistics"
        )
    if len(mc.hidden_stats) != len(layers) - 1:
        raise AdaptError(
            f"{path}: the model carries no hidden-layer statistics (exported by an older bnserve); "
            "re-export it to adapt it"
        )


def build_corrected(
    layers: list[Affine], adapted: Adapted, contract: C.ModelContract, version: int
) -> onnx.ModelProto:
    """The parent's folded graph with each correction as explicit ``Mul``/``Add`` nodes (not folded): the
    "unfolded" side of the verification, run in ``onnx.reference``."""
    from onnx import helper

    nodes, inits = [], []

    def affine(h: str, corr: Correction, tag: str) -> str:
        inits.extend([f32(f"{tag}.alpha", corr.alpha), f32(f"{tag}.delta", corr.delta)])
        nodes.append(helper.make_node("Mul", [h, f"{tag}.alpha"], [f"{tag}.scaled"], name=f"{tag}.mul"))
        nodes.append(
            helper.make_node("Add", [f"{tag}.scaled", f"{tag}.delta"], [f"{tag}.out"], name=f"{tag}.add")
        )
        return f"{tag}.out"

    h = affine(C.INPUT_NAME, adapted.inputs, "adapt.inputs")
    for i, layer in enumerate(layers):
        inits += [f32(f"layer{i}.W", layer.W), f32(f"layer{i}.b", layer.b)]
        nodes.append(
            helper.make_node(
                "Gemm", [h, f"layer{i}.W", f"layer{i}.b"], [f"layer{i}.gemm"], name=f"layer{i}.gemm"
            )
        )
        h = f"layer{i}.gemm"
        corr = adapted.hidden[i] if i < len(adapted.hidden) else None
        if corr is not None:
            h = affine(h, corr, f"adapt.layer{i}")
        if layer.activation is not None:
            nodes.append(helper.make_node(layer.activation, [h], [f"layer{i}.a"], name=f"layer{i}.act"))
            h = f"layer{i}.a"
    nodes += head_nodes(contract.task, h)
    inputs, outputs = io_values(contract.task, contract.n_features, contract.n_outputs)
    graph = helper.make_graph(nodes, "bnserve_adapted_unfolded", inputs, outputs, inits)
    return finish(graph, contract, version, "bnserve adapted MLP with the corrections as separate nodes.")
