"""bnserve against scikit-learn on small public tables, over several seeds, on the same splits.

Each table is written to a CSV file and trained on the way a user would (``load_csv`` with default
options); the scikit-learn models get exactly the same training rows (bnserve's training split, its
validation split unused by them) and are scored on the same test rows:

- classification: LogisticRegression, MLPClassifier(256, 256) and HistGradientBoostingClassifier, each
  after a StandardScaler (test accuracy and balanced accuracy);
- regression: Ridge, MLPRegressor(256, 256) and HistGradientBoostingRegressor (test R²).

Prints one line per table and model (mean ± standard deviation over the seeds) and a Markdown table.

    python -m benchmarks.tabular [--seeds 5] [--tables wine iris breast_cancer diabetes digits]

Needs scikit-learn (the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TABLES = ("wine", "iris", "breast_cancer", "diabetes", "digits")


@dataclass
class Table:
    """A table as a user would have it: a header, feature columns, a target column."""

    name: str
    header: list[str]
    X: np.ndarray  # (N, F)
    y: list[Any]  # the target column as written to the CSV
    target: str
    task: str


def make_table(name: str) -> Table:
    """One of scikit-learn's bundled tables, or bnserve's bundled digits."""
    import sklearn.datasets as skd

    if name == "digits":
        from training.data import load_digits

        ds = load_digits()
        return Table(name, ds.feature_names, ds.X, ds.y.tolist(), "digit", "classification")
    loader = {
        "wine": skd.load_wine,
        "iris": skd.load_iris,
        "breast_cancer": skd.load_breast_cancer,
        "diabetes": skd.load_diabetes,
    }[name]
    bunch = loader()
    if name == "diabetes":
        # The raw (unscaled) values: what a user's file holds.
        bunch = skd.load_diabetes(scaled=False)
        return Table(
            name, list(bunch.feature_names), bunch.data, bunch.target.tolist(), "progression", "regression"
        )
    if name == "iris":  # text labels, as in the usual CSV
        y = [str(bunch.target_names[k]) for k in bunch.target]
        return Table(name, list(bunch.feature_names), bunch.data, y, "species", "classification")
    return Table(
        name, list(bunch.feature_names), bunch.data, bunch.target.tolist(), "target", "classification"
    )


def write_csv(table: Table, directory: Path) -> Path:
    """The table as ``<name>.csv`` with a header row."""
    path = directory / f"{table.name}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*table.header, table.target])
        for row, t in zip(table.X.tolist(), table.y):
            w.writerow([*(repr(v) for v in row), t])
    return path


@dataclass
class Run:
    """What bnserve produced for one seed: its test metrics and the split it used."""

    metrics: dict[str, float]
    train_idx: np.ndarray
    test_idx: np.ndarray
    y: np.ndarray  # targets as the dataset encodes them (class indices, or floats (N, 1))
    seconds: float


def run_bnserve(path: Path, table: Table, seed: int) -> Run:
    """Train bnserve with its default options on the CSV file, as ``python -m training --csv`` does
    (including its size-aware batch size, epochs and patience)."""
    from training.data import load_csv, split
    from training.train import TrainConfig, sized, sized_hidden, train

    ds = load_csv(path, table.target)
    n_train = len(split(ds, np.random.default_rng(seed)).train)
    size = sized(n_train)  # the command line's defaults
    start = time.perf_counter()
    result = train(ds, hidden=sized_hidden(n_train), config=TrainConfig(seed=seed, **size), progress=False)
    seconds = time.perf_counter() - start
    metrics = {**result.metrics["test"], **result.evaluation.get("test", {})}
    return Run(metrics, result.split.train, result.split.test, ds.y, seconds)


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and balanced accuracy (the mean of the per-class recalls)."""
    from sklearn.metrics import balanced_accuracy_score

    return {
        "accuracy": float((y_true == y_pred).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
    }


def sklearn_models(task: str, seed: int) -> dict[str, Callable[[], Any]]:
    """The baselines, each a StandardScaler pipeline, seeded."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task == "classification":
        return {
            "LogisticRegression": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
            "MLP(256,256)": lambda: make_pipeline(
                StandardScaler(),
                MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=500, random_state=seed),
            ),
            "HistGradientBoosting": lambda: HistGradientBoostingClassifier(random_state=seed),
        }
    return {
        "Ridge": lambda: make_pipeline(StandardScaler(), Ridge()),
        "MLP(256,256)": lambda: make_pipeline(
            StandardScaler(), MLPRegressor(hidden_layer_sizes=(256, 256), max_iter=500, random_state=seed)
        ),
        "HistGradientBoosting": lambda: HistGradientBoostingRegressor(random_state=seed),
    }


def score(table: Table, run: Run, factory: Callable[[], Any]) -> dict[str, float]:
    """Fit one scikit-learn model on bnserve's training rows and score it on bnserve's test rows."""
    tr, te = run.train_idx, run.test_idx
    model = factory()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the baselines are not our business
        if table.task == "classification":
            model.fit(table.X[tr], run.y[tr])
            return classification_scores(run.y[te], model.predict(table.X[te]))
        y = run.y[:, 0]
        model.fit(table.X[tr], y[tr])
        pred = model.predict(table.X[te])
    ss_res = float(((y[te] - pred) ** 2).sum())
    ss_tot = float(((y[te] - y[te].mean()) ** 2).sum())
    return {"r2": 1.0 - ss_res / ss_tot}


def bnserve_scores(table: Table, run: Run) -> dict[str, float]:
    """bnserve's test metrics in the same terms as the baselines'."""
    if table.task == "regression":
        return {"r2": run.metrics["r2"]}
    out = {"accuracy": run.metrics["accuracy"]}
    if "balanced_accuracy" in run.metrics:
        out["balanced_accuracy"] = run.metrics["balanced_accuracy"]
    return out


def mean_pm(values: list[float]) -> str:
    """``mean ± standard deviation`` (population std over the seeds)."""
    if not values:
        return "—"
    return f"{statistics.fmean(values):.3f} ± {statistics.pstdev(values):.3f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    p.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    p.add_argument("--no-sklearn", action="store_true", help="bnserve only")
    args = p.parse_args()

    print(f"# bnserve vs scikit-learn, {args.seeds} seeds, pid {os.getpid()}", flush=True)
    rows: list[tuple[str, str, str, str]] = []  # table, model, primary metric, secondary
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tables:
            table = make_table(name)
            path = write_csv(table, Path(tmp))
            results: dict[str, list[dict[str, float]]] = {}
            seconds: list[float] = []
            for seed in range(args.seeds):
                run = run_bnserve(path, table, seed)
                seconds.append(run.seconds)
                results.setdefault("bnserve", []).append(bnserve_scores(table, run))
                if not args.no_sklearn:
                    for model, factory in sklearn_models(table.task, seed).items():
                        results.setdefault(model, []).append(score(table, run, factory))
            key = "r2" if table.task == "regression" else "accuracy"
            shape = f"{name} ({table.X.shape[0]}×{table.X.shape[1]})"
            for model, scores in results.items():
                primary = mean_pm([s[key] for s in scores])
                secondary = mean_pm([s["balanced_accuracy"] for s in scores if "balanced_accuracy" in s])
                rows.append((shape, model, primary, secondary))
                print(f"{shape:28s} {model:22s} {key} {primary}   balanced accuracy {secondary}", flush=True)
            print(f"{shape:28s} bnserve training time {statistics.fmean(seconds):.1f} s per seed", flush=True)

    print("\n| table | model | accuracy / R² (mean ± std) | balanced accuracy |")
    print("|---|---|---|---|")
    for table_name, model, primary, secondary in rows:
        print(f"| {table_name} | {model} | {primary} | {secondary} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
