"""The training loop (the one loop): shuffled mini-batches, per-epoch validation, early stopping, test-time
BN statistics, and a per-step callback for whoever needs to watch or stop a run (the experiments)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from contract import TASK_CLASSIFICATION
from training.data import DataDescription, Dataset, Split, Standardizer, split
from training.layers import mean_squared_error, softmax, softmax_cross_entropy
from training.metrics import balanced_class_weights, classification_report
from training.network import MLP, MLPConfig
from training.optim import make_optimizer, scheduled_lr

BN_STATS = ("ewma", "precise")
CLASS_WEIGHTS = ("none", "balanced")
#: Size-aware defaults (:func:`sized`), counted in optimizer steps so that they mean the same for 150 rows
#: and for a million: the step budget, the patience, and the fewest epochs a big table gets.
BUDGET_STEPS = 2000
PATIENCE_STEPS = 400
MIN_EPOCHS = 5
MAX_EPOCHS = 1000


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run (the network's shape is in :class:`MLPConfig`)."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.01  # decoupled (AdamW) with adam; for sgd's L2 something like 5e-4 suits
    schedule: str = "none"
    patience: int | None = 20  # None: no early stopping, the last weights are kept
    seed: int = 0
    bn_stats: str = "ewma"
    momentum: float = 0.9  # sgd's heavy-ball momentum (adam ignores it)
    drop_last: bool = False  # drop each epoch's short last batch (fixed-size steps) instead of keeping it
    class_weight: str = "none"  # "balanced": each class weighs the same in the loss (imbalanced data)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch size must be >= 2 (Batch Norm needs 2 rows), got {self.batch_size}")
        if self.bn_stats not in BN_STATS:
            raise ValueError(f"bn-stats must be one of {BN_STATS}, got {self.bn_stats!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.class_weight not in CLASS_WEIGHTS:
            raise ValueError(f"class weight must be one of {CLASS_WEIGHTS}, got {self.class_weight!r}")


#: Below this many training rows the command line's default network is one hidden layer of 64 units: two
#: layers of 256 fit a few hundred rows in a few steps and stop early on noise (diabetes: R² 0.25 vs 0.41).
SMALL_TABLE_ROWS = 1000
SMALL_HIDDEN = (64,)
LARGE_HIDDEN = (256, 256)


def sized_hidden(n_train: int) -> tuple[int, ...]:
    """The command line's default hidden layers for ``n_train`` training rows."""
    return SMALL_HIDDEN if n_train < SMALL_TABLE_ROWS else LARGE_HIDDEN


def sized(n_train: int) -> dict[str, int]:
    """Batch size, epochs and patience that fit ``n_train`` training rows (the command line's defaults).

    The batch grows with the table (16 rows for a hundred, 64 from a thousand, up to 512 from 400,000: big
    tables need fewer, cheaper steps); the epochs give a budget of ``BUDGET_STEPS`` optimizer steps (at least
    ``MIN_EPOCHS``, at most ``MAX_EPOCHS``) and the patience ``PATIENCE_STEPS`` steps (at least 2 epochs).
    The bundled digits (1,259 training rows) get 64 rows, 100 epochs and a patience of 20, as always.
    """
    if n_train >= 400_000:
        batch = 512
    elif n_train >= 100_000:
        batch = 256
    elif n_train >= 1024:
        batch = 64
    else:
        batch = int(min(max(2 ** round(math.log2(max(n_train, 1) / 16)), 16), 64))
    steps = max(math.ceil(n_train / batch), 1)  # per epoch
    return {
        "batch_size": batch,
        "epochs": min(max(math.ceil(BUDGET_STEPS / steps), MIN_EPOCHS), MAX_EPOCHS),
        "patience": max(math.ceil(PATIENCE_STEPS / steps), 2),
    }


#: Rows per forward pass when a trained model predicts many rows (evaluation of a big table's splits).
OUTPUT_ROWS = 1 << 16


@dataclass
class TrainedModel:
    """A trained network with everything needed to predict from raw features at test time."""

    net: MLP
    standardizer: Standardizer
    task: str
    y_mean: np.ndarray | None = None  # regression targets are learned standardized
    y_std: np.ndarray | None = None

    def output(self, X: np.ndarray) -> np.ndarray:
        """Test-time forward from raw features: probabilities ``(N, C)`` or predictions ``(N, T)``.

        Rows go through in chunks of ``OUTPUT_ROWS``: a big table's hidden activations (700,000 rows x 256
        units, several arrays per layer) would otherwise take gigabytes at once. At test time each row's
        output depends on that row only.
        """
        return np.concatenate(
            [self._output(X[i : i + OUTPUT_ROWS]) for i in range(0, len(X), OUTPUT_ROWS)] or [self._output(X)]
        )

    def _output(self, X: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self.net.config.dtype)
        out = self.net.forward(self.standardizer(X).astype(dtype), training=False)
        if self.task == TASK_CLASSIFICATION:
            return softmax(out)
        assert self.y_mean is not None and self.y_std is not None
        return out * self.y_std + self.y_mean


@dataclass
class TrainResult:
    """What a run produced, self-described: the model, the data it was trained on, its per-epoch history and
    its metrics. :func:`training.export.export` needs nothing else."""

    model: TrainedModel
    data: DataDescription
    split: Split
    held_out: np.ndarray  # (val + test rows, F) raw features, ds.X's type: what export verifies the fold on
    history: list[dict[str, float]]
    best_epoch: int
    metrics: dict[str, dict[str, float]]
    bn_gap: dict[str, Any] = field(default_factory=dict)
    config: TrainConfig = field(default_factory=TrainConfig)
    # (train rows, F) raw features: export records each hidden layer's training distribution on them
    train_rows: np.ndarray | None = None
    #: Classification: per split, the full report (balanced accuracy, macro-F1, ROC AUC, per-class precision
    #: and recall, confusion matrix) of :func:`training.metrics.classification_report`.
    evaluation: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The held-out rows as a client sends them (float32 numbers with NaN, strings with ""), for a CSV
    #: model; ``held_out`` is then their design matrix. None: ``held_out`` is what a client sends.
    held_out_inputs: tuple[np.ndarray, np.ndarray] | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "metrics": self.metrics,
            "evaluation": self.evaluation,
            "bn_gap": self.bn_gap,
            "train_config": asdict(self.config),
            "model_config": self.model.net.config.to_json(),
        }


def batches(n: int, batch_size: int, rng: np.random.Generator, drop_last: bool = False) -> list[np.ndarray]:
    """Shuffled index batches; a short last batch is dropped with ``drop_last``, else kept, and a single
    trailing row is merged into the batch before it (Batch Norm needs 2 rows)."""
    order = rng.permutation(n)
    out = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and len(out[-1]) < batch_size:
        out.pop()
    elif len(out) > 1 and len(out[-1]) == 1:
        last = out.pop()
        out[-1] = np.concatenate([out[-1], last])
    return out


def evaluate(
    model: TrainedModel, X: np.ndarray, y: np.ndarray, class_weights: np.ndarray | None = None
) -> dict[str, float]:
    """Loss and accuracy (classification; the loss weighted as in training when ``class_weights``) or
    RMSE, MAE and R² (regression), at test time."""
    out = model.output(X)
    if model.task == TASK_CLASSIFICATION:
        p = np.clip(out.astype(np.float64), 1e-12, 1.0)
        ce = -np.log(p[np.arange(len(y)), y])
        w = 1.0 if class_weights is None else class_weights[y]
        return {
            "loss": float((w * ce).mean()),
            "accuracy": float((out.argmax(axis=1) == y).mean()),
        }
    err = out.astype(np.float64) - y
    ss_tot = float(((y - y.mean(axis=0)) ** 2).sum())
    mse = float((err**2).mean())
    assert model.y_std is not None
    return {
        "loss": mse / float((model.y_std**2).mean()),  # the standardized MSE the network minimizes
        "rmse": math.sqrt(mse),
        "mae": float(np.abs(err).mean()),
        "r2": 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
    }


def bn_statistics_gap(model: TrainedModel, precise: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """How far the EWMA running statistics are from the precise population ones, per BN layer.

    ``mean_shift``: the largest ``|ewma_mean - precise_mean| / sqrt(precise_var + eps)`` over features;
    ``log_var_ratio``: the largest ``|log(ewma_var / precise_var)|``.
    """
    layers = []
    bns = [b.bn for b in model.net.blocks if b.bn is not None]
    for bn, (mu, var) in zip(bns, precise):
        shift = np.abs(bn.running_mean - mu) / np.sqrt(var + bn.eps)
        ratio = np.abs(np.log((bn.running_var + bn.eps) / (var + bn.eps)))
        layers.append({"mean_shift": float(shift.max()), "log_var_ratio": float(ratio.max())})
    return {
        "layers": layers,
        "max_mean_shift": max((x["mean_shift"] for x in layers), default=0.0),
        "max_log_var_ratio": max((x["log_var_ratio"] for x in layers), default=0.0),
    }


def set_running_statistics(net: MLP, stats: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Overwrite each BN layer's running statistics (in place, in the layer's dtype)."""
    bns = [b.bn for b in net.blocks if b.bn is not None]
    for bn, (mu, var) in zip(bns, stats):
        np.copyto(bn.running_mean, mu)
        np.copyto(bn.running_var, var)


def _progress(row: dict[str, float], epochs: int) -> dict[str, str]:
    """The progress bar's summary of an epoch's history row."""
    shown = {"epoch": f"{int(row['epoch'])}/{epochs}", "loss": f"{row['train_loss']:.4f}"}
    if "val_loss" in row:
        shown["val_loss"] = f"{row['val_loss']:.4f}"
        if "val_accuracy" in row:
            shown["val_acc"] = f"{row['val_accuracy']:.4f}"
        else:
            shown["val_rmse"] = f"{row['val_rmse']:.4g}"
    return shown


@dataclass(frozen=True)
class Step:
    """What the ``on_step`` callback of :func:`train` is given: once before the first step, then after each."""

    step: int  # optimizer steps taken so far (0: before the first)
    epoch: int  # the 1-based epoch of that step (0: before the first)
    loss: float  # that step's training loss on its batch (nan before the first)
    model: TrainedModel  # the model being trained, as it is after that step


# Return True to stop training after this step (the epoch is then validated and the run ends as usual).
OnStep = Callable[[Step], "bool | None"]


class TrainingDiverged(FloatingPointError):
    """An overflow or a NaN during a training step; ``step`` and ``epoch`` say where (1-based)."""

    def __init__(self, message: str, step: int, epoch: int) -> None:
        super().__init__(message)
        self.step = step
        self.epoch = epoch


def train(
    ds: Dataset,
    hidden: tuple[int, ...] = (256, 256),
    activation: str = "relu",
    batchnorm: bool = True,
    bn_momentum: float = 0.9,
    config: TrainConfig | None = None,
    progress: bool = True,
    data_split: Split | None = None,
    on_step: OnStep | None = None,
) -> TrainResult:
    """Train an MLP on ``ds``; fully determined by ``config.seed``.

    ``on_step`` is called before the first step and after every optimizer step (outside the divergence
    check, so it may compute what it likes); returning True stops the run. A split without validation rows
    trains without per-epoch validation, which needs ``config.patience=None`` (no early stopping). Raises
    :class:`TrainingDiverged`.
    """
    cfg = config or TrainConfig()
    seeds = np.random.SeedSequence(cfg.seed).spawn(4)
    rng_split, rng_init, rng_batches, rng_precise = (np.random.default_rng(s) for s in seeds)
    sp = data_split or split(ds, rng_split)
    validate = len(sp.val) > 0
    if not validate and cfg.patience is not None:
        raise ValueError("early stopping needs validation rows: pass patience=None to train without them")
    if cfg.drop_last and len(sp.train) < cfg.batch_size:
        raise ValueError(
            f"drop_last with {len(sp.train)} training rows, fewer than a batch of {cfg.batch_size}"
        )
    ds = ds.fitted(sp.train)  # imputation and categories from the training rows only
    std = Standardizer.fit(ds.X, sp.train)
    mcfg = MLPConfig(
        n_in=ds.X.shape[1],
        n_out=ds.n_outputs,
        hidden=tuple(hidden),
        activation=activation,
        batchnorm=batchnorm,
        bn_momentum=bn_momentum,
    )
    net = MLP(mcfg, rng_init)
    dtype = np.dtype(mcfg.dtype)
    classification = ds.task == TASK_CLASSIFICATION
    model = TrainedModel(net, std, ds.task)
    Xtr = std.apply(ds.X, sp.train, dtype)  # (N, F), without a float64 copy of the table
    ytr = ds.y[sp.train]
    if not classification:
        model.y_mean = ytr.mean(axis=0)
        sd = ytr.std(axis=0)
        model.y_std = np.where(sd < 1e-12, 1.0, sd)
        ytr = ((ytr - model.y_mean) / model.y_std).astype(dtype)
    opt = make_optimizer(cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    class_weights = None
    if classification and cfg.class_weight == "balanced":
        class_weights = balanced_class_weights(ytr, ds.n_outputs).astype(dtype)  # (C,)

    history: list[dict[str, float]] = []
    best = (math.inf, -1)
    best_state = net.state_dict() if cfg.patience is not None else {}
    step = 0
    stop = on_step is not None and bool(on_step(Step(0, 0, math.nan, model)))
    # Counted in rows, so that the bar shows the throughput (rows/s) and moves within a big table's epoch.
    bar = tqdm(
        total=cfg.epochs * len(Xtr),
        desc=f"train {ds.name}",
        unit=" rows",
        unit_scale=True,
        disable=not progress,
        leave=False,
    )
    for epoch in range(cfg.epochs):
        if stop:
            break
        opt.lr = scheduled_lr(cfg.lr, cfg.schedule, epoch, cfg.epochs)
        total_loss, correct, rows = 0.0, 0, 0
        for idx in batches(len(Xtr), cfg.batch_size, rng_batches, cfg.drop_last):
            # An overflow or NaN anywhere means the run diverged: stop at once with a clear message.
            with np.errstate(over="raise", invalid="raise"):
                try:
                    out = net.forward(Xtr[idx], training=True)
                    if classification:
                        weights = None if class_weights is None else class_weights[ytr[idx]]
                        loss, dout = softmax_cross_entropy(out, ytr[idx], weights)
                        correct += int((out.argmax(axis=1) == ytr[idx]).sum())
                    else:
                        loss, dout = mean_squared_error(out, ytr[idx])
                    if not math.isfinite(loss):
                        raise FloatingPointError("non-finite loss")
                    net.backward(dout)
                    opt.step(net)
                except FloatingPointError as exc:
                    raise TrainingDiverged(
                        f"the training diverged at epoch {epoch + 1} ({exc}; lr={opt.lr:g})",
                        step + 1,
                        epoch + 1,
                    ) from None
            step += 1
            total_loss += loss * len(idx)
            rows += len(idx)
            bar.update(len(idx))
            if on_step is not None and on_step(Step(step, epoch + 1, loss, model)):
                stop = True
                break
        row = {"epoch": epoch + 1, "lr": opt.lr, "train_loss": total_loss / rows}
        if classification:
            row["train_accuracy"] = correct / rows
        if validate:
            row.update(
                {f"val_{k}": v for k, v in evaluate(model, ds.X[sp.val], ds.y[sp.val], class_weights).items()}
            )
        history.append(row)
        bar.set_postfix(_progress(row, cfg.epochs))
        if cfg.patience is None:
            best = (math.inf, epoch + 1)  # no early stopping: the last epoch's weights are kept
        elif row["val_loss"] < best[0]:
            best = (row["val_loss"], epoch + 1)
            best_state = net.state_dict()
        elif epoch + 1 - best[1] >= cfg.patience:
            break
    bar.close()
    if cfg.patience is not None:
        net.load_state_dict(best_state)

    gap: dict[str, Any] = {}
    if batchnorm and hidden:
        precise = net.precise_statistics(Xtr, cfg.batch_size, rng_precise)
        gap = bn_statistics_gap(model, precise)
        ewma_state = net.state_dict()
        if validate:
            set_running_statistics(net, precise)
            gap["val_loss_precise"] = evaluate(model, ds.X[sp.val], ds.y[sp.val], class_weights)["loss"]
            net.load_state_dict(ewma_state)
            gap["val_loss_ewma"] = evaluate(model, ds.X[sp.val], ds.y[sp.val], class_weights)["loss"]
        if cfg.bn_stats == "precise":
            set_running_statistics(net, precise)

    metrics = {name: evaluate(model, ds.X[idx], ds.y[idx]) for name, idx in asdict(sp).items() if len(idx)}
    evaluation = {}
    if classification:
        evaluation = {
            name: classification_report(ds.y[idx], model.output(ds.X[idx]), ds.class_labels)
            for name, idx in asdict(sp).items()
            if len(idx) and name != "train"
        }
    rows = np.concatenate([sp.val, sp.test])
    result = TrainResult(
        model,
        DataDescription.of(ds, sp),
        sp,
        ds.X[rows],
        history,
        best[1],
        metrics,
        gap,
        cfg,
        train_rows=ds.X[sp.train],
        evaluation=evaluation,
    )
    if ds.encoder is not None and ds.columns is not None:
        result.held_out_inputs = ds.encoder.raw_inputs(ds.columns, rows)
    return result
