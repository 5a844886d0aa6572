"""From the runs to the numbers the report quotes: means over seeds, speed, and the verdict on each claim."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.data import Prepared
from experiments.runs import TEST_BATCH_SIZES, Budget, RunResult
from training.layers import Array


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

    def claim(rule: str, held: dict[str, bool]) -> dict[str, Any]:
        ok = list(held.values())
        verdict = "supported" if all(ok) else "not supported" if not any(ok) else "partly supported"
        return {"rule": rule, "cases": held, "verdict": verdict}

    held = {c: summary[c]["shift_index"]["bn"][0] < summary[c]["shift_index"]["plain"][0] for c in cases}
    out["stabilises each layer's input distribution"] = claim(
        f"covariate-shift index at lr {budget.focus_lr:g} lower with BN than without",
        held,
    )

    held = {}
    for c in cases:
        f = summary[c]["final"]
        held[c] = (
            all(f["bn"][lr][0] > f["plain"][lr][0] for lr in top)
            and summary[c]["best_lr"]["bn"] >= summary[c]["best_lr"]["plain"]
        )
    out["allows higher learning rates"] = claim(
        f"BN more accurate than plain at lr {', '.join(top)}, and BN's best lr >= plain's",
        held,
    )

    held = {}
    for c in cases:
        st = summary[c]["steps_to_target"]
        held[c] = st["bn"] is not None and (st["plain"] is None or st["bn"] < st["plain"])
    out["speeds up training"] = claim(
        "at its best lr, BN reaches (plain's best final accuracy - 1 point) in fewer steps than plain",
        held,
    )

    held = {}
    for c in cases:
        g = summary[c]["gap"]
        held[c] = (
            g["bn"]["accuracy_gap"][0] < g["plain"]["accuracy_gap"][0]
            and g["bn"]["test_accuracy"][0] >= g["plain"]["test_accuracy"][0]
        )
    out["regularises a little"] = claim(
        "at each net's best lr, BN's train-minus-test accuracy gap is smaller and its test accuracy no lower",
        held,
    )

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
    out["needs population (frozen) statistics at test time"] = claim(
        "with batch statistics at test time, batch 1 scores within 5 points of chance, and batch 8 and "
        "single-class batches of 256 score below frozen statistics",
        held,
    )
    return out
