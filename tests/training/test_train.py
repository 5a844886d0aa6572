"""The training loop: batching, early stopping with best-weights restore, test-time statistics modes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.data import Split, load_digits
from training.train import Step, TrainConfig, TrainingDiverged, batches, evaluate, train


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.mark.parametrize(
    ("n", "size", "expected"), [(129, 64, [64, 65]), (128, 64, [64, 64]), (130, 64, [64, 64, 2])]
)
def test_batches_never_hold_a_single_row(n, size, expected):
    got = batches(n, size, np.random.default_rng(0))
    assert [len(b) for b in got] == expected
    assert sorted(np.concatenate(got).tolist()) == list(range(n))


def test_drop_last_keeps_full_batches_only():
    got = batches(130, 64, np.random.default_rng(0), drop_last=True)
    assert [len(b) for b in got] == [64, 64]
    # the same shuffle as without drop_last: only the short tail goes
    kept = batches(130, 64, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(got, kept))


def test_the_step_callback_sees_every_step_and_can_stop_the_run(digits):
    seen: list[tuple[int, int, float]] = []
    losses: list[float] = []
    weights: list[np.ndarray] = []

    def on_step(s: Step) -> bool:
        seen.append((s.step, s.epoch, s.loss))
        weights.append(s.model.net.head.W.copy())  # the live model: each step has moved it
        if s.step:
            losses.append(s.loss)
        return s.step == 30

    cfg = TrainConfig(epochs=5, batch_size=64, patience=None, seed=3)
    res = train(digits, hidden=(16,), config=cfg, progress=False, on_step=on_step)
    n_train = len(res.split.train)
    per_epoch = len(batches(n_train, 64, np.random.default_rng(0)))
    assert [s for s, _, _ in seen] == list(range(31))  # once before the first step, then after each
    assert seen[0][1] == 0 and np.isnan(seen[0][2])
    assert [e for _, e, _ in seen[1:]] == [1 + (k - 1) // per_epoch for k in range(1, 31)]
    # stopped inside epoch 2: that epoch is still validated and recorded, the last weights are kept
    assert len(res.history) == 2 and res.best_epoch == 2
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(weights))
    assert np.array_equal(weights[-1], res.model.net.head.W)
    # epoch 2's training loss is the mean over the full batches it ran before the stop
    assert res.history[1]["train_loss"] == pytest.approx(np.mean(losses[per_epoch:30]), rel=1e-12)
    assert evaluate(res.model, digits.X[res.split.val], digits.y[res.split.val])["loss"] == pytest.approx(
        res.history[-1]["val_loss"]
    )


def test_training_without_validation_rows_needs_no_early_stopping(digits):
    rows = np.arange(len(digits.X))
    sp = Split(train=rows[:1200], val=rows[:0], test=rows[1200:])
    res = train(
        digits, hidden=(8,), config=TrainConfig(epochs=2, patience=None), progress=False, data_split=sp
    )
    assert "val_loss" not in res.history[0] and set(res.metrics) == {"train", "test"}
    assert "val_loss_ewma" not in res.bn_gap and res.bn_gap["max_mean_shift"] >= 0
    with pytest.raises(ValueError, match="early stopping needs validation rows"):
        train(digits, hidden=(8,), config=TrainConfig(epochs=2), progress=False, data_split=sp)


def test_early_stopping_restores_the_best_weights(digits):
    res = train(
        digits, hidden=(16,), config=TrainConfig(epochs=30, patience=3, lr=0.05, seed=2), progress=False
    )
    losses = [h["val_loss"] for h in res.history]
    assert res.best_epoch == int(np.argmin(losses)) + 1
    assert len(res.history) <= 30
    # the restored network scores exactly the best epoch's validation loss
    assert evaluate(res.model, digits.X[res.split.val], digits.y[res.split.val])["loss"] == pytest.approx(
        min(losses)
    )
    assert {"epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= res.history[
        0
    ].keys()


def test_precise_mode_installs_population_statistics(digits):
    cfg = dict(hidden=(32, 16), progress=False)
    ewma = train(digits, config=TrainConfig(epochs=3, seed=4), **cfg)
    precise = train(digits, config=TrainConfig(epochs=3, seed=4, bn_stats="precise"), **cfg)
    # same weights (same seed), different running statistics; the gap was measured in both
    assert np.array_equal(ewma.model.net.head.W, precise.model.net.head.W)
    bn_e, bn_p = ewma.model.net.blocks[0].bn, precise.model.net.blocks[0].bn
    assert not np.allclose(bn_e.running_mean, bn_p.running_mean)
    assert ewma.bn_gap["max_mean_shift"] == pytest.approx(precise.bn_gap["max_mean_shift"])
    assert precise.bn_gap["val_loss_precise"] == pytest.approx(precise.metrics["val"]["loss"], rel=1e-5)
    assert ewma.bn_gap["val_loss_ewma"] == pytest.approx(ewma.metrics["val"]["loss"], rel=1e-5)


def test_a_diverging_run_stops_with_a_clear_error(digits):
    with pytest.raises(FloatingPointError, match="diverged") as info:
        train(
            digits,
            hidden=(8,),
            batchnorm=False,
            activation="relu",
            config=TrainConfig(epochs=5, lr=1e6, optimizer="sgd", weight_decay=0.0),
            progress=False,
        )
    assert isinstance(info.value, TrainingDiverged) and info.value.step >= 1 and info.value.epoch >= 1


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="batch size must be >= 2"):
        TrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="bn-stats"):
        TrainConfig(bn_stats="median")


def test_the_progress_bar_counts_rows_and_shows_their_rate(digits, capsys):
    res = train(digits, hidden=(8,), config=TrainConfig(epochs=2, batch_size=256), progress=True)
    bar = capsys.readouterr().err.replace("\r", "\n")
    n_train = len(res.split.train)
    assert "rows/s" in bar
    assert f"/{2 * n_train / 1000:.2f}k [" in bar  # the total: every training row, once per epoch


def test_predictions_in_chunks_equal_one_pass(digits, monkeypatch):
    from training import train as T

    res = train(digits, hidden=(16,), config=TrainConfig(epochs=1), progress=False)
    X = digits.X[:700]
    whole = T.softmax(res.model.net.forward(res.model.standardizer(X).astype(np.float32), training=False))
    monkeypatch.setattr(T, "OUTPUT_ROWS", 64)  # 11 chunks, the last one short
    chunked = res.model.output(X)
    assert chunked.shape == (700, 10)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-7)
    assert res.model.output(X[:0]).shape == (0, 10)
