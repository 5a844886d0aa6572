"""The served graph's front end: from what a client sends to the design matrix the first Gemm reads.

Inputs: ``input`` (float32 ``[N, n_numeric]``, NaN for a missing cell of an imputed feature) and, when the
model has categorical or boolean features, ``categorical`` (string ``[N, n_categorical]``, ``""`` for a
missing cell). The nodes, all in onnxruntime's default and ``ai.onnx.ml`` domains and in ``onnx.reference``:

- ``Where(IsNaN(input), impute, input)``: missing numbers get the training median;
- ``Cast(IsNaN(input))`` gathered to the features that have a missing indicator;
- per categorical feature: ``Gather`` its column, ``LabelEncoder`` (category -> index; ``""`` -> the imputed
  category; anything else -> the unknown index ``K``), ``Gather`` a row of the ``(K + 1, K)`` one-hot table
  whose last row (unknown) holds the training frequencies;
- ``Concat`` in the design order of :class:`training.tables.FeatureEncoder`;
- optionally ``Sub(design, centre)``: the centring kept out of the fold when folding would lose precision
  (:func:`training.precision.needs_centring`).

:meth:`training.tables.FeatureEncoder.design` is the same computation in float64, the reference the export
verifies against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import contract as C
from training.tables import one_hot_table

ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 2  # LabelEncoder with keys_strings / values_int64s
BATCH_DIM = "N"


@dataclass
class Frontend:
    """Graph inputs, nodes and initializers computing ``output`` (float32 ``[N, D]``) from them."""

    inputs: list = field(default_factory=list)
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    output: str = C.INPUT_NAME
    uses_ml: bool = False


def _const(name: str, arr: np.ndarray, dtype: type = np.float32) -> TensorProto:
    # np.array, not np.ascontiguousarray: the latter turns a scalar (a Gather index) into shape (1,).
    return numpy_helper.from_array(np.array(arr, dtype=dtype, order="C"), name)


def build(specs: list[C.InputSpec], centre: np.ndarray | None = None) -> Frontend:
    """The front end for features ``specs`` (contract order); ``centre`` (float32-representable) if any."""
    numeric = [s for s in specs if s.is_numeric]
    categorical = [s for s in specs if not s.is_numeric]
    fe = Frontend()
    fe.inputs.append(
        helper.make_tensor_value_info(C.INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, len(numeric)])
    )
    parts: list[str] = []
    imputed = [s.impute is not None for s in numeric]
    if any(imputed):
        fill = np.array([np.nan if s.impute is None else float(s.impute) for s in numeric])
        fe.initializers.append(_const("impute.values", fill))
        fe.nodes += [
            helper.make_node("IsNaN", [C.INPUT_NAME], ["impute.missing"], name="impute.isnan"),
            helper.make_node(
                "Where", ["impute.missing", "impute.values", C.INPUT_NAME], ["numeric"], name="impute.where"
            ),
        ]
        parts.append("numeric")
    else:
        parts.append(C.INPUT_NAME)
    flagged = [j for j, s in enumerate(numeric) if s.missing_indicator]
    if flagged:
        fe.initializers.append(_const("indicator.columns", np.array(flagged), np.int64))
        fe.nodes += [
            helper.make_node(
                "Cast", ["impute.missing"], ["indicator.all"], to=TensorProto.FLOAT, name="indicator.cast"
            ),
            helper.make_node(
                "Gather",
                ["indicator.all", "indicator.columns"],
                ["indicators"],
                axis=1,
                name="indicator.gather",
            ),
        ]
        parts.append("indicators")
    if any(s.missing_indicator for s in categorical):
        raise ValueError(
            "missing indicators of categorical features are not supported (the category is imputed)"
        )
    if categorical:
        fe.uses_ml = True
        fe.inputs.append(
            helper.make_tensor_value_info(
                C.INPUT_CATEGORICAL, TensorProto.STRING, [BATCH_DIM, len(categorical)]
            )
        )
        for j, spec in enumerate(categorical):
            p = f"cat{j}"
            keys = list(spec.categories)
            values = list(range(len(keys)))
            if isinstance(spec.impute, str):
                keys.append("")
                values.append(spec.categories.index(spec.impute))
            fe.initializers += [
                _const(f"{p}.column", np.array(j), np.int64),
                _const(f"{p}.table", one_hot_table(spec)),
            ]
            fe.nodes += [
                helper.make_node(
                    "Gather", [C.INPUT_CATEGORICAL, f"{p}.column"], [f"{p}.text"], axis=1, name=f"{p}.gather"
                ),
                helper.make_node(
                    "LabelEncoder",
                    [f"{p}.text"],
                    [f"{p}.code"],
                    domain=ML_DOMAIN,
                    keys_strings=keys,
                    values_int64s=values,
                    default_int64=len(spec.categories),
                    name=f"{p}.encode",
                ),
                helper.make_node(
                    "Gather", [f"{p}.table", f"{p}.code"], [f"{p}.onehot"], axis=0, name=f"{p}.onehot"
                ),
            ]
            parts.append(f"{p}.onehot")
    if len(parts) > 1:
        fe.nodes.append(helper.make_node("Concat", parts, ["design"], axis=1, name="design.concat"))
        out = "design"
    else:
        out = parts[0]
    if centre is not None:
        fe.initializers.append(_const("centre", centre))
        fe.nodes.append(helper.make_node("Sub", [out, "centre"], ["centred"], name="centre.sub"))
        out = "centred"
    fe.output = out
    return fe
