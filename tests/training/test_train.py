"""The training loop: batching, early stopping with best-weights restore, test-time statistics modes."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import load_digits
from training.train import TrainConfig, batches, evaluate, train


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
    with pytest.raises(FloatingPointError, match="diverged"):
        train(
            digits,
            hidden=(8,),
            batchnorm=False,
            activation="relu",
            config=TrainConfig(epochs=5, lr=1e6, optimizer="sgd", weight_decay=0.0),
            progress=False,
        )


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="batch size must be >= 2"):
        TrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="bn-stats"):
        TrainConfig(bn_stats="median")
