"""The folded network and its ONNX graphs: the served graph (``Gemm`` + activation per layer, then the task's
head), the unfolded one for inspection (standardization and ``BatchNormalization`` as nodes), and the parts
every graph shares (input and outputs, the head, the model wrapper carrying the contract).

:func:`training.export.export` builds, verifies and writes them; ``training.adapt`` builds its corrected graph
from the same parts.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import contract as C
from training import frontend, precision
from training.precision import Affine
from training.train import TrainedModel

__all__ = ["Affine", "activate", "affine_forward", "build_folded", "build_unfolded", "finish", "io_values"]

OPSET = 17
IR_VERSION = 8  # opset 17's IR: readable by every onnxruntime since 1.13
BATCH_DIM = "N"
# The ONNX operator of each hidden activation (training.layers.ACTIVATIONS names them).
ONNX_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}


def activate(op: str | None, z: np.ndarray) -> np.ndarray:
    """The numpy twin of the ONNX activation ``op`` (None: the identity, as for the head)."""
    return precision.activate(z, op)


def affine_forward(layers: list[Affine], X: np.ndarray) -> list[np.ndarray]:
    """Every layer's Gemm output ``x @ W + b`` (before its activation) on rows ``X``, in float64."""
    outs = []
    h = np.asarray(X, dtype=np.float64)
    for layer in layers:
        z = h @ layer.W + layer.b  # (N, out)
        outs.append(z)
        h = activate(layer.activation, z)
    return outs


def hidden_output_name(i: int) -> str:
    """The graph tensor holding hidden layer ``i``'s folded Gemm output (Batch Norm's output)."""
    return f"layer{i}.z"


def f32(name: str, arr: np.ndarray) -> TensorProto:
    """``arr`` as a float32 initializer called ``name`` (the served graph is float32)."""
    return numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name)


def io_values(task: str, n_features: int, n_outputs: int) -> tuple[list, list]:
    """The graph's input ``input`` ``[N, F]`` and the task's outputs, as the contract names them (a table
    with categories gets its inputs from :func:`training.frontend.build`)."""
    inputs = [helper.make_tensor_value_info(C.INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, n_features])]
    return inputs, output_values(task, n_outputs)


def output_values(task: str, n_outputs: int) -> list:
    """The task's outputs, as the contract names them."""
    if task == C.TASK_CLASSIFICATION:
        outputs = [
            helper.make_tensor_value_info(C.OUTPUT_PROBABILITIES, TensorProto.FLOAT, [BATCH_DIM, n_outputs]),
            helper.make_tensor_value_info(C.OUTPUT_LABEL, TensorProto.INT64, [BATCH_DIM]),
        ]
    else:
        outputs = [
            helper.make_tensor_value_info(C.OUTPUT_PREDICTION, TensorProto.FLOAT, [BATCH_DIM, n_outputs])
        ]
    return outputs


def head_nodes(task: str, pre: str) -> list:
    """Nodes after the last Gemm, whose output is ``pre``."""
    if task == C.TASK_CLASSIFICATION:
        return [
            helper.make_node("Softmax", [pre], [C.OUTPUT_PROBABILITIES], axis=-1, name="softmax"),
            helper.make_node("ArgMax", [pre], [C.OUTPUT_LABEL], axis=1, keepdims=0, name="argmax"),
        ]
    return [helper.make_node("Identity", [pre], [C.OUTPUT_PREDICTION], name="prediction")]


def finish(
    graph: onnx.GraphProto, contract: C.ModelContract, version: int, doc: str, uses_ml: bool = False
) -> onnx.ModelProto:
    """The model around ``graph``: opset (and ``ai.onnx.ml`` when ``uses_ml``), producer, version, the
    contract in ``metadata_props``; checked."""
    opsets = [helper.make_opsetid("", OPSET)]
    if uses_ml:
        opsets.append(helper.make_opsetid(frontend.ML_DOMAIN, frontend.ML_OPSET))
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="bnserve",
        producer_version=C.package_version(),
        ir_version=IR_VERSION,
        doc_string=doc,
    )
    model.model_version = version
    helper.set_model_props(model, contract.to_metadata())
    onnx.checker.check_model(model, full_check=True)
    return model


def build_folded(
    layers: list[Affine], contract: C.ModelContract, version: int, centre: np.ndarray | None = None
) -> onnx.ModelProto:
    """The served graph: the front end, ``Gemm`` + activation per layer, then the task's head."""
    fe = frontend.build(contract.input_specs, centre)
    nodes, inits = list(fe.nodes), list(fe.initializers)
    h = fe.output
    for i, layer in enumerate(layers):
        w, b, z = f"layer{i}.W", f"layer{i}.b", hidden_output_name(i)
        inits += [f32(w, layer.W), f32(b, layer.b)]
        nodes.append(helper.make_node("Gemm", [h, w, b], [z], name=f"layer{i}.gemm"))
        h = z
        if layer.activation is not None:
            a = f"layer{i}.a"
            nodes.append(
                helper.make_node(layer.activation, [z], [a], name=f"layer{i}.{layer.activation.lower()}")
            )
            h = a
    nodes += head_nodes(contract.task, h)
    outputs = output_values(contract.task, contract.n_outputs)
    # The hidden layers' outputs, for the service's drift monitor: extra outputs after the task's own.
    outputs += [
        helper.make_tensor_value_info(hs.output, TensorProto.FLOAT, [BATCH_DIM, hs.stats.n_columns])
        for hs in contract.hidden_stats
    ]
    graph = helper.make_graph(nodes, "bnserve_folded", fe.inputs, outputs, inits)
    how = "the mean subtracted explicitly, the scale" if centre is not None else "input standardization"
    doc = (
        f"bnserve {contract.task} MLP on {len(contract.feature_names)} raw features; Batch Norm and {how} "
        "folded into the Gemm weights."
    )
    return finish(graph, contract, version, doc, fe.uses_ml)


def build_unfolded(model: TrainedModel, contract: C.ModelContract, version: int) -> onnx.ModelProto:
    """The same network with explicit standardization and inference-mode ``BatchNormalization`` nodes."""
    net = model.net
    act_op = ONNX_ACTIVATIONS[net.config.activation]
    fe = frontend.build(contract.input_specs)
    nodes = [
        *fe.nodes,
        helper.make_node("Sub", [fe.output, "std.mean"], ["centred"], name="standardize.sub"),
        helper.make_node("Div", ["centred", "std.std"], ["standardized"], name="standardize.div"),
    ]
    inits = [
        *fe.initializers,
        f32("std.mean", model.standardizer.mean),
        f32("std.std", model.standardizer.std),
    ]
    h = "standardized"
    for i, blk in enumerate(net.blocks):
        inits.append(f32(f"block{i}.W", blk.linear.W))
        nodes.append(helper.make_node("MatMul", [h, f"block{i}.W"], [f"block{i}.z"], name=f"block{i}.matmul"))
        h = f"block{i}.z"
        if blk.linear.b is not None:
            inits.append(f32(f"block{i}.b", blk.linear.b))
            nodes.append(helper.make_node("Add", [h, f"block{i}.b"], [f"block{i}.zb"], name=f"block{i}.add"))
            h = f"block{i}.zb"
        if blk.bn is not None:
            bn = blk.bn
            names = [f"block{i}.bn.{k}" for k in ("gamma", "beta", "mean", "var")]
            inits += [f32(n, v) for n, v in zip(names, (bn.gamma, bn.beta, bn.running_mean, bn.running_var))]
            nodes.append(
                helper.make_node(
                    "BatchNormalization", [h, *names], [f"block{i}.bn"], epsilon=bn.eps, name=f"block{i}.bn"
                )
            )
            h = f"block{i}.bn"
        nodes.append(helper.make_node(act_op, [h], [f"block{i}.a"], name=f"block{i}.{act_op.lower()}"))
        h = f"block{i}.a"
    inits += [f32("head.W", net.head.W), f32("head.b", net.head.b)]
    nodes.append(helper.make_node("Gemm", [h, "head.W", "head.b"], ["head.z"], name="head.gemm"))
    h = "head.z"
    if model.task == C.TASK_REGRESSION:
        assert model.y_mean is not None and model.y_std is not None
        inits += [f32("target.std", model.y_std), f32("target.mean", model.y_mean)]
        nodes += [
            helper.make_node("Mul", [h, "target.std"], ["head.scaled"], name="target.mul"),
            helper.make_node("Add", ["head.scaled", "target.mean"], ["head.out"], name="target.add"),
        ]
        h = "head.out"
    nodes += head_nodes(model.task, h)
    graph = helper.make_graph(
        nodes, "bnserve_unfolded", fe.inputs, output_values(contract.task, contract.n_outputs), inits
    )
    doc = "bnserve MLP, unfolded for inspection: standardization and BatchNormalization kept as nodes."
    return finish(graph, contract, version, doc, fe.uses_ml)
