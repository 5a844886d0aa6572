"""The float32 tolerance: a correct float32 evaluation stays inside it, a wrong fold does not, and the centring
decision follows the cancellation it avoids."""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from training import precision as P


def random_net(rng, sizes, activation="Relu"):
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        last = i == len(sizes) - 2
        layers.append(
            P.Affine(
                rng.normal(0, np.sqrt(2 / a), (a, b)), rng.normal(0, 0.5, b), None if last else activation
            )
        )
    return layers


def onnx_graph(layers, centre=None):
    """The served graph's shape: [Sub] -> Gemm -> act ... -> Gemm -> Softmax, float32."""
    nodes, inits, h = [], [], "x"
    if centre is not None:
        inits.append(numpy_helper.from_array(centre.astype(np.float32), "c"))
        nodes.append(helper.make_node("Sub", ["x", "c"], ["xc"]))
        h = "xc"
    for i, layer in enumerate(layers):
        inits += [
            numpy_helper.from_array(layer.W.astype(np.float32), f"W{i}"),
            numpy_helper.from_array(layer.b.astype(np.float32), f"b{i}"),
        ]
        nodes.append(helper.make_node("Gemm", [h, f"W{i}", f"b{i}"], [f"z{i}"]))
        h = f"z{i}"
        if layer.activation:
            nodes.append(helper.make_node(layer.activation, [h], [f"a{i}"]))
            h = f"a{i}"
    nodes.append(helper.make_node("Softmax", [h], ["p"], axis=-1))
    n_in = layers[0].W.shape[0]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", None])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def served_vs_truth(layers, x, centre=None, serve_layers=None):
    sess = onnx_graph(serve_layers or layers, centre)
    got = sess.run(None, {"x": x.astype(np.float32)})[0]
    c64 = None if centre is None else centre.astype(np.float32).astype(np.float64)
    want = P.softmax64(P.forward64(layers, x, c64))
    return P.compare("served", got, want, P.error_bound(layers, x, c64, softmax=True))


def test_forward64_is_the_closed_form():
    rng = np.random.default_rng(0)
    layers = random_net(rng, [3, 4, 2], "Tanh")
    x = rng.normal(size=(5, 3))
    want = np.tanh(x @ layers[0].W + layers[0].b) @ layers[1].W + layers[1].b
    np.testing.assert_allclose(P.forward64(layers, x), want, rtol=1e-15, atol=1e-15)


def test_correct_graphs_sit_well_inside_the_bound_and_a_wrong_fold_far_outside():
    rng = np.random.default_rng(1)
    for sizes, act in [([64, 256, 256, 10], "Relu"), ([30, 32, 16, 2], "Tanh"), ([8, 64, 3], "Sigmoid")]:
        layers = random_net(rng, sizes, act)
        x = np.round(rng.normal(0, 3, (400, sizes[0])), 2).astype(np.float32).astype(np.float64)
        ok = served_vs_truth(layers, x)
        assert ok.ok and ok.worst_ratio < 0.5, ok.describe()
        wrong = [P.Affine(layers[0].W * np.r_[1.01, np.ones(sizes[1] - 1)], layers[0].b, act), *layers[1:]]
        bad = served_vs_truth(layers, x, serve_layers=wrong)
        assert not bad.ok and bad.worst_ratio > 10, bad.describe()


def test_a_year_column_folded_is_within_its_bound_and_centred_is_far_more_precise():
    rng = np.random.default_rng(2)
    n = 300
    x = np.column_stack([rng.integers(2023, 2025, n), rng.normal(14, 3.5, n), rng.normal(650, 350, n)])
    x = x.astype(np.float32).astype(np.float64)
    mean, std = x.mean(0), x.std(0)
    assert P.fold_bits_lost(mean, std)[0] > 11 and P.needs_centring(mean, std)
    assert not P.needs_centring(mean[1:], std[1:])
    net = random_net(rng, [3, 64, 64, 2])
    # The first layer on standardized inputs, folded two ways: all of it, or all but the centring.
    W0, b0 = net[0].W / std[:, None], net[0].b
    folded = [P.Affine(W0, b0 - mean @ W0, "Relu"), *net[1:]]
    c32 = mean.astype(np.float32).astype(np.float64)
    centred = [P.Affine(W0, b0 + (c32 - mean) @ W0, "Relu"), *net[1:]]  # the stored mean's rounding, repaid
    truth = P.softmax64(P.forward64(net, (x - mean) / std))
    for layers, centre in ((folded, None), (centred, mean)):
        cmp = served_vs_truth(layers, x, centre)
        assert cmp.ok, cmp.describe()
        c64 = None if centre is None else c32
        np.testing.assert_allclose(P.softmax64(P.forward64(layers, x, c64)), truth, rtol=0, atol=1e-12)
    folded_err = served_vs_truth(folded, x).max_abs
    centred_err = served_vs_truth(centred, x, mean).max_abs
    assert centred_err < folded_err / 20, (centred_err, folded_err)


def test_comparison_names_the_worst_element():
    got = np.array([[0.5, 0.5], [0.2, 0.8]])
    want = np.array([[0.5, 0.5], [0.2, 0.7]])
    c = P.compare("x", got, want, np.full((2, 2), 0.01))
    assert not c.ok and c.where == (1, 1) and "row 1, output 1" in c.describe()
