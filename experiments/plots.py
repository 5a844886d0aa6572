"""The report's figures, rendered from the runs' measurements (matplotlib's Agg backend, imported lazily)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.analysis import mean_curve, select
from experiments.data import Prepared
from experiments.runs import PERCENTILES, TEST_BATCH_SIZES, Budget, RunResult

BN_COLOR, PLAIN_COLOR = "tab:blue", "tab:red"


def pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend (the ``plots`` extra), imported only when plotting."""
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - depends on the environment
        raise SystemExit("the experiments' plots need matplotlib: pip install 'bnserve[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, title: str, path: Path) -> None:
    """Title the figure, lay it out, write it as a PNG at 110 dpi and close it (pyplot keeps open figures)."""
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def plot_curves(results: Sequence[RunResult], budget: Budget, data: Prepared, path: Path) -> None:
    """Figure 1(a)-style: test accuracy against steps, BN vs plain, one panel per activation and lr."""
    plt = pyplot()
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
    _save(
        fig,
        f"{data.name}: test accuracy during training, plain SGD, batch {budget.batch_size}\n"
        f"line = mean of {len(budget.seeds)} seeds, band = min..max, dotted = chance",
        path,
    )


def plot_final_vs_lr(results: Sequence[RunResult], budget: Budget, data: Prepared, path: Path) -> None:
    """Final test accuracy against the learning rate (log scale): mean over seeds, bars from min to max."""
    plt = pyplot()
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
    _save(
        fig,
        f"Final accuracy per learning rate (mean of {len(budget.seeds)} seeds, bars = min..max)",
        path,
    )


def plot_preactivations(results: Sequence[RunResult], budget: Budget, data: Prepared, path: Path) -> None:
    """Figure 1(b, c)-style: 15/50/85th percentiles of one last-layer unit's input over training (seed 0)."""
    plt = pyplot()
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
    _save(
        fig,
        f"{data.name}: one unit of the last hidden layer, its input over the test set "
        f"(lr {budget.focus_lr:g}, seed {seed})",
        path,
    )


def plot_test_time(summary: dict[str, Any], budget: Budget, data: Prepared, path: Path) -> None:
    """Grouped bars: test accuracy per statistics mode and test batch size, mean and std over seeds."""
    plt = pyplot()
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
    _save(
        fig,
        "Statistics used by BN at test time: frozen (EWMA momenta, precise) vs the test batch's own",
        path,
    )
