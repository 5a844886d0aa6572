"""``python -m training``: train a Batch-Normalized MLP, fold it, verify it and write it to the model repository;
``python -m training adapt ...``: re-estimate a served model's statistics on unlabeled rows (training/adapt_cli.py).

Bad input ends with one readable line on stderr and a non-zero exit status: 2 for bad data or options,
1 when the export refuses to write (verification failed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from training.data import DataError, Dataset, load_csv, load_digits, split
from training.layers import ACTIVATIONS
from training.train import BN_STATS, CLASS_WEIGHTS, TrainConfig, sized, sized_hidden, train

DEFAULTS = TrainConfig()


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {v}")
    return v


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing (not None, not an unset flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training",
        description="Train a Batch-Normalized MLP in numpy, fold BN into the weights and export it to ONNX.",
        formatter_class=_Formatter,
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--dataset", choices=["digits"], default="digits", help="bundled dataset (ignored with --csv)"
    )
    data.add_argument("--csv", metavar="PATH", help="train on your own CSV file (header row required)")
    data.add_argument("--target", metavar="COLUMN", help="the CSV column to predict (required with --csv)")
    data.add_argument(
        "--task",
        choices=["classification", "regression"],
        help="what the target is; inferred when omitted (text or few distinct integers: classification)",
    )
    data.add_argument(
        "--features", nargs="+", metavar="COLUMN", help="use only these columns as features (kept as named)"
    )
    data.add_argument(
        "--drop", nargs="+", default=[], metavar="COLUMN", help="columns not to use as features"
    )
    data.add_argument(
        "--categorical",
        nargs="+",
        default=[],
        metavar="COLUMN",
        help="columns of numbers that are categories (text columns are categorical anyway)",
    )
    data.add_argument(
        "--missing-indicator",
        action="store_true",
        help="add a 0/1 'was missing' input for each numeric column with missing cells (they are imputed "
        "with the training median either way)",
    )
    data.add_argument(
        "--encoding", help="the CSV's text encoding (default utf-8, a byte-order mark is skipped)"
    )
    data.add_argument(
        "--delimiter",
        choices=[",", ";", "tab", "|"],
        help="the CSV's delimiter (default: sniffed from the file)",
    )
    net = p.add_argument_group("network")
    net.add_argument(
        "--hidden",
        type=_positive_int,
        nargs="*",
        metavar="N",
        help="hidden layer sizes (default: 256 256, or 64 for a table of fewer than 1,000 training rows)",
    )
    net.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu", help="hidden activation")
    net.add_argument(
        "--no-batchnorm",
        action="store_true",
        help="plain MLP (hidden Linear layers get a bias), for comparisons",
    )
    net.add_argument(
        "--bn-momentum",
        type=_fraction,
        default=0.9,
        help="EWMA weight kept by the old running statistic (PyTorch's momentum 0.1 is 0.9 here)",
    )
    net.add_argument(
        "--bn-stats",
        choices=BN_STATS,
        default=DEFAULTS.bn_stats,
        help="test-time statistics: the EWMA kept during training, or precise population statistics "
        "recomputed after training with the weights frozen (PreciseBN)",
    )
    opt = p.add_argument_group("optimization")
    opt.add_argument(
        "--epochs",
        type=_positive_int,
        help="maximum number of epochs (default: a budget of 2,000 optimizer steps, at least 5 epochs)",
    )
    opt.add_argument(
        "--batch-size",
        type=_positive_int,
        help="rows per mini-batch, >= 2 (default: by table size, 16 for ~100 training rows, 64 from 1,000, "
        "up to 512 from 400,000)",
    )
    opt.add_argument("--lr", type=_positive_float, default=DEFAULTS.lr, help="learning rate")
    opt.add_argument(
        "--optimizer",
        choices=["adam", "sgd"],
        default=DEFAULTS.optimizer,
        help="adam, or sgd with momentum 0.9",
    )
    opt.add_argument(
        "--weight-decay",
        type=float,
        default=DEFAULTS.weight_decay,
        help="decay of the weight matrices (never gamma, beta or biases); decoupled with adam, L2 with sgd",
    )
    opt.add_argument(
        "--schedule",
        choices=["none", "cosine", "step"],
        default=DEFAULTS.schedule,
        help="learning-rate schedule",
    )
    opt.add_argument(
        "--patience",
        type=_positive_int,
        help="early-stopping patience in epochs (default: 400 optimizer steps, at least 2 epochs)",
    )
    opt.add_argument(
        "--seed", type=int, default=DEFAULTS.seed, help="seed of every random choice (split, init, batches)"
    )
    opt.add_argument(
        "--class-weight",
        choices=CLASS_WEIGHTS,
        default=DEFAULTS.class_weight,
        help="balanced: each class weighs the same in the loss and in early stopping (imbalanced data)",
    )
    out = p.add_argument_group("output")
    out.add_argument("--repository", default="models", metavar="DIR", help="model repository to write into")
    out.add_argument("--name", help="model name in the repository (default: the dataset's name)")
    out.add_argument(
        "--unfolded", metavar="PATH", help="also write the unfolded graph (with BatchNormalization nodes)"
    )
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def load(args: argparse.Namespace) -> Dataset:
    if args.csv:
        if not args.target:
            raise DataError("--csv needs --target COLUMN (the column to predict)")
        return load_csv(
            args.csv,
            args.target,
            args.task,
            encoding=args.encoding,
            delimiter="\t" if args.delimiter == "tab" else args.delimiter,
            features=args.features,
            drop=args.drop,
            categorical=args.categorical,
            missing_indicator=args.missing_indicator,
        )
    csv_only = [
        args.target,
        args.task,
        args.features,
        args.drop,
        args.categorical,
        args.encoding,
        args.delimiter,
    ]
    if any(csv_only) or args.missing_indicator:
        raise DataError("--target, --task and the column and dialect options go with --csv")
    return load_digits()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `python -m training adapt ...`: AdaBN on a served model (training/adapt_cli.py)
    if argv[:1] == ["adapt"]:
        from training.adapt_cli import main as adapt_main

        return adapt_main(argv[1:])
    args = parser().parse_args(argv)
    # Imported here so that `--help` and bad options answer without loading onnx.
    from training.export import ExportError, export

    try:
        if args.weight_decay < 0:
            raise DataError(f"--weight-decay must be >= 0, got {args.weight_decay}")
        if args.batch_size is not None and args.batch_size < 2:
            raise DataError("--batch-size must be at least 2: Batch Norm needs 2 rows to estimate a variance")
        ds = load(args)
        for notice in ds.notices:
            print(notice, file=sys.stderr)
        if ds.task_inferred:
            print(
                f"task: {ds.task} (inferred from the target column; pass --task to choose)", file=sys.stderr
            )
        # Defaults that fit the table: counted on the training split (the split itself is cheap).
        n_train = len(split(ds, np.random.default_rng(args.seed)).train)
        size = sized(n_train)
        cfg = TrainConfig(
            epochs=args.epochs or size["epochs"],
            batch_size=args.batch_size or size["batch_size"],
            lr=args.lr,
            optimizer=args.optimizer,
            weight_decay=args.weight_decay,
            schedule=args.schedule,
            patience=args.patience or size["patience"],
            class_weight=args.class_weight,
            seed=args.seed,
            bn_stats=args.bn_stats,
        )
        result = train(
            ds,
            hidden=tuple(args.hidden) if args.hidden is not None else sized_hidden(n_train),
            activation=args.activation,
            batchnorm=not args.no_batchnorm,
            bn_momentum=args.bn_momentum,
            config=cfg,
            progress=not args.quiet,
        )
        report = export(result, args.repository, args.name or ds.name, args.unfolded)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except FloatingPointError as exc:
        print(f"error: {exc}; try a smaller --lr", file=sys.stderr)
        return 1

    test = dict(result.metrics["test"])
    evaluation = result.evaluation.get("test", {})
    test.update({k: evaluation[k] for k in ("balanced_accuracy", "macro_f1", "roc_auc") if k in evaluation})
    shown = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in test.items())
    print(f"trained {len(result.history)} epochs (best {result.best_epoch}); test: {shown}")
    if evaluation:
        recalls = ", ".join(f"{c} {m['recall']:.3f}" for c, m in evaluation["per_class"].items())
        print(f"test recall per class: {recalls} (precision, F1 and the confusion matrix: history.json)")
    if result.bn_gap:
        g = result.bn_gap
        print(
            f"bn-stats {cfg.bn_stats}: EWMA vs precise statistics differ by at most {g['max_mean_shift']:.4f} std "
            f"in mean, {g['max_log_var_ratio']:.4f} in log variance "
            f"(val loss {g['val_loss_ewma']:.4f} ewma / {g['val_loss_precise']:.4f} precise)"
        )
    v = report.verification
    centred = (
        "; the graph subtracts the mean itself (folding it would lose precision)" if v["centred"] else ""
    )
    print(
        f"verified on {int(v['rows'])} held-out rows against the float64 network: folded graph "
        f"{v['folded_vs_float64']:.2e} ({v['folded_share_of_tolerance']:.0%} of its float32 tolerance), "
        f"unfolded {v['unfolded_vs_float64']:.2e}{centred}"
    )
    if report.unfolded_path:
        print(f"unfolded graph: {report.unfolded_path}")
    print(
        f"wrote {report.path} (version {report.version} of {report.path.parent.parent.name!r}; "
        "the service serves the highest version)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
