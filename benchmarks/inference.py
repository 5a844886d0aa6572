"""onnxruntime latency (batch 1) and throughput (batch 1024): the folded graph against the unfolded one.

Both graphs come from the same trained network in the same run (the digits defaults, or a quick model with
``--quick``), run in onnxruntime with the same session options, alternating rounds; the best round of each
is kept so that a noisy neighbour hurts both alike.

    python -m benchmarks.inference [--threads 1] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import onnxruntime as ort

from training import export as E
from training.data import load_digits
from training.train import TrainConfig, train


def session(model, threads: int, optimize: bool) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def calls_per_second(sess: ort.InferenceSession, x: np.ndarray, budget: float) -> tuple[float, float]:
    """(calls/s, median µs per call) over ``budget`` seconds."""
    feed = {"input": x}
    # What the service asks for: the client outputs, not the hidden ones its drift monitor fetches separately.
    names = [o.name for o in sess.get_outputs()][:2]
    for _ in range(20):
        sess.run(names, feed)
    times = []
    end = time.perf_counter() + budget
    while (t0 := time.perf_counter()) < end:
        sess.run(names, feed)
        times.append(time.perf_counter() - t0)
    return len(times) / sum(times), float(np.median(times) * 1e6)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--seconds", type=float, default=2.0, help="time budget per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a 2-epoch model instead of the default training")
    args = p.parse_args()

    ds = load_digits()
    res = train(ds, config=TrainConfig(epochs=2 if args.quick else 100), progress=False)
    contract = E.make_contract(res)
    folded = E.build_folded(E.fold_model(res.model), contract, 1)
    unfolded = E.build_unfolded(res.model, contract, 1)
    rng = np.random.default_rng(0)
    print(
        f"# onnxruntime {ort.__version__}, {args.threads} intra-op thread(s), {platform.machine()}, {os.cpu_count()} cores"
    )
    print(f"# nodes: folded {len(folded.graph.node)}, unfolded {len(unfolded.graph.node)}")
    print("# ort-opt: onnxruntime's graph optimizations (on by default; they fuse BN into MatMul themselves)")
    print(
        f"{'ort-opt':<7} {'batch':>5} {'graph':<9} {'calls/s':>10} {'median µs':>10} {'rows/s':>12} {'folded/unfolded':>16}"
    )
    for optimize, batch in ((True, 1), (True, 1024), (False, 1), (False, 1024)):
        sessions = {
            name: session(m, args.threads, optimize)
            for name, m in (("folded", folded), ("unfolded", unfolded))
        }
        x = ds.X[rng.integers(0, len(ds.X), batch)].astype(np.float32)
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeats):
            for name, sess in sessions.items():
                cps, med = calls_per_second(sess, x, args.seconds)
                if name not in best or cps > best[name][0]:
                    best[name] = (cps, med)
        for name, (cps, med) in best.items():
            ratio = f"{best['folded'][0] / best['unfolded'][0]:16.2f}" if name == "folded" else ""
            print(
                f"{'on' if optimize else 'off':<7} {batch:>5} {name:<9} {cps:10,.0f} {med:10.1f} {cps * batch:12,.0f} {ratio}"
            )


if __name__ == "__main__":
    main()
