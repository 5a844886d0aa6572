"""The command line: run the grid, write ``results.json``, then render the plots and the report from it."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from experiments.analysis import summarize
from experiments.data import prepare
from experiments.plots import plot_curves, plot_final_vs_lr, plot_preactivations, plot_test_time
from experiments.report import write_report
from experiments.runs import FULL, QUICK, Budget, RunResult, run_all

DEFAULT_OUT = Path("docs/experiments")
RESULTS = "results.json"  # every run's measurements; the plots and the report are rendered from it


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
    """Command line: ``python -m experiments [--quick] [--out DIR] [--no-progress] [--replot]``."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments",
        description="Does Batch Norm do what the paper says, on this code and real data? Trains the grid of "
        "runs and writes the report with its plots.",
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
        "python -m experiments"
        + (" --quick" if args.quick else "")
        + (f" --out {args.out}" if args.out != DEFAULT_OUT else "")
    )
    summary = run(args.out, budget, command, progress=not args.no_progress)
    for claim, v in summary["verdicts"].items():
        print(f"{claim}: {v['verdict']}")
    print(f"report: {args.out / 'report.md'}")
    return 0
