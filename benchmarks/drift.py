"""Micro-benchmark: the cost of ``DriftMonitor.update`` per request, next to the inference it watches.

    python -m benchmarks.drift [--features 64] [--repeat 2000]

For batch sizes 1 and 64 it prints, in microseconds per request: ``update()``; ``report()``; a float32
``(n, F) x (F, 256)`` matmul, the size of the first layer of a small served MLP; and, when ``onnx`` is
installed, ``InferenceSession.run`` of a real folded-BN-sized MLP graph (F -> 256 -> 256 -> 10, softmax).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import timeit
from collections.abc import Callable

import numpy as np

from service.drift import DriftConfig, DriftMonitor, stats_from_sample


def per_call_us(fn: Callable[[], object], repeat: int) -> float:
    """Best-of-5 mean wall time of ``fn`` in microseconds."""
    fn()  # warm-up
    return min(timeit.repeat(fn, number=repeat, repeat=5)) / repeat * 1e6


def ort_mlp(n_features: int) -> Callable[[np.ndarray], object] | None:
    """An onnxruntime session of an MLP the size bnserve serves, or None without ``onnx``."""
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
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"input": x})


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
    run = ort_mlp(f)
    print(f"numpy {np.__version__}, F={f}, microseconds per request (best of 5 x {args.repeat} calls)")
    cols = ("batch", "update()", "matmul (n,F)x(F,256)", "onnxruntime MLP", "report()")
    print("  ".join(f"{c:>{w}}" for c, w in zip(cols, (5, 9, 20, 15, 9), strict=True)))
    for n in (1, 64):
        x = rng.normal(size=(n, f)).astype(np.float32)
        t_update = per_call_us(lambda x=x: monitor.update(x), args.repeat)
        t_matmul = per_call_us(lambda x=x: x @ w1, args.repeat)
        t_ort = per_call_us(lambda x=x: run(x), args.repeat) if run else float("nan")
        t_report = per_call_us(monitor.report, max(args.repeat // 10, 10))
        print(f"{n:>5}  {t_update:>9.1f}  {t_matmul:>20.1f}  {t_ort:>15.1f}  {t_report:>9.1f}")
    print("update() includes the score check it runs once every check_every_rows rows (amortised).")


if __name__ == "__main__":
    main()
