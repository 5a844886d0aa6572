"""One experiment run on a tiny budget: the data, reproducibility, the test-time modes, the EWMA trackers, the
shift measures against their closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.data import load_mnist1d, prepare
from experiments.runs import (
    Budget,
    EWMAStatistics,
    accuracy_in_batches,
    covariate_shift_index,
    forward_batch_statistics,
    scale_drift,
    train_run,
)
from training.network import MLP, MLPConfig
from training.train import set_running_statistics

TINY = Budget(
    steps=20,
    eval_every=10,
    hidden=(8, 8),
    lrs=(0.1,),
    seeds=(0,),
    datasets=("digits",),
    activations=("relu",),
)


def test_bundled_mnist1d_is_the_published_default_split():
    X, y = load_mnist1d()
    assert X.shape == (5000, 40) and y.shape == (5000,)
    assert np.isfinite(X).all()
    assert sorted(set(y.tolist())) == list(range(10))
    # The generator centres and scales the whole data set to mean 0, std 1 (kept to 4 significant digits).
    assert abs(X.mean()) < 1e-3 and abs(X.std() - 1.0) < 1e-3
    d = prepare("mnist1d")
    assert d.Xtr.shape == (4000, 40) and d.Xte.shape == (1000, 40)


def test_runs_are_reproducible_and_seeds_differ():
    data = prepare("digits")
    a = train_run(data, "relu", True, 0.1, 0, TINY, score_test_time=True)
    b = train_run(data, "relu", True, 0.1, 0, TINY, score_test_time=True)
    c = train_run(data, "relu", True, 0.1, 1, TINY, score_test_time=True)
    assert a.test_accuracy == b.test_accuracy and a.unit_percentiles == b.unit_percentiles
    assert a.test_time == b.test_time
    assert a.unit_percentiles != c.unit_percentiles


def test_frozen_statistics_do_not_depend_on_the_batch_but_batch_statistics_do():
    data = prepare("digits")
    r = train_run(data, "sigmoid", True, 0.1, 0, TINY, score_test_time=True)
    for mode in ("EWMA 0.9", "EWMA 0.99", "precise"):
        accs = set(r.test_time[mode].values())
        assert len(accs) == 1, (mode, r.test_time[mode])
    # One row: variance 0, so every BN output is beta and every input gets the same class.
    net = MLP(MLPConfig(n_in=64, n_out=10, hidden=(8, 8)), np.random.default_rng(0))
    for b in net.blocks:
        assert b.bn is not None
        b.bn.beta[:] = np.random.default_rng(1).standard_normal(8)
    single = np.stack([forward_batch_statistics(net, data.Xte[i : i + 1])[0][0] for i in range(5)])
    np.testing.assert_allclose(single, np.broadcast_to(single[0], single.shape), rtol=0, atol=1e-6)
    assert np.isfinite(single).all()
    chance_like = accuracy_in_batches(net, data.Xte, data.yte, 1, batch_stats=True)
    assert chance_like == pytest.approx(float((data.yte == single[0].argmax()).mean()))


def test_ewma_tracker_matches_batchnorm_own_running_average():
    """A tracker fed the exact batch statistics equals BatchNorm's own running buffers with that momentum."""
    rng = np.random.default_rng(0)
    cfg = dict(n_in=5, n_out=3, hidden=(4,), dtype="float64")
    own = MLP(MLPConfig(**cfg, bn_momentum=0.9), np.random.default_rng(2))
    probe = MLP(MLPConfig(**cfg, bn_momentum=0.0), np.random.default_rng(2))
    tracker = EWMAStatistics(probe, 0.9)
    for _ in range(7):
        x = rng.standard_normal((6, 5))
        own.forward(x, training=True)
        probe.forward(x, training=True)
        bn = probe.blocks[0].bn
        assert bn is not None
        tracker.update([(bn.running_mean.copy(), bn.running_var.copy())])
    bn_own = own.blocks[0].bn
    assert bn_own is not None
    np.testing.assert_allclose(tracker.stats[0][0], bn_own.running_mean, rtol=1e-12)
    np.testing.assert_allclose(tracker.stats[0][1], bn_own.running_var, rtol=1e-12)
    set_running_statistics(probe, tracker.stats)
    x = rng.standard_normal((3, 5))
    np.testing.assert_allclose(probe.forward(x, training=False), own.forward(x, training=False), rtol=1e-12)


def test_covariate_shift_index_closed_form():
    spreads = np.full((4, 2), 2.0)
    still = np.zeros((4, 2))
    assert covariate_shift_index(still, spreads) == 0.0
    moving = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [2.0, 0.0]])  # unit 0: std 1, unit 1: std 0
    assert covariate_shift_index(moving, spreads) == pytest.approx((1.0 / 2.0 + 0.0) / 2)


def test_scale_drift_closed_form():
    assert scale_drift(np.full((4, 2), 3.0)) == 0.0
    doubling = np.array([[1.0, 5.0], [2.0, 5.0], [1.0, 5.0], [2.0, 5.0]])  # ln-std of unit 0: ln(2) / 2
    assert scale_drift(doubling) == pytest.approx((math.log(2.0) / 2 + 0.0) / 2)
