"""``python -m training.experiments``: does Batch Norm do what the paper says, on this code and real data?

Ioffe & Szegedy (2015) claim that Batch Norm stabilises the distribution of each layer's inputs, allows
higher learning rates, speeds up training, regularises a little, and needs population (EWMA) statistics
at test time. This module measures each claim on the bundled digits and on MNIST-1D (Greydanus 2020) with
the numpy MLP of :mod:`training.network`, and writes a Markdown report with PNG plots::

    python -m training.experiments                  # the full run, into docs/experiments/
    python -m training.experiments --quick --out /tmp/x   # a tiny budget (seconds), for tests

One training run is: a 3-hidden-layer MLP (as in the paper's Figure 1), plain SGD (no momentum) at a fixed
learning rate, mini-batches of 60, a fixed number of steps, no early stopping, no weight decay. Every
``eval_every`` steps (and at log-spaced steps early on, where training moves fastest) it records the test accuracy and the 15/50/85th percentiles of the pre-activations of
the last hidden layer over the test set. At the end of a BN run it scores several test-time statistics.

The loop is written here rather than in :func:`training.train.train` because it needs per-step hooks
(test accuracy every k steps, pre-activation percentiles, several EWMA momenta at once).

Everything is seeded: the same command gives the same numbers. BLAS runs on one thread unless
``OPENBLAS_NUM_THREADS`` says otherwise (the matrices are small; threads only add contention).
Matplotlib (the ``plots`` extra) is imported lazily, with the Agg backend.
"""

from __future__ import annotations

import os

# Before numpy is imported (true under ``python -m training.experiments``; training/__init__ is empty).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import gzip
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from training.data import Standardizer, load_digits, split
from training.layers import Array, softmax_cross_entropy
from training.network import MLP, BlockStats, MLPConfig
from training.optim import SGD
from training.train import set_running_statistics

MNIST1D_PATH = Path(__file__).parent / "data" / "mnist1d.csv.gz"
MNIST1D_TRAIN_ROWS = 4000  # the package's default split: the first 80% of its 5,000 shuffled rows
DEFAULT_OUT = Path("docs/experiments")
RESULTS = "results.json"  # every run's measurements; the plots and the report are rendered from it

PERCENTILES = (15.0, 50.0, 85.0)
EWMA_MOMENTA = (0.9, 0.99, 0.999)  # ours = weight kept by the old value; PyTorch's 0.1 is our 0.9
DEFAULT_MOMENTUM = 0.9  # the one the training curves are evaluated with (bnserve's default)
TEST_BATCH_SIZES = (1, 8, 256)


# ----------------------------------------------------------------------------------------------- budget


@dataclass(frozen=True)
class Budget:
    """How much to run: the grid (datasets x activations x BN x learning rates x seeds) and its length."""

    steps: int = 6000
    eval_every: int = 120
    log_evals: int = 40  # extra evaluations at log-spaced steps, to resolve the first few hundred steps
    batch_size: int = 60
    hidden: tuple[int, ...] = (100, 100, 100)
    lrs: tuple[float, ...] = (0.01, 0.1, 0.5, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    datasets: tuple[str, ...] = ("digits", "mnist1d")
    activations: tuple[str, ...] = ("sigmoid", "relu")
    # The learning rate at which the pre-activation distributions and test-time statistics are shown.
    focus_lr: float = 0.1

    def __post_init__(self) -> None:
        if self.focus_lr not in self.lrs:
            raise ValueError(f"focus_lr {self.focus_lr} must be one of the learning rates {self.lrs}")
        if self.steps < self.eval_every or self.eval_every < 1:
            raise ValueError(f"need steps >= eval_every >= 1, got {self.steps} and {self.eval_every}")


FULL = Budget()
QUICK = Budget(steps=40, eval_every=10, log_evals=5, hidden=(16, 16, 16), lrs=(0.1, 1.0), seeds=(0, 1))


def evaluation_steps(budget: Budget) -> list[int]:
    """Step 0, every ``eval_every`` steps, and ``log_evals`` log-spaced steps from 1 to ``steps``."""
    grid = set(range(0, budget.steps + 1, budget.eval_every))
    if budget.log_evals:
        grid |= {int(v) for v in np.geomspace(1, budget.steps, budget.log_evals).round()}
    return sorted(grid)


# ------------------------------------------------------------------------------------------------- data


@dataclass
class Prepared:
    """A dataset cut into a training and a test set, standardized on the training set, in float32."""

    name: str
    description: str
    Xtr: Array  # (N, F)
    ytr: Array  # (N,)
    Xte: Array  # (M, F)
    yte: Array  # (M,)
    n_classes: int

    @property
    def chance(self) -> float:
        """Test accuracy of always answering the most common test class."""
        return float(np.bincount(self.yte, minlength=self.n_classes).max() / len(self.yte))


def load_mnist1d() -> tuple[Array, Array]:
    """The bundled MNIST-1D: ``X`` (5000, 40) float64 and ``y`` (5000,) int64; rows 0..3999 are training."""
    raw = np.loadtxt(gzip.open(MNIST1D_PATH, "rt"), delimiter=",")  # (5000, 41)
    return raw[:, :-1], raw[:, -1].astype(np.int64)


def prepare(name: str) -> Prepared:
    """``digits`` (stratified 75/25 split, seed 0) or ``mnist1d`` (its published 4000/1000 split)."""
    if name == "digits":
        ds = load_digits()
        sp = split(ds, np.random.default_rng(0), val=0.05, test=0.25)  # no validation here: val joins train
        tr = np.concatenate([sp.train, sp.val])
        X, y, te = ds.X, ds.y, sp.test
        desc = "UCI optical digits, 8x8 pixels (64 features), 10 classes; stratified 75/25 split (seed 0)"
    elif name == "mnist1d":
        X, y = load_mnist1d()
        tr, te = np.arange(MNIST1D_TRAIN_ROWS), np.arange(MNIST1D_TRAIN_ROWS, len(X))
        desc = "MNIST-1D (Greydanus 2020), 40 features, 10 classes; its default 4000/1000 split"
    else:
        raise ValueError(f"dataset must be 'digits' or 'mnist1d', got {name!r}")
    std = Standardizer.fit(X[tr])
    return Prepared(
        name=name,
        description=f"{desc}: {len(tr)} training rows, {len(te)} test rows",
        Xtr=std(X[tr]).astype(np.float32),
        ytr=y[tr],
        Xte=std(X[te]).astype(np.float32),
        yte=y[te],
        n_classes=int(y.max()) + 1,
    )


# ------------------------------------------------------------------------------------- forward variants


def forward_batch_statistics(net: MLP, x: Array) -> tuple[Array, list[Array]]:
    """Logits and each block's pre-activation, normalizing every BN layer with the statistics of ``x`` itself.

    This is training-mode normalization without its side effects (no buffer is updated, nothing cached),
    and it accepts a single row: its variance is 0, so BN outputs ``beta`` whatever the input (``eps`` keeps
    the division finite). That is what "batch statistics at test time with batch size 1" means.
    """
    seen: list[BlockStats] = []
    logits = net.forward(x, training=False, stats=seen, batch_statistics=True)
    return logits, [s.preactivation for s in seen]


def accuracy_in_batches(net: MLP, X: Array, y: Array, batch_size: int, batch_stats: bool) -> float:
    """Test accuracy when ``X`` is fed ``batch_size`` rows at a time (the last batch may be smaller)."""
    correct = 0
    for start in range(0, len(X), batch_size):
        xb = X[start : start + batch_size]
        logits = forward_batch_statistics(net, xb)[0] if batch_stats else net.forward(xb, training=False)
        correct += int((logits.argmax(axis=1) == y[start : start + batch_size]).sum())
    return correct / len(X)


class EWMAStatistics:
    """Running BN statistics with one momentum, fed the exact batch statistics of every training step."""

    def __init__(self, net: MLP, momentum: float) -> None:
        self.momentum = momentum
        # Same initial values as BatchNorm's buffers: mean 0, variance 1.
        self.stats = [
            (np.zeros(b.bn.num_features), np.ones(b.bn.num_features)) for b in net.blocks if b.bn is not None
        ]

    def update(self, batch_stats: list[tuple[Array, Array]]) -> None:
        """``running = m * running + (1 - m) * batch`` (the batch variance already unbiased)."""
        m = self.momentum
        for (mean, var), (mu, v) in zip(self.stats, batch_stats):
            mean *= m
            mean += (1.0 - m) * mu
            var *= m
            var += (1.0 - m) * v


# ---------------------------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    """Everything one training run measured."""

    dataset: str
    activation: str
    batchnorm: bool
    lr: float
    seed: int
    steps: list[int]
    test_accuracy: list[float]  # at each step in ``steps``; frozen statistics (EWMA 0.9) for BN
    unit_percentiles: list[list[float]]  # (len(steps), 3): unit 0 of the last hidden layer, 15/50/85th
    shift_index: float  # see :func:`covariate_shift_index`
    scale_drift: float  # see :func:`scale_drift`
    diverged_at: int | None
    final: dict[str, float]
    test_time: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> {batch size: acc}
    seconds: float = 0.0


def covariate_shift_index(medians: Array, spreads: Array) -> float:
    """How much the units' input distributions move during training, in units of their own width.

    ``medians`` and ``spreads`` (85th minus 15th percentile) are ``(T, H)``: one row per evaluation, one
    column per unit. The index is the mean over units of ``std over time of the median`` divided by
    ``mean over time of the spread``: 0 when nothing moves, scale-free so that BN and plain nets compare.
    """
    return float(np.mean(medians.std(axis=0) / np.maximum(spreads.mean(axis=0), 1e-12)))


def scale_drift(spreads: Array) -> float:
    """How much the units' input widths change: mean over units of the std over time of ``ln(spread)``.

    ``spreads`` is ``(T, H)`` as in :func:`covariate_shift_index`; 0 when no width changes, ~0.69 for a
    width that spends half of training at one value and half at double it.
    """
    return float(np.mean(np.log(np.maximum(spreads, 1e-12)).std(axis=0)))


def train_run(
    data: Prepared,
    activation: str,
    batchnorm: bool,
    lr: float,
    seed: int,
    budget: Budget,
    score_test_time: bool,
) -> RunResult:
    """One run of plain SGD for ``budget.steps`` steps; stops early only if the loss becomes non-finite.

    The network's own BN momentum is set to 0, so after each step its buffers hold exactly that batch's
    mean and unbiased variance; :class:`EWMAStatistics` trackers turn them into running averages with
    several momenta at once (identical to BatchNorm's own update with that momentum). The weights never
    depend on the momentum, so one run serves all of them.
    """
    t0 = time.perf_counter()
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence([seed, 9]).spawn(3)]
    rng_init, rng_batches, rng_precise = rngs
    cfg = MLPConfig(
        n_in=data.Xtr.shape[1],
        n_out=data.n_classes,
        hidden=budget.hidden,
        activation=activation,
        batchnorm=batchnorm,
        bn_momentum=0.0,
    )
    net = MLP(cfg, rng_init)
    bns = [b.bn for b in net.blocks if b.bn is not None]
    trackers = {m: EWMAStatistics(net, m) for m in EWMA_MOMENTA} if batchnorm else {}
    opt = SGD(lr, momentum=0.0)

    def frozen_logits(X: Array, momentum: float = DEFAULT_MOMENTUM) -> Array:
        if batchnorm:
            set_running_statistics(net, trackers[momentum].stats)
        return net.forward(X, training=False)

    steps: list[int] = []
    accs: list[float] = []
    medians: list[Array] = []
    spreads: list[Array] = []
    unit: list[list[float]] = []

    def record(step: int) -> None:
        acc = float((frozen_logits(data.Xte).argmax(axis=1) == data.yte).mean())
        # The distribution the last hidden layer's activation sees over the test set, with BN normalizing
        # by the statistics of that set (a 1000-row batch: close to the population statistics).
        z = forward_batch_statistics(net, data.Xte)[1][-1]  # (M, H)
        q = np.percentile(z, PERCENTILES, axis=0)  # (3, H)
        steps.append(step)
        accs.append(acc)
        medians.append(q[1])
        spreads.append(q[2] - q[0])
        unit.append([float(v) for v in q[:, 0]])

    n = len(data.Xtr)
    order = rng_batches.permutation(n)
    pos = 0
    diverged_at: int | None = None
    # Overflow in a diverging run is expected: it is detected below, not warned about.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        eval_steps = set(evaluation_steps(budget))
        record(0)
        for step in range(1, budget.steps + 1):
            if pos + budget.batch_size > n:  # reshuffle each epoch; drop the short tail
                order, pos = rng_batches.permutation(n), 0
            idx = order[pos : pos + budget.batch_size]
            pos += budget.batch_size
            logits = net.forward(data.Xtr[idx], training=True)
            loss, dlogits = softmax_cross_entropy(logits, data.ytr[idx])
            if not math.isfinite(loss):
                diverged_at = step
                break
            net.backward(dlogits)
            opt.step(net)
            if batchnorm:
                batch = [
                    (bn.running_mean.astype(np.float64), bn.running_var.astype(np.float64)) for bn in bns
                ]
                for tr in trackers.values():
                    tr.update(batch)
            if step in eval_steps:
                record(step)

        final = _final_metrics(data, frozen_logits, diverged_at is not None)
        test_time: dict[str, dict[str, float]] = {}
        if batchnorm and score_test_time and diverged_at is None:
            test_time = _score_test_time(data, net, trackers, rng_precise, budget.batch_size)

    # The shift index uses the evenly spaced evaluations only, so that each stretch of training counts alike.
    even = np.array([st % budget.eval_every == 0 for st in steps])
    m_arr, s_arr = np.array(medians)[even], np.array(spreads)[even]
    finite = np.isfinite(m_arr).all(axis=1) & np.isfinite(s_arr).all(axis=1)
    return RunResult(
        dataset=data.name,
        activation=activation,
        batchnorm=batchnorm,
        lr=lr,
        seed=seed,
        steps=steps,
        test_accuracy=accs,
        unit_percentiles=unit,
        shift_index=covariate_shift_index(m_arr[finite], s_arr[finite]) if finite.sum() > 1 else math.nan,
        scale_drift=scale_drift(s_arr[finite]) if finite.sum() > 1 else math.nan,
        diverged_at=diverged_at,
        final=final,
        test_time=test_time,
        seconds=time.perf_counter() - t0,
    )


def _final_metrics(data: Prepared, frozen_logits: Any, diverged: bool) -> dict[str, float]:
    """Train/test accuracy and loss at the end; a diverged run scores chance and an infinite loss."""
    if diverged:
        return {
            "train_accuracy": data.chance,
            "test_accuracy": data.chance,
            "train_loss": math.inf,
            "test_loss": math.inf,
        }
    out: dict[str, float] = {}
    for part, X, y in (("train", data.Xtr, data.ytr), ("test", data.Xte, data.yte)):
        logits = frozen_logits(X)
        loss = softmax_cross_entropy(logits, y)[0] if np.isfinite(logits).all() else math.inf
        out[f"{part}_accuracy"] = (
            float((logits.argmax(axis=1) == y).mean()) if math.isfinite(loss) else data.chance
        )
        out[f"{part}_loss"] = loss
    return out


def _score_test_time(
    data: Prepared,
    net: MLP,
    trackers: dict[float, EWMAStatistics],
    rng: np.random.Generator,
    batch_size: int,
) -> dict[str, dict[str, float]]:
    """Test accuracy per statistics mode and test batch size.

    Frozen modes (EWMA with each momentum, precise population statistics) are fed to the network in
    batches of 1, 8 and 256 rows to show that they do not depend on the batch; ``batch`` normalizes every
    test batch with its own statistics; ``batch, one class per batch`` does the same on the test set
    sorted by class (a realistic non-i.i.d. stream).
    """
    out: dict[str, dict[str, float]] = {}
    for m, tr in trackers.items():
        set_running_statistics(net, tr.stats)
        out[f"EWMA {m:g}"] = {
            str(b): accuracy_in_batches(net, data.Xte, data.yte, b, batch_stats=False)
            for b in TEST_BATCH_SIZES
        }
    precise = net.precise_statistics(data.Xtr, batch_size, rng)
    set_running_statistics(net, precise)
    out["precise"] = {
        str(b): accuracy_in_batches(net, data.Xte, data.yte, b, batch_stats=False) for b in TEST_BATCH_SIZES
    }
    out["batch"] = {
        str(b): accuracy_in_batches(net, data.Xte, data.yte, b, batch_stats=True) for b in TEST_BATCH_SIZES
    }
    by_class = np.argsort(data.yte, kind="stable")
    out["batch, sorted by class"] = {
        str(b): accuracy_in_batches(net, data.Xte[by_class], data.yte[by_class], b, batch_stats=True)
        for b in TEST_BATCH_SIZES
    }
    return out


# ------------------------------------------------------------------------------------------ whole grid


def run_all(budget: Budget, progress: bool = True) -> tuple[list[RunResult], dict[str, Prepared]]:
    """Every (dataset, activation, BN, learning rate, seed) run of the budget, in a fixed order."""
    datasets = {name: prepare(name) for name in budget.datasets}
    grid = [
        (d, a, bn, lr, s)
        for d in budget.datasets
        for a in budget.activations
        for bn in (True, False)
        for lr in budget.lrs
        for s in budget.seeds
    ]
    results = []
    bar = tqdm(grid, desc="experiments", unit="run", disable=not progress)
    for d, a, bn, lr, s in bar:
        bar.set_postfix_str(f"{d} {a} {'BN' if bn else 'plain'} lr={lr:g} seed={s}")
        results.append(train_run(datasets[d], a, bn, lr, s, budget, score_test_time=lr == budget.focus_lr))
    return results, datasets


def select(results: Sequence[RunResult], **where: Any) -> list[RunResult]:
    """The runs whose attributes equal ``where``."""
    return [r for r in results if all(getattr(r, k) == v for k, v in where.items())]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation; ``nan`` for an empty list."""
    if not values:
        return math.nan, math.nan
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std())


def mean_curve(runs: Sequence[RunResult]) -> tuple[Array, Array, Array, Array]:
    """Steps and the mean, min and max test accuracy over runs; a diverged run counts as chance after it."""
    steps = np.array(max((r.steps for r in runs), key=len))
    curves = []
    for r in runs:
        c = np.full(len(steps), r.final["test_accuracy"] if r.diverged_at else np.nan)
        c[: len(r.test_accuracy)] = r.test_accuracy
        curves.append(c)
    a = np.array(curves)
    return steps, a.mean(axis=0), a.min(axis=0), a.max(axis=0)


def steps_to_reach(steps: Array, curve: Array, target: float) -> int | None:
    """The first step at which ``curve`` reaches ``target``, or None."""
    hit = np.flatnonzero(curve >= target)
    return int(steps[hit[0]]) if len(hit) else None


# ------------------------------------------------------------------------------------------- analysis


def summarize(results: Sequence[RunResult], budget: Budget, datasets: dict[str, Prepared]) -> dict[str, Any]:
    """The numbers the report quotes, per dataset and activation, and the verdict on each claim."""
    summary: dict[str, Any] = {}
    for d in budget.datasets:
        for a in budget.activations:
            key = f"{d}/{a}"
            s: dict[str, Any] = {"final": {}, "diverged": {}}
            for bn in (True, False):
                tag = "bn" if bn else "plain"
                s["final"][tag] = {
                    f"{lr:g}": mean_std(
                        [
                            r.final["test_accuracy"]
                            for r in select(results, dataset=d, activation=a, batchnorm=bn, lr=lr)
                        ]
                    )
                    for lr in budget.lrs
                }
                s["diverged"][tag] = {
                    f"{lr:g}": sum(
                        r.diverged_at is not None
                        for r in select(results, dataset=d, activation=a, batchnorm=bn, lr=lr)
                    )
                    for lr in budget.lrs
                }
            best = {
                tag: max(budget.lrs, key=lambda lr, t=tag: s["final"][t][f"{lr:g}"][0])
                for tag in ("bn", "plain")
            }
            s["best_lr"] = {t: best[t] for t in best}
            s["best_accuracy"] = {t: s["final"][t][f"{best[t]:g}"] for t in best}
            # Speed: steps for each net, at its own best learning rate, to come within 1 point of the plain
            # net's best final accuracy (the mean curve over seeds).
            target = s["best_accuracy"]["plain"][0] - 0.01
            s["speed_target"] = target
            s["steps_to_target"] = {}
            for tag, bn in (("bn", True), ("plain", False)):
                st, m, _, _ = mean_curve(select(results, dataset=d, activation=a, batchnorm=bn, lr=best[tag]))
                s["steps_to_target"][tag] = steps_to_reach(st, m, target)
            # Covariate shift at the focus learning rate.
            for index in ("shift_index", "scale_drift"):
                s[index] = {
                    tag: mean_std(
                        [
                            getattr(r, index)
                            for r in select(
                                results, dataset=d, activation=a, batchnorm=bn, lr=budget.focus_lr
                            )
                            if math.isfinite(getattr(r, index))
                        ]
                    )
                    for tag, bn in (("bn", True), ("plain", False))
                }
            # Generalization gap at each net's best learning rate.
            s["gap"] = {}
            for tag, bn in (("bn", True), ("plain", False)):
                runs = select(results, dataset=d, activation=a, batchnorm=bn, lr=best[tag])
                s["gap"][tag] = {
                    "train_accuracy": mean_std([r.final["train_accuracy"] for r in runs]),
                    "test_accuracy": mean_std([r.final["test_accuracy"] for r in runs]),
                    "accuracy_gap": mean_std(
                        [r.final["train_accuracy"] - r.final["test_accuracy"] for r in runs]
                    ),
                    "train_loss": mean_std([r.final["train_loss"] for r in runs]),
                    "test_loss": mean_std([r.final["test_loss"] for r in runs]),
                }
            # Test-time statistics (BN runs at the focus learning rate).
            tt_runs = [
                r
                for r in select(results, dataset=d, activation=a, batchnorm=True, lr=budget.focus_lr)
                if r.test_time
            ]
            s["test_time"] = {}
            if tt_runs:
                for mode in tt_runs[0].test_time:
                    s["test_time"][mode] = {
                        str(b): mean_std([r.test_time[mode][str(b)] for r in tt_runs])
                        for b in TEST_BATCH_SIZES
                    }
            s["chance"] = datasets[d].chance
            summary[key] = s
    summary["verdicts"] = verdicts(summary, budget)
    return summary


def verdicts(summary: dict[str, Any], budget: Budget) -> dict[str, dict[str, Any]]:
    """Each claim, the rule that decides it (stated in the report), and per-case evidence."""
    cases = [k for k in summary if "/" in k]
    top = [f"{lr:g}" for lr in budget.lrs if lr >= 0.5] or [f"{max(budget.lrs):g}"]
    out: dict[str, dict[str, Any]] = {}

    def verdict(held: list[bool]) -> str:
        return "supported" if all(held) else "not supported" if not any(held) else "partly supported"

    held = {c: summary[c]["shift_index"]["bn"][0] < summary[c]["shift_index"]["plain"][0] for c in cases}
    out["stabilises each layer's input distribution"] = {
        "rule": f"covariate-shift index at lr {budget.focus_lr:g} lower with BN than without",
        "cases": held,
        "verdict": verdict(list(held.values())),
    }

    held = {}
    for c in cases:
        f = summary[c]["final"]
        held[c] = (
            all(f["bn"][lr][0] > f["plain"][lr][0] for lr in top)
            and summary[c]["best_lr"]["bn"] >= summary[c]["best_lr"]["plain"]
        )
    out["allows higher learning rates"] = {
        "rule": f"BN more accurate than plain at lr {', '.join(top)}, and BN's best lr >= plain's",
        "cases": held,
        "verdict": verdict(list(held.values())),
    }

    held = {}
    for c in cases:
        st = summary[c]["steps_to_target"]
        held[c] = st["bn"] is not None and (st["plain"] is None or st["bn"] < st["plain"])
    out["speeds up training"] = {
        "rule": "at its best lr, BN reaches (plain's best final accuracy - 1 point) in fewer steps than plain",
        "cases": held,
        "verdict": verdict(list(held.values())),
    }

    held = {}
    for c in cases:
        g = summary[c]["gap"]
        held[c] = (
            g["bn"]["accuracy_gap"][0] < g["plain"]["accuracy_gap"][0]
            and g["bn"]["test_accuracy"][0] >= g["plain"]["test_accuracy"][0]
        )
    out["regularises a little"] = {
        "rule": "at each net's best lr, BN's train-minus-test accuracy gap is smaller and its test accuracy "
        "no lower",
        "cases": held,
        "verdict": verdict(list(held.values())),
    }

    held = {}
    for c in cases:
        tt = summary[c]["test_time"]
        if not tt:
            continue
        frozen = tt["precise"]["256"][0]
        held[c] = (
            tt["batch"]["1"][0] <= summary[c]["chance"] + 0.05
            and tt["batch"]["8"][0] < frozen
            and tt["batch, sorted by class"]["256"][0] < frozen
        )
    out["needs population (frozen) statistics at test time"] = {
        "rule": "with batch statistics at test time, batch 1 scores within 5 points of chance, and batch 8 and "
        "single-class batches of 256 score below frozen statistics",
        "cases": held,
        "verdict": verdict(list(held.values())),
    }
    return out


# ---------------------------------------------------------------------------------------------- plots

BN_COLOR, PLAIN_COLOR = "tab:blue", "tab:red"


def _pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend (the ``plots`` extra), imported only when plotting."""
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - depends on the environment
        raise SystemExit("the experiments' plots need matplotlib: pip install 'bnserve[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(results: Sequence[RunResult], budget: Budget, data: Prepared, path: Path) -> None:
    """Figure 1(a)-style: test accuracy against steps, BN vs plain, one panel per activation and lr."""
    plt = _pyplot()
    acts, lrs = budget.activations, budget.lrs
    fig, axes = plt.subplots(
        len(acts),
        len(lrs),
        figsize=(3.6 * len(lrs), 3.0 * len(acts)),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    for i, a in enumerate(acts):
        for j, lr in enumerate(lrs):
            ax = axes[i][j]
            for bn, color, label in ((True, BN_COLOR, "with BN"), (False, PLAIN_COLOR, "without BN")):
                runs = select(results, dataset=data.name, activation=a, batchnorm=bn, lr=lr)
                steps, mean, lo, hi = mean_curve(runs)
                n_div = sum(r.diverged_at is not None for r in runs)
                suffix = f" ({n_div}/{len(runs)} diverged)" if n_div else ""
                keep = steps > 0  # a log axis: step 0 (chance for both) is left out
                ax.plot(steps[keep], mean[keep], color=color, label=label + suffix, lw=1.6)
                ax.fill_between(steps[keep], lo[keep], hi[keep], color=color, alpha=0.2, lw=0)
            ax.axhline(data.chance, color="grey", lw=0.8, ls=":")
            ax.set_xscale("log")
            ax.set_title(f"{a}, lr = {lr:g}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8, loc="upper left")
            if i == len(acts) - 1:
                ax.set_xlabel("training step (log scale)")
            if j == 0:
                ax.set_ylabel("test accuracy")
    fig.suptitle(
        f"{data.name}: test accuracy during training, plain SGD, batch {budget.batch_size}\n"
        f"line = mean of {len(budget.seeds)} seeds, band = min..max, dotted = chance",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_final_vs_lr(results: Sequence[RunResult], budget: Budget, data: Prepared, path: Path) -> None:
    """Final test accuracy against the learning rate (log scale): mean over seeds, bars from min to max."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(budget.activations), figsize=(5.0 * len(budget.activations), 3.8), squeeze=False, sharey=True
    )
    for ax, a in zip(axes[0], budget.activations):
        for bn, color, label, dx in (
            (True, BN_COLOR, "with BN", 1.03),
            (False, PLAIN_COLOR, "without BN", 0.97),
        ):
            xs, means, lo, hi = [], [], [], []
            for lr in budget.lrs:
                runs = select(results, dataset=data.name, activation=a, batchnorm=bn, lr=lr)
                accs = np.array([r.final["test_accuracy"] for r in runs])
                xs.append(lr * dx)
                means.append(accs.mean())
                lo.append(max(accs.mean() - accs.min(), 0.0))  # rounding can make these -1e-17
                hi.append(max(accs.max() - accs.mean(), 0.0))
                n_div = sum(r.diverged_at is not None for r in runs)
                if n_div:
                    ax.annotate(
                        f"{n_div}/{len(runs)} diverged",
                        (lr * dx, accs.mean()),
                        textcoords="offset points",
                        xytext=(-8, 0),
                        ha="right",
                        va="center",
                        fontsize=7,
                        color=color,
                    )
            ax.errorbar(xs, means, yerr=[lo, hi], color=color, marker="o", capsize=3, label=label)
        ax.axhline(data.chance, color="grey", lw=0.8, ls=":", label="chance")
        ax.set_xscale("log")
        ax.set_xticks(list(budget.lrs))
        ax.set_xticklabels([f"{lr:g}" for lr in budget.lrs])
        ax.minorticks_off()
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("final test accuracy")
        ax.set_title(f"{data.name}, {a}: after {budget.steps} steps", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Final accuracy per learning rate (mean of {len(budget.seeds)} seeds, bars = min..max)", fontsize=11
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_preactivations(results: Sequence[RunResult], budget: Budget, data: Prepared, path: Path) -> None:
    """Figure 1(b, c)-style: 15/50/85th percentiles of one last-layer unit's input over training (seed 0)."""
    plt = _pyplot()
    acts = budget.activations
    fig, axes = plt.subplots(len(acts), 2, figsize=(10, 3.0 * len(acts)), squeeze=False, sharex=True)
    seed = budget.seeds[0]
    for i, a in enumerate(acts):
        for j, bn in enumerate((False, True)):
            ax = axes[i][j]
            (r,) = select(
                results, dataset=data.name, activation=a, batchnorm=bn, lr=budget.focus_lr, seed=seed
            )
            q = np.array(r.unit_percentiles)  # (T, 3)
            for k, (p, ls) in enumerate(zip(PERCENTILES, (":", "-", "--"))):
                ax.plot(
                    r.steps,
                    q[:, k],
                    color=BN_COLOR if bn else PLAIN_COLOR,
                    ls=ls,
                    label=f"{p:g}th percentile",
                )
            ax.set_title(
                f"{a}, {'with' if bn else 'without'} BN (shift index {r.shift_index:.3f})", fontsize=10
            )
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            if i == len(acts) - 1:
                ax.set_xlabel("training step")
            ax.set_ylabel(f"input to the {a}")
    fig.suptitle(
        f"{data.name}: one unit of the last hidden layer, its input over the test set "
        f"(lr {budget.focus_lr:g}, seed {seed})",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_test_time(summary: dict[str, Any], budget: Budget, data: Prepared, path: Path) -> None:
    """Grouped bars: test accuracy per statistics mode and test batch size, mean and std over seeds."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(budget.activations), figsize=(6.5 * len(budget.activations), 4.2), squeeze=False, sharey=True
    )
    colors = ("tab:orange", "tab:green", "tab:purple")
    for ax, a in zip(axes[0], budget.activations):
        tt = summary[f"{data.name}/{a}"]["test_time"]
        modes = list(tt)
        x = np.arange(len(modes))
        width = 0.8 / len(TEST_BATCH_SIZES)
        for k, (b, c) in enumerate(zip(TEST_BATCH_SIZES, colors)):
            m = [tt[mode][str(b)][0] for mode in modes]
            e = [tt[mode][str(b)][1] for mode in modes]
            ax.bar(x + (k - 1) * width, m, width, yerr=e, color=c, capsize=2, label=f"test batch of {b}")
        ax.axhline(data.chance, color="grey", lw=0.8, ls=":", label="chance")
        ax.set_xticks(x)
        ax.set_xticklabels([mode.replace(", ", ",\n") for mode in modes], fontsize=8)
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.22)  # headroom above 1 for the legend
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_title(f"{data.name}, {a} with BN (lr {budget.focus_lr:g})", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="upper center", ncol=4)
    fig.suptitle(
        "Statistics used by BN at test time: frozen (EWMA momenta, precise) vs the test batch's own",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- report


def _pct(ms: Sequence[float]) -> str:
    """``(mean, std)`` of an accuracy as ``"95.1 ± 0.3"`` (percent)."""
    return f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f}"


DISCUSSION_START = "<!-- discussion: written by hand, kept when the report is regenerated -->"
DISCUSSION_END = "<!-- end of discussion -->"


def _kept_discussion(path: Path) -> str:
    """The hand-written discussion of an existing report at ``path`` (between the markers), or a stub."""
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        start, end = text.find(DISCUSSION_START), text.find(DISCUSSION_END)
        if 0 <= start < end:
            return text[start + len(DISCUSSION_START) : end].strip("\n")
    return "_(No discussion written yet: the tables and plots below are the evidence.)_"


def write_report(
    out: Path,
    summary: dict[str, Any],
    budget: Budget,
    datasets: dict[str, Prepared],
    command: str,
    seconds: float,
    plots: dict[str, list[str]],
) -> Path:
    """``report.md``: setup, the command and its duration, every table, the plots and the verdicts."""
    lines = [
        "# Does Batch Norm do what the paper claims? Measured on bnserve",
        "",
        "Generated by `training/experiments.py` from `results.json` next to it (every run's measurements).",
        "",
        f"**Command:** `{command}`  ",
        f"**Duration:** {seconds / 60:.1f} min ({seconds:.0f} s) wall clock on this machine "
        "(2 shared cores, one BLAS thread, one process).  ",
        "**Re-running** gives the same numbers: every run is seeded (weights, batch order, PreciseBN). "
        "`python -m training.experiments --replot` re-renders the plots and this report from `results.json` "
        "without training; `--quick` runs a tiny budget in seconds (what `tests/training/test_experiments.py` "
        "does).",
        "",
        "## Setup",
        "",
        f"- Network: {len(budget.hidden)} hidden layers of {budget.hidden[0]} units (the paper's Figure 1 "
        "network), `Linear -> [BN] -> activation`, softmax output. Sigmoid (as in the paper) and ReLU.",
        f"- Training: plain SGD (no momentum, no weight decay), mini-batches of {budget.batch_size}, "
        f"{budget.steps} steps, fixed learning rate in {', '.join(f'{lr:g}' for lr in budget.lrs)}; "
        f"seeds {', '.join(map(str, budget.seeds))}. No early stopping: the last step is what is scored.",
        f"- Test accuracy is recorded every {budget.eval_every} steps and at {budget.log_evals} log-spaced "
        "steps (to resolve the start of training). BN nets are evaluated with frozen EWMA "
        f"statistics, momentum {DEFAULT_MOMENTUM} (bnserve's default; PyTorch's 0.1).",
        "- A run *diverges* when its training loss becomes non-finite; it then scores chance (the share of the "
        "most common test class) from that step on.",
    ]
    for d in datasets.values():
        lines.append(f"- `{d.name}`: {d.description}; chance = {100 * d.chance:.1f}%.")
    lines += [
        "- MNIST-1D's published baselines (Greydanus 2020): logistic regression 32%, MLP 68%.",
        "",
        "## Verdicts",
        "",
        "Each claim is decided by a rule fixed before looking (the rules are in `verdicts()`; `summary.json` holds every number); per-case results "
        "are `dataset/activation: held?`.",
        "",
        "| claim | rule | cases | verdict |",
        "|---|---|---|---|",
    ]
    for claim, v in summary["verdicts"].items():
        cases = "; ".join(f"{c}: {'yes' if ok else 'no'}" for c, ok in v["cases"].items())
        lines.append(f"| {claim} | {v['rule']} | {cases} | **{v['verdict']}** |")
    lines += ["", DISCUSSION_START, _kept_discussion(out / "report.md"), DISCUSSION_END, ""]

    lines += ["## 1. Learning rates and speed: with vs without BN", ""]
    for d in datasets.values():
        lines += [
            f"### {d.name}",
            "",
            f"![accuracy during training]({plots[d.name][0]})",
            "",
            f"![final accuracy per learning rate]({plots[d.name][1]})",
            "",
        ]
        header = "| activation | BN | " + " | ".join(f"lr {lr:g}" for lr in budget.lrs) + " | best lr |"
        lines += [
            f"Final test accuracy (%, mean ± std over {len(budget.seeds)} seeds; † = some seeds diverged):",
            "",
            header,
            "|" + "---|" * (len(budget.lrs) + 3),
        ]
        for a in budget.activations:
            s = summary[f"{d.name}/{a}"]
            for tag in ("bn", "plain"):
                cells = [
                    _pct(s["final"][tag][f"{lr:g}"]) + (" †" if s["diverged"][tag][f"{lr:g}"] else "")
                    for lr in budget.lrs
                ]
                lines.append(
                    f"| {a} | {'yes' if tag == 'bn' else 'no'} | "
                    + " | ".join(cells)
                    + f" | {s['best_lr'][tag]:g} |"
                )
        lines += [
            "",
            "Steps to come within 1 point of the plain net's best final accuracy (each net at its "
            "own best learning rate, mean curve over seeds):",
            "",
            "| activation | target | with BN | without BN |",
            "|---|---|---|---|",
        ]
        for a in budget.activations:
            s = summary[f"{d.name}/{a}"]
            st = s["steps_to_target"]
            lines.append(
                f"| {a} | {100 * s['speed_target']:.1f}% | {st['bn'] if st['bn'] is not None else 'never'}"
                f" | {st['plain'] if st['plain'] is not None else 'never'} |"
            )
        lines.append("")

    lines += [
        "## 2. Internal covariate shift: one unit's input over training",
        "",
        "The 15th, 50th and 85th percentiles, over the test set, of the input to the activation of unit 0 "
        "of the last hidden layer (after BN when there is one, normalizing with the test set's own "
        "statistics), as in Figure 1(b, c) of the paper. The *shift index* summarises all units of that "
        "layer: per unit, the standard deviation over training of its median divided by its mean "
        "15-85 spread, averaged over units (0 = the distribution never moves).",
        "",
    ]
    for d in datasets.values():
        lines += [f"![pre-activation percentiles, {d.name}]({plots[d.name][2]})", ""]
    lines += [
        "The shift index looks at where the distributions sit, not at their width; BN's learned `gamma` "
        "may widen them. The *scale drift* (per unit, the standard deviation over training of the log of "
        "its 15-85 spread, averaged over units) measures that: it is reported, not part of the verdict.",
        "",
        f"At lr {budget.focus_lr:g} (mean ± std over seeds):",
        "",
        "| dataset/activation | shift index, BN | shift index, plain | scale drift, BN | scale drift, plain |",
        "|---|---|---|---|---|",
    ]
    for key, s in summary.items():
        if "/" in key:
            si, sd = s["shift_index"], s["scale_drift"]
            lines.append(
                f"| {key} | {si['bn'][0]:.3f} ± {si['bn'][1]:.3f} | {si['plain'][0]:.3f} ± "
                f"{si['plain'][1]:.3f} | {sd['bn'][0]:.3f} ± {sd['bn'][1]:.3f} | {sd['plain'][0]:.3f} ± "
                f"{sd['plain'][1]:.3f} |"
            )
    lines.append("")

    lines += [
        "## 3. Regularisation",
        "",
        "Train and test accuracy at each net's best learning rate (%, mean ± std):",
        "",
        "| dataset/activation | BN | train acc | test acc | gap | train loss | test loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, s in summary.items():
        if "/" in key:
            for tag in ("bn", "plain"):
                g = s["gap"][tag]
                lines.append(
                    f"| {key} | {'yes' if tag == 'bn' else 'no'} | {_pct(g['train_accuracy'])} | "
                    f"{_pct(g['test_accuracy'])} | {_pct(g['accuracy_gap'])} | "
                    f"{g['train_loss'][0]:.3f} | {g['test_loss'][0]:.3f} |"
                )
    lines.append("")

    lines += [
        "## 4. Test-time statistics",
        "",
        f"BN nets trained at lr {budget.focus_lr:g}, then scored on the test set fed in batches of "
        f"{', '.join(map(str, TEST_BATCH_SIZES))} rows (the last batch may be smaller) with:",
        "",
        "- **EWMA m**: the running averages with momentum m, frozen (m = 0.9 is bnserve's default);",
        "- **precise**: population statistics recomputed on the training set with the final weights "
        "(PreciseBN, `MLP.precise_statistics`);",
        "- **batch**: each test batch normalized with its own mean and variance, i.e. training-mode BN at "
        "test time (wrong). With one row the variance is 0 and the mean is the row itself, so every "
        "BN output is `beta` and the prediction is the same for every input;",
        "- **batch, sorted by class**: the same on the test set sorted by label, so that a batch holds "
        "mostly one class (a non-i.i.d. stream, as a server sees in a burst).",
        "",
    ]
    for d in datasets.values():
        lines += [f"![test-time statistics, {d.name}]({plots[d.name][3]})", ""]
        for a in budget.activations:
            tt = summary[f"{d.name}/{a}"]["test_time"]
            if not tt:
                continue
            lines += [
                f"{d.name}, {a} (test accuracy %, mean ± std):",
                "",
                "| statistics | " + " | ".join(f"batch {b}" for b in TEST_BATCH_SIZES) + " |",
                "|---|" + "---|" * len(TEST_BATCH_SIZES),
            ]
            for mode, row in tt.items():
                lines.append(f"| {mode} | " + " | ".join(_pct(row[str(b)]) for b in TEST_BATCH_SIZES) + " |")
            lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------- entry point


def run(out: Path, budget: Budget, command: str, progress: bool = True) -> dict[str, Any]:
    """Run every experiment, write ``results.json``, then render the plots and the report from it."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    results, _ = run_all(budget, progress)
    payload = {
        "command": command,
        "seconds": time.perf_counter() - t0,
        "budget": asdict(budget),
        "runs": [_compact(asdict(r)) for r in results],
    }
    (out / RESULTS).write_text(json.dumps(payload, separators=(",", ":")) + "\n", encoding="utf-8")
    return render(out)


def render(out: Path) -> dict[str, Any]:
    """Plots, ``summary.json`` and ``report.md`` from ``out/results.json`` alone (no training); the summary."""
    payload = json.loads((out / RESULTS).read_text(encoding="utf-8"))
    budget = Budget(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["budget"].items()})
    results = [RunResult(**r) for r in payload["runs"]]
    datasets = {name: prepare(name) for name in budget.datasets}
    summary = summarize(results, budget, datasets)
    plots: dict[str, list[str]] = {}
    for name, data in datasets.items():
        files = [
            f"{name}_accuracy_vs_steps.png",
            f"{name}_final_accuracy_vs_lr.png",
            f"{name}_preactivation_percentiles.png",
            f"{name}_test_time_statistics.png",
        ]
        plot_curves(results, budget, data, out / files[0])
        plot_final_vs_lr(results, budget, data, out / files[1])
        plot_preactivations(results, budget, data, out / files[2])
        plot_test_time(summary, budget, data, out / files[3])
        plots[name] = files
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    write_report(out, summary, budget, datasets, payload["command"], payload["seconds"], plots)
    return summary


def _compact(obj: Any) -> Any:
    """``obj`` with numpy scalars made plain and floats kept to 6 significant digits (a smaller file)."""
    if isinstance(obj, dict):
        return {k: _compact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_compact(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and math.isfinite(obj):
        return float(f"{obj:.6g}")
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m training.experiments [--quick] [--out DIR] [--no-progress]``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.experiments", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="a tiny budget (seconds): checks the machinery only"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--replot", action="store_true", help="no training: re-render plots and report from OUT/results.json"
    )
    args = parser.parse_args(argv)
    if args.replot:
        if not (args.out / RESULTS).is_file():
            print(f"error: --replot needs {args.out / RESULTS}; run the experiments first", file=sys.stderr)
            return 2
        render(args.out)
        print(f"report: {args.out / 'report.md'}")
        return 0
    budget = QUICK if args.quick else FULL
    command = (
        "python -m training.experiments"
        + (" --quick" if args.quick else "")
        + (f" --out {args.out}" if args.out != DEFAULT_OUT else "")
    )
    summary = run(args.out, budget, command, progress=not args.no_progress)
    for claim, v in summary["verdicts"].items():
        print(f"{claim}: {v['verdict']}")
    print(f"report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
