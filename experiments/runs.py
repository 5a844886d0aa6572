"""One training run (through :func:`training.train.train` and its per-step callback) and the grid of runs.

A run is a 3-hidden-layer MLP (as in the paper's Figure 1), plain SGD (no momentum) at a fixed learning
rate, mini-batches of 60 (each epoch's short last batch dropped), a fixed number of steps, no early stopping,
no weight decay. Every ``eval_every`` steps (and at log-spaced steps early on, where training moves fastest)
it records the test accuracy and the 15/50/85th percentiles of the pre-activations of the last hidden layer
over the test set. At the end of a BN run it scores several test-time statistics.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from experiments.data import Prepared, prepare
from training.layers import Array, softmax_cross_entropy
from training.network import MLP, BlockStats
from training.train import Step, TrainConfig, TrainingDiverged, set_running_statistics, train

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
    """One run of plain SGD for ``budget.steps`` steps through :func:`training.train.train`; a run that
    diverges (an overflow or a NaN in a training step) stops there.

    The network's own BN momentum is set to 0, so after each step its buffers hold exactly that batch's
    mean and unbiased variance; the per-step callback feeds them to :class:`EWMAStatistics` trackers, which
    turn them into running averages with several momenta at once (identical to BatchNorm's own update with
    that momentum). The weights never depend on the momentum, so one run serves all of them.
    """
    t0 = time.perf_counter()
    trackers: dict[float, EWMAStatistics] = {}
    steps: list[int] = []
    accs: list[float] = []
    medians: list[Array] = []
    spreads: list[Array] = []
    unit: list[list[float]] = []
    eval_steps = set(evaluation_steps(budget))

    def frozen_logits(net: MLP, X: Array, momentum: float = DEFAULT_MOMENTUM) -> Array:
        if batchnorm:
            set_running_statistics(net, trackers[momentum].stats)
        return net.forward(X, training=False)

    def record(net: MLP, step: int) -> None:
        acc = float((frozen_logits(net, data.Xte).argmax(axis=1) == data.yte).mean())
        # The distribution the last hidden layer's activation sees over the test set, with BN normalizing
        # by the statistics of that set (a 1000-row batch: close to the population statistics).
        z = forward_batch_statistics(net, data.Xte)[1][-1]  # (M, H)
        q = np.percentile(z, PERCENTILES, axis=0)  # (3, H)
        steps.append(step)
        accs.append(acc)
        medians.append(q[1])
        spreads.append(q[2] - q[0])
        unit.append([float(v) for v in q[:, 0]])

    def on_step(s: Step) -> bool:
        net = s.model.net
        if batchnorm and s.step == 0:
            trackers.update({m: EWMAStatistics(net, m) for m in EWMA_MOMENTA})
        elif batchnorm:
            batch = [
                (b.bn.running_mean.astype(np.float64), b.bn.running_var.astype(np.float64))
                for b in net.blocks
                if b.bn is not None
            ]
            for tr in trackers.values():
                tr.update(batch)
        if s.step in eval_steps:
            record(net, s.step)
        return s.step >= budget.steps

    steps_per_epoch = len(data.Xtr) // budget.batch_size
    config = TrainConfig(
        epochs=math.ceil(budget.steps / steps_per_epoch),
        batch_size=budget.batch_size,
        lr=lr,
        optimizer="sgd",
        momentum=0.0,
        weight_decay=0.0,
        patience=None,
        seed=seed,
        drop_last=True,
    )
    net: MLP | None = None
    diverged_at: int | None = None
    # Overflow in a diverging run is expected: train() detects it in the step itself (its own errstate);
    # everything around the steps (validation, the callback's evaluations) is not warned about.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        try:
            result = train(
                data.dataset,
                hidden=budget.hidden,
                activation=activation,
                batchnorm=batchnorm,
                bn_momentum=0.0,
                config=config,
                progress=False,
                data_split=data.split,
                on_step=on_step,
            )
            net = result.model.net
        except TrainingDiverged as exc:
            diverged_at = exc.step
        final = _final_metrics(data, net, frozen_logits)
        test_time: dict[str, dict[str, float]] = {}
        if batchnorm and score_test_time and net is not None:
            rng_precise = np.random.default_rng([seed, 9])
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


def _final_metrics(data: Prepared, net: MLP | None, frozen_logits: Any) -> dict[str, float]:
    """Train/test accuracy and loss at the end; a diverged run (no ``net``) scores chance and an infinite loss."""
    if net is None:
        return {
            "train_accuracy": data.chance,
            "test_accuracy": data.chance,
            "train_loss": math.inf,
            "test_loss": math.inf,
        }
    out: dict[str, float] = {}
    for part, X, y in (("train", data.Xtr, data.ytr), ("test", data.Xte, data.yte)):
        logits = frozen_logits(net, X)
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
