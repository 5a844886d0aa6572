"""A big numeric table: write it, time loading it (and its peak memory), and time training epochs on it.

    python -m benchmarks.big_table write big.csv [--rows 1000000] [--cols 20]   # ~185 MB, not committed
    python -m benchmarks.big_table load big.csv [--loader MODULE]               # seconds, peak RSS
    python -m benchmarks.big_table train big.csv [--epochs 5] [--batch 512]     # seconds per epoch
    python -m benchmarks.big_table probe big.csv [--steps 60000] [--no-flush]   # a long run's step cost

``load`` runs in a fresh process: the loader's module (with numpy and pyarrow) is imported first, then the
resident memory is read, the file loaded, and the peak resident memory (``ru_maxrss``) read again; the
difference is the loader's, to compare with its final arrays (features and labels). It prints wall and CPU
seconds (the CPU time does not depend on what else the machine runs). ``--loader`` names another module with
a ``load_csv(path, target)`` (e.g. an older ``training/data.py`` saved elsewhere) to measure it the same way.
``train`` uses the command line's size-aware defaults (``--epochs``, ``--batch`` override them; early
stopping is off so that every epoch runs) and prints the wall and CPU time of every epoch, so that a
slowdown over the run shows. ``probe`` trains 256-256 at batch 64 (``--batch``) on 100,000 rows
(``--sample``) for ``--steps`` steps and prints, per 5,000 steps, the CPU seconds and the share of subnormal
float32 values in Adam's moments, the parameters, their gradients and the output gradient (``--no-flush``
turns Adam's flushing of subnormal moments off); run it with ``OPENBLAS_NUM_THREADS=1`` for steady CPU times.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import resource
import sys
import time
from pathlib import Path

import numpy as np


def write(path: Path, rows: int, cols: int, seed: int = 0) -> None:
    """``rows`` x ``cols`` features (varied scales and offsets) and a 0/1 target from a noisy linear rule."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.1, 1000, cols)
    offset = rng.uniform(-500, 500, cols)
    w = rng.normal(size=cols)
    header = ",".join([f"x{j}" for j in range(cols)] + ["y"])
    with path.open("w") as f:
        f.write(header + "\n")
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            z = rng.normal(size=(n, cols))
            y = ((z @ w + rng.normal(0, 1, n)) > 0).astype(int)
            X = z * scale + offset
            lines = [",".join(f"{v:.6g}" for v in row) + f",{t}" for row, t in zip(X.tolist(), y.tolist())]
            f.write("\n".join(lines) + "\n")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024  # kB


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load(path: Path, loader: str | None) -> None:
    if loader:
        spec = importlib.util.spec_from_file_location("loader", loader)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["loader"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        load_csv = module.load_csv
    else:
        from training.data import load_csv
    try:  # what a reader imports lazily is part of the interpreter's baseline, not of the load
        import pyarrow.csv  # noqa: F401
    except ImportError:
        pass
    base = current_rss_mib()
    cpu, start = cpu_seconds(), time.perf_counter()
    ds = load_csv(path, "y")
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    final32 = (ds.X.shape[0] * ds.X.shape[1] * 4 + ds.y.nbytes) / 2**20
    print(
        f"loaded {ds.X.shape[0]:,} x {ds.X.shape[1]} in {seconds:.1f} s ({cpu:.1f} s CPU); peak RSS "
        f"{peak_rss_mib():.0f} MiB, {peak_rss_mib() - base:.0f} MiB above the {base:.0f} MiB before loading; "
        f"X {ds.X.dtype} {ds.X.nbytes / 2**20:.0f} MiB; final arrays as float32 (X, y) {final32:.0f} MiB"
    )


def train_epochs(path: Path, epochs: int | None, batch: int | None) -> None:
    from training.data import load_csv, split
    from training.train import Step, TrainConfig, sized, sized_hidden, train

    ds = load_csv(path, "y")
    n_train = len(split(ds, np.random.default_rng(0)).train)
    size = sized(n_train)
    if epochs:
        size["epochs"] = epochs
    if batch:
        size["batch_size"] = batch
    # Every epoch runs (no early stopping): the times compare the start of a run with its end.
    config = TrainConfig(**{k: v for k, v in size.items() if k != "patience"}, patience=None)
    stamps: list[tuple[int, float, float]] = []

    def on_step(step: Step) -> bool:
        if not stamps or step.epoch != stamps[-1][0]:
            stamps.append((step.epoch, time.perf_counter(), cpu_seconds()))
        return False

    start = time.perf_counter()
    result = train(ds, hidden=sized_hidden(n_train), config=config, progress=True, on_step=on_step)
    total = time.perf_counter() - start
    # An epoch's time: from its first step to the next epoch's first step (its validation included).
    times = [b - a for (_, a, _), (_, b, _) in itertools.pairwise(stamps[1:])]
    cpu = [b - a for (_, _, a), (_, _, b) in itertools.pairwise(stamps[1:])]
    rate = n_train / np.median(times) if times else float("nan")
    print(
        f"settings {size}, no early stopping; {len(result.history)} epochs in {total:.0f} s; {rate:,.0f} training rows/s"
    )
    print("epoch seconds: " + ", ".join(f"{t:.1f}" for t in times))
    print("epoch CPU seconds: " + ", ".join(f"{t:.1f}" for t in cpu))
    print(f"test: {result.metrics['test']}; peak RSS of the whole run {peak_rss_mib():.0f} MiB")


def probe(path: Path, steps: int, batch: int, sample: int, flush: bool) -> None:
    from training import optim
    from training.data import Standardizer, load_csv
    from training.layers import softmax_cross_entropy
    from training.network import MLP, MLPConfig

    if not flush:
        optim.flush_subnormal = lambda a: None  # type: ignore[assignment]
    ds = load_csv(path, "y")
    rng = np.random.default_rng(0)
    rows = rng.permutation(len(ds.X))[:sample]
    X = Standardizer.fit(ds.X, rows).apply(ds.X, rows)  # (sample, F) float32
    y = ds.y[rows]
    net = MLP(MLPConfig(n_in=X.shape[1], n_out=len(ds.class_labels), hidden=(256, 256)), rng)
    opt = optim.Adam(1e-3, weight_decay=0.01)
    tiny = np.finfo(np.float32).smallest_normal

    def subnormal(arrays: list[np.ndarray]) -> float:
        hits = sum(int(((a != 0) & (np.abs(a) < tiny)).sum()) for a in arrays)
        return hits / sum(a.size for a in arrays)

    step, cpu = 0, cpu_seconds()
    while step < steps:
        order = rng.permutation(len(X))
        for i in range(0, len(X) - batch + 1, batch):
            idx = order[i : i + batch]
            loss, dout = softmax_cross_entropy(net.forward(X[idx], training=True), y[idx])
            net.backward(dout)
            opt.step(net)
            step += 1
            if step % 5000 == 0:
                moments = [a for st in opt.state.values() for k, a in st.items() if k in ("m", "v")]
                params = [p for _, p, _ in net.parameters()]
                grads = [g for _, _, g in net.parameters()]
                print(
                    f"steps {step - 4999}-{step}: {cpu_seconds() - cpu:.1f} CPU s; subnormal share: moments "
                    f"{subnormal(moments):.4f}, parameters {subnormal(params):.4f}, gradients "
                    f"{subnormal(grads):.4f}, output gradient {subnormal([dout]):.4f}; loss {loss:.3f}",
                    flush=True,
                )
                cpu = cpu_seconds()
            if step >= steps:
                break


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["write", "load", "train", "probe"])
    p.add_argument("path", type=Path)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--cols", type=int, default=20)
    p.add_argument("--loader", help="a file with another load_csv(path, target) to measure")
    p.add_argument("--epochs", type=int, help="train: override the size-aware epoch budget")
    p.add_argument("--batch", type=int, help="train: override the size-aware batch size (probe: 64)")
    p.add_argument("--steps", type=int, default=60_000, help="probe: optimizer steps")
    p.add_argument("--sample", type=int, default=100_000, help="probe: rows trained on")
    p.add_argument("--no-flush", action="store_true", help="probe: no flushing of subnormal Adam moments")
    args = p.parse_args()
    if args.mode == "write":
        write(args.path, args.rows, args.cols)
        print(f"wrote {args.path} ({args.path.stat().st_size / 2**20:.0f} MiB)")
    elif args.mode == "load":
        load(args.path, args.loader)
    elif args.mode == "train":
        train_epochs(args.path, args.epochs, args.batch)
    else:
        probe(args.path, args.steps, args.batch or 64, args.sample, not args.no_flush)
    return 0


if __name__ == "__main__":
    sys.exit(main())
