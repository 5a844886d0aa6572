"""``python -m training adapt``: the command line of :mod:`training.adapt`, and reading what it adapts (the
model versions of a repository, the CSV of unlabeled rows)."""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

import contract as C
from featurestats import input_statistics, sample_psi
from training.adapt import (
    MIN_ROWS,
    SCOPES,
    AdaptError,
    adapt_layers,
    build_corrected,
    check_adaptable,
    read_folded,
)
from training.data import DataError, _number, row_label
from training.export import ExportError, hidden_statistics, next_version, triton_config, verify, write_version
from training.graph import affine_forward, build_folded


def read_rows(path: str | Path, feature_names: Sequence[str]) -> np.ndarray:
    """Raw rows (N, F) from a CSV whose header names exactly the model's features (in any order)."""
    path = Path(path)
    if not path.is_file():
        raise AdaptError(f"{path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            rows: list[tuple[int, list[str]]] = []  # (the file line the row starts on, its cells)
            end = 0
            for r in reader:
                if any(cell.strip() for cell in r):
                    rows.append((end + 1, r))
                end = reader.line_num  # counts the line breaks inside quoted cells too
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AdaptError(f"{path}: cannot be read as CSV ({exc})") from None
    if not rows:
        raise AdaptError(f"{path}: the file is empty (a header row naming the features is required)")
    header = [h.strip() for h in rows[0][1]]
    missing = [n for n in feature_names if n not in header]
    unexpected = [h for h in header if h not in set(feature_names)]
    if missing or unexpected or len(header) != len(feature_names):

        def few(names: list[str]) -> str:
            return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

        parts = [
            f"missing {few(missing)}" if missing else "",
            f"unexpected {few(unexpected)}" if unexpected else "",
        ]
        detail = "; ".join(p for p in parts if p) or "duplicate columns"
        raise AdaptError(
            f"{path}: the columns do not match the model's {len(feature_names)} features ({detail})"
        )
    order = [header.index(n) for n in feature_names]
    X = np.empty((len(rows) - 1, len(feature_names)))
    for i, (line, r) in enumerate(rows[1:]):
        if len(r) != len(header):
            raise AdaptError(f"{path}: {row_label(i, line)} has {len(r)} cells, the header has {len(header)}")
        for k, j in enumerate(order):
            v = _number(r[j].strip())
            if v is None:
                raise AdaptError(
                    f"{path}: {row_label(i, line)}, column {header[j]!r} is not a finite number: {r[j][:40]!r}"
                )
            X[i, k] = v
    return X


def latest_version(model_dir: Path) -> int:
    """The highest integer version under ``<repository>/<name>/`` holding a model.onnx."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.name.isdigit() and (p / "model.onnx").is_file()]
    if not versions:
        raise AdaptError(f"{model_dir}: no model versions (expected {model_dir}/<version>/model.onnx)")
    return max(versions)


def load_version(model_dir: Path, version: int) -> tuple[onnx.ModelProto, C.ModelContract]:
    """The served graph and its contract; AdaptError when either cannot be read."""
    path = model_dir / str(version) / "model.onnx"
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises protobuf's DecodeError, OSError, ...
        raise AdaptError(f"{path}: cannot be read as ONNX ({type(exc).__name__})") from None
    try:
        mc = C.ModelContract.from_metadata({p.key: p.value for p in model.metadata_props})
    except C.ContractError as exc:
        raise AdaptError(f"{path}: bad contract metadata: {exc}") from None
    return model, mc


# --- scores before adaptation -------------------------------------------------------------------------------


def psi_score(X: np.ndarray, stats: C.InputStats) -> float:
    """The drift score of rows ``X`` against reference statistics: the max over columns of their PSI."""
    return float(sample_psi(X, stats).max())


# --- the new version ----------------------------------------------------------------------------------------


@dataclass
class AdaptReport:
    """What :func:`adapt_version` wrote and measured."""

    path: Path
    parent_version: int
    version: int
    rows: int
    scores_before: dict[str, float]  # the rows against the parent's training statistics
    scores_after: dict[str, float]  # the rows, corrected by the adapted version, against the same
    verification: dict[str, float]


def adapt_version(
    repository: str | Path,
    name: str,
    rows_path: str | Path,
    version: int | None = None,
    scope: str = "all",
    min_rows: int = MIN_ROWS,
) -> AdaptReport:
    """Adapt ``<repository>/<name>/<version>`` (default: the latest) to the rows of ``rows_path``, verify the
    fold, and write the next version; :class:`AdaptError` or :class:`ExportError` when it refuses."""
    model_dir = Path(repository) / name
    if not model_dir.is_dir():
        raise AdaptError(f"{model_dir}: no such model in the repository")
    newest = latest_version(model_dir)
    parent = newest if version is None else version
    path = model_dir / str(parent) / "model.onnx"
    if not path.is_file():
        raise AdaptError(f"{path}: no such model version")
    model, mc = load_version(model_dir, parent)
    layers = read_folded(model)
    check_adaptable(path, mc, layers)
    try:
        X = read_rows(rows_path, mc.feature_names)
    except DataError as exc:
        raise AdaptError(str(exc)) from None
    if len(X) < min_rows:
        raise AdaptError(
            f"{rows_path}: {len(X)} rows; adaptation needs at least {min_rows} to estimate each unit's mean and "
            "standard deviation"
        )

    adapted = adapt_layers(layers, mc.input_stats, mc.hidden_stats, X, mc.task, scope)
    before = _scores(X, mc.input_stats, mc.hidden_stats, affine_forward(layers, X)[:-1])
    hidden_after = hidden_statistics(adapted.layers, X)
    new_version = next_version(model_dir)
    new_contract = C.ModelContract(
        task=mc.task,
        feature_names=mc.feature_names,
        input_stats=input_statistics(X),
        class_labels=mc.class_labels,
        target_names=mc.target_names,
        training=mc.training,
        hidden_stats=hidden_after,
        adaptation={
            "method": "AdaBN: input standardization"
            + (" and every Batch Norm layer's statistics" if scope == "all" else " only")
            + " re-estimated on unlabeled rows, layer by layer, weights frozen",
            "scope": scope,
            "parent_version": parent,
            "rows": len(X),
            "source": str(rows_path),
            "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "drift_score_before": before["inputs"],
            "drift_scores_before": before,
        },
    )
    folded = build_folded(adapted.layers, new_contract, new_version)
    unfolded = build_corrected(layers, adapted, new_contract, new_version)
    X32 = X.astype(np.float32).astype(np.float64)  # what the graph is fed
    report = verify(folded, unfolded, adapted.output(X32), adapted.layers, None, new_contract, X32)
    # The rows as the adapted network sees them, against the parent's training statistics.
    # (hidden layers only: moment matching cannot make discrete inputs fall in their training decile bins)
    after = _scores(adapted.inputs(X), mc.input_stats, mc.hidden_stats, adapted.hidden_outputs(X))
    del after["inputs"]

    out = write_version(model_dir, new_version, folded, {}, triton_config(name, new_contract)) / "model.onnx"
    return AdaptReport(out, parent, new_version, len(X), before, after, report)


def _scores(
    X: np.ndarray, input_stats: C.InputStats, hidden: Sequence[C.HiddenLayerStats], zs: Sequence[np.ndarray]
) -> dict[str, float]:
    """The drift score (max PSI) of the rows' inputs and of each hidden layer's outputs."""
    scores = {"inputs": psi_score(X, input_stats)}
    scores.update({h.name: psi_score(z, h.stats) for h, z in zip(hidden, zs)})
    return scores


# --- the command line ---------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training adapt",
        description="Re-estimate a served model's input standardization and Batch Norm statistics on unlabeled "
        "rows (AdaBN, weights frozen), verify the fold, and write the next version.",
    )
    p.add_argument("--repository", default="models", metavar="DIR", help="model repository (default: models)")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument(
        "--rows", required=True, metavar="CSV", help="unlabeled rows, a header naming the model's features"
    )
    p.add_argument("--version", type=int, help="version to adapt (default: the latest)")
    p.add_argument(
        "--scope",
        choices=SCOPES,
        default="all",
        help="re-estimate every layer's statistics (default) or the input standardization only",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training adapt ...``: one line per step on stdout; one error line and exit 2 (bad input)
    or 1 (verification failed) otherwise."""
    args = parser().parse_args(argv)
    try:
        rep = adapt_version(args.repository, args.name, args.rows, args.version, args.scope)
    except AdaptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    def fmt(scores: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.3f}" for k, v in scores.items())

    v = rep.verification
    print(f"read {rep.rows} rows from {args.rows}")
    print(f"drift of the rows against version {rep.parent_version} (max PSI): {fmt(rep.scores_before)}")
    print(
        f"re-estimated the input standardization{' and every Batch Norm layer' if args.scope == 'all' else ''} (weights frozen)"
    )
    print(f"hidden layers of the adapted version on the same rows: {fmt(rep.scores_after)}")
    print(
        f"verified on {int(v['rows'])} rows against the float64 network: folded graph "
        f"{v['folded_vs_float64']:.2e} ({v['folded_share_of_tolerance']:.0%} of its float32 tolerance), "
        f"unfolded {v['unfolded_vs_float64']:.2e}"
    )
    print(f"wrote {rep.path} (parent version {rep.parent_version})")
    return 0
