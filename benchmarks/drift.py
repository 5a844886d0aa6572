"""Micro-benchmark: the cost of ``DriftMonitor.update`` per request, next to the inference it watches.

    python -m benchmarks.drift [--features 64] [--repeat 2000]

For batch sizes 1 and 64 it prints, in microseconds per request: ``update()``; ``report()``; a float32
``(n, F) x (F, 256)`` matmul, the size of the first layer of a small served MLP; and, when ``onnx`` is
installed, ``InferenceSession.run`` of a real folded-BN-sized MLP graph (F -> 256 -> 256 -> 10, softmax),
the same run when the graph also declares its two hidden Gemm outputs as graph outputs (the request path
of a model exported with hidden statistics), and the update of a monitor that also watches the two hidden
layers (``ModelDriftMonitor.update_layers``: the inputs' update plus two 256-unit updates on the hidden
outputs the serving run computed, the work the observer feeder does; without ``BNSERVE_DRIFT_LAYERS_MAX_ROWS``'
sampling). Run it with ``OPENBLAS_NUM_THREADS=1`` for the service's setting (``python -m service`` sets it).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np

from contract import HiddenLayerStats, ModelContract
from service.drift import DriftConfig, DriftMonitor, stats_from_sample
from service.hidden_drift import ModelDriftMonitor


def per_call_us(fn: Callable[[], object], repeat: int) -> float:
    """Best-of-5 mean wall time of ``fn`` in microseconds."""
    fn()  # warm-up
    return min(timeit.repeat(fn, number=repeat, repeat=5)) / repeat * 1e6


def ort_mlp(n_features: int, hidden_outputs: bool = False) -> Any:
    """An onnxruntime session of an MLP the size bnserve serves (with its Gemm outputs ``z0``, ``z1`` as extra
    graph outputs when ``hidden_outputs``), or None without ``onnx``."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    sizes = [n_features, 256, 256, 10]
    nodes, inits, prev = [], [], "input"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        inits += [
            numpy_helper.from_array(rng.normal(0, a**-0.5, (a, b)).astype(np.float32), f"W{i}"),
            numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}"),
        ]
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [f"z{i}"]))
        prev = f"z{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"h{i}"]))
            prev = f"h{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["probabilities"], axis=1))
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10])]
    if hidden_outputs:
        outputs += [helper.make_tensor_value_info(z, TensorProto.FLOAT, [None, 256]) for z in ("z0", "z1")]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_features])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def model_monitor(train: np.ndarray, sess: Any) -> ModelDriftMonitor:
    """A monitor of the inputs and of the hidden layers ``z0``, ``z1`` of ``sess``, as the service builds it."""
    hidden = sess.run(["z0", "z1"], {"input": train.astype(np.float32)})
    mc = ModelContract(
        task="classification",
        feature_names=[f"x{j}" for j in range(train.shape[1])],
        input_stats=stats_from_sample(train),
        class_labels=list(range(10)),
        hidden_stats=[
            HiddenLayerStats(f"layer{i}", z, stats_from_sample(h))
            for i, (z, h) in enumerate(zip(("z0", "z1"), hidden))
        ],
    )
    return ModelDriftMonitor(mc, name="bench", layers=True)


def main() -> None:
    """Time update(), report() and the references; print one line per batch size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    # The same batch over and over is a drift: keep the warning out of the timings' output.
    logging.getLogger("service.drift").setLevel(logging.ERROR)
    f = args.features
    rng = np.random.default_rng(0)
    train = rng.normal(size=(5000, f))
    monitor = DriftMonitor(stats_from_sample(train), [f"x{j}" for j in range(f)], DriftConfig())
    w1 = rng.normal(size=(f, 256)).astype(np.float32)
    plain, with_hidden = ort_mlp(f), ort_mlp(f, hidden_outputs=True)
    layers = model_monitor(train, with_hidden) if with_hidden else None

    def layers_update(x: np.ndarray) -> Callable[[], None]:
        """The feeder's work for rows ``x``: their hidden outputs come with them from the serving run."""
        assert layers is not None and with_hidden is not None
        zs = with_hidden.run(["z0", "z1"], {"input": x})
        return lambda: layers.update_layers(x, zs)

    nan = float("nan")
    print(f"numpy {np.__version__}, F={f}, microseconds per request (best of 5 x {args.repeat} calls)")
    cols = (
        "batch",
        "update()",
        "matmul (n,F)x(F,256)",
        "onnxruntime MLP",
        "ort, hidden outputs declared",
        "update() + 2 layers",
        "report()",
        "report() + 2 layers",
    )
    widths = [len(c) for c in cols]
    print("  ".join(cols))
    for n in (1, 64):
        x = rng.normal(size=(n, f)).astype(np.float32)
        t = [
            per_call_us(lambda x=x: monitor.update(x), args.repeat),
            per_call_us(lambda x=x: x @ w1, args.repeat),
            per_call_us(lambda x=x: plain.run(["probabilities"], {"input": x}), args.repeat)
            if plain
            else nan,
            per_call_us(lambda x=x: with_hidden.run(["probabilities"], {"input": x}), args.repeat)
            if with_hidden
            else nan,
            per_call_us(layers_update(x), args.repeat) if layers else nan,
            per_call_us(monitor.report, max(args.repeat // 10, 10)),
            per_call_us(layers.report, max(args.repeat // 10, 10)) if layers else nan,
        ]
        print("  ".join([f"{n:>{widths[0]}}"] + [f"{v:>{w}.1f}" for v, w in zip(t, widths[1:], strict=True)]))
    print("update() includes the score check it runs once every check_every_rows rows (amortised).")


if __name__ == "__main__":
    main()
