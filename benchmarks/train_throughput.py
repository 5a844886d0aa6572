"""Training throughput of bnserve's numpy MLP, and of the same network in PyTorch (CPU) when installed.

Prints samples/second for full training steps (forward, backward, Adam update) of
64-256-256-10 at batch 128 and 784-512-512-10 at batch 256, float32, hidden layers
Linear(no bias) -> BatchNorm -> ReLU. Both frameworks run in the same process, with the same
thread count, on the same random data, so the ratio is meaningful on a noisy shared machine.

    python benchmarks/train_throughput.py [--seconds 3] [--threads N]
    python benchmarks/train_throughput.py --subnormal     # Adam's update with subnormal moments, flushed or not
"""

from __future__ import annotations

import argparse
import os
import platform
import time


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="time budget per measurement")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="BLAS / torch threads")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds; the best of each is kept")
    p.add_argument(
        "--subnormal",
        action="store_true",
        help="time Adam's update of a 256 x 256 weight whose moments are 10 %% subnormal, flushed or not",
    )
    return p.parse_args()


ARGS = parse()
# BLAS reads its thread count when numpy is first imported.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

from training import optim  # noqa: E402
from training.layers import softmax_cross_entropy  # noqa: E402
from training.network import MLP, MLPConfig  # noqa: E402
from training.optim import Adam  # noqa: E402

SHAPES = [(64, (256, 256), 10, 128), (784, (512, 512), 10, 256)]


def timed(step, budget: float) -> float:
    """Steps per second of ``step()`` over about ``budget`` seconds (after a warm-up)."""
    for _ in range(5):
        step()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget:
        step()
        n += 1
    return n / elapsed


def numpy_step(n_in: int, hidden: tuple[int, ...], n_out: int, batch: int):
    rng = np.random.default_rng(0)
    net = MLP(MLPConfig(n_in=n_in, n_out=n_out, hidden=hidden), rng)
    opt = Adam(1e-3, weight_decay=0.0)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    y = rng.integers(0, n_out, batch)

    def step() -> None:
        _, d = softmax_cross_entropy(net.forward(x, training=True), y)
        net.backward(d)
        opt.step(net)

    return step


def torch_step(n_in: int, hidden: tuple[int, ...], n_out: int, batch: int):
    import torch

    torch.manual_seed(0)
    layers: list = []
    width = n_in
    for h in hidden:
        layers += [
            torch.nn.Linear(width, h, bias=False),
            torch.nn.BatchNorm1d(h, momentum=0.1),
            torch.nn.ReLU(),
        ]
        width = h
    layers.append(torch.nn.Linear(width, n_out))
    net = torch.nn.Sequential(*layers).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(batch, n_in)
    y = torch.randint(0, n_out, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    return step


def adam_update_us(flush: bool, subnormal: bool, n: int = 3000) -> float:
    """CPU microseconds per ``Adam.update`` of a 256 x 256 float32 weight whose gradient is zero in 10 % of
    its entries (a dead unit's); with ``subnormal`` those entries' moments sit in the subnormal range, as in a
    long run (kept there when not flushed); ``flush=False`` disables the optimizer's flush."""
    saved = optim.flush_subnormal
    if not flush:
        optim.flush_subnormal = lambda a: None  # type: ignore[assignment]
    try:
        rng = np.random.default_rng(0)
        p = rng.normal(size=(256, 256)).astype(np.float32)
        g = rng.normal(scale=1e-3, size=(256, 256)).astype(np.float32)
        dead = rng.random((256, 256)) < 0.10
        g[dead] = 0
        opt = Adam(1e-3)
        opt.t = 1
        opt.update("w.W", p, g)
        state = opt.state["w.W"]
        if subnormal:
            state["m"][dead] = state["v"][dead] = 1e-39
        start = time.process_time()
        for _ in range(n):
            opt.t += 1
            opt.update("w.W", p, g)
            if subnormal and not flush:
                state["v"][dead] = 1e-39  # v's decay through the subnormal range takes ~16,000 steps
        return (time.process_time() - start) / n * 1e6
    finally:
        optim.flush_subnormal = saved


def subnormal_report() -> None:
    print("# Adam.update of a 256 x 256 float32 weight, 10 % of its gradient zero; CPU us per update")
    for flush in (False, True):
        for subnormal in (False, True):
            us = adam_update_us(flush, subnormal)
            print(
                f"flush {'on ' if flush else 'off'}, subnormal moments {'yes' if subnormal else 'no '}: {us:6.0f}"
            )


def main() -> None:
    if ARGS.subnormal:
        subnormal_report()
        return
    try:
        import torch

        torch.set_num_threads(ARGS.threads)
        torch_version: str | None = torch.__version__
    except ImportError:
        torch_version = None
    print(f"# training throughput, float32, Adam, {ARGS.threads} thread(s)")
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    print(
        f"# numpy {np.__version__}"
        + (f", torch {torch_version}" if torch_version else ", torch not installed")
    )
    print(f"{'network':<18} {'batch':>5} {'numpy samples/s':>16} {'torch samples/s':>16} {'numpy/torch':>11}")
    for n_in, hidden, n_out, batch in SHAPES:
        ours = numpy_step(n_in, hidden, n_out, batch)
        theirs = torch_step(n_in, hidden, n_out, batch) if torch_version else None
        best_ours = best_theirs = 0.0
        for _ in range(ARGS.repeats):  # alternate, so that a noisy neighbour hurts both alike
            best_ours = max(best_ours, timed(ours, ARGS.seconds) * batch)
            if theirs is not None:
                best_theirs = max(best_theirs, timed(theirs, ARGS.seconds) * batch)
        name = "-".join(str(v) for v in (n_in, *hidden, n_out))
        t = f"{best_theirs:16,.0f} {best_ours / best_theirs:11.2f}" if theirs else f"{'-':>16} {'-':>11}"
        print(f"{name:<18} {batch:>5} {best_ours:16,.0f} {t}")


if __name__ == "__main__":
    main()
