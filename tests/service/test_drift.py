"""The covariate-shift monitor against independent truths: the row-by-row EWMA recurrence, PSI by hand,
samples drawn from the training distribution itself, shifted samples, and the digits data."""

from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path

import numpy as np
import pytest

from contract import N_BINS, InputStats
from service.drift import DriftConfig, DriftMonitor, psi, stats_from_sample
from service.metrics import register_drift_gauges

DIGITS = Path(__file__).resolve().parents[2] / "training" / "data" / "digits.csv.gz"
LOGGER = "service.drift"


def reference_stats(x: np.ndarray) -> InputStats:
    """InputStats as the contract defines them, built here independently of service.drift."""
    x = np.asarray(x, dtype=np.float64)
    edges = [np.quantile(col, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]) for col in x.T]
    freqs = [
        [float(np.mean(np.searchsorted(e, col, side="right") == b)) for b in range(N_BINS)]
        for e, col in zip(edges, x.T, strict=True)
    ]
    return InputStats(
        mean=[float(c.mean()) for c in x.T],
        std=[float(c.std()) for c in x.T],
        decile_edges=[e.tolist() for e in edges],
        decile_freqs=freqs,
        rows=len(x),
    )


def names(f: int) -> list[str]:
    return [f"x{j}" for j in range(f)]


def synthetic(rng: np.random.Generator, n: int) -> np.ndarray:
    """Features of several shapes: normal, skewed, uniform, discrete with ties, constant, large offset."""
    return np.column_stack(
        [
            rng.normal(0.0, 1.0, n),
            rng.normal(5.0, 0.1, n),
            rng.exponential(2.0, n),
            rng.uniform(-1.0, 1.0, n),
            rng.poisson(0.7, n).astype(float),
            np.full(n, 3.0),
            rng.normal(1000.0, 10.0, n),
            rng.integers(0, 17, n).astype(float),
        ]
    ).astype(np.float32)


def feed(monitor: DriftMonitor, x: np.ndarray, batch: int) -> None:
    for i in range(0, len(x), batch):
        monitor.update(x[i : i + batch])


@pytest.fixture(scope="module")
def digits() -> tuple[InputStats, np.ndarray, list[str]]:
    """Training statistics from a random 60% of the digits pixels, and the other 40% (held out)."""
    data = np.loadtxt(DIGITS, delimiter=",")
    x = data[:, :64].astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    n_train = int(0.6 * len(x))
    pixel_names = [f"pixel_{i // 8}_{i % 8}" for i in range(64)]
    return reference_stats(x[order[:n_train]]), x[order[n_train:]], pixel_names


def test_stats_from_sample_follows_the_contract() -> None:
    x = synthetic(np.random.default_rng(1), 500)
    mine, ref = stats_from_sample(x), reference_stats(x)
    np.testing.assert_allclose(mine.mean, ref.mean, rtol=1e-12)
    np.testing.assert_allclose(mine.std, ref.std, rtol=1e-12)
    np.testing.assert_allclose(mine.decile_edges, ref.decile_edges, rtol=1e-12)
    np.testing.assert_allclose(mine.decile_freqs, ref.decile_freqs, atol=1e-15)
    # and it round-trips through the contract's validation
    InputStats.from_json(json.loads(json.dumps(mine.to_json())), n_features=x.shape[1])


def test_batched_update_equals_the_row_by_row_recurrence() -> None:
    rng = np.random.default_rng(2)
    x = synthetic(rng, 3000)
    stats = reference_stats(x[:2000])
    live = x[2000:2100] * np.float32(1.1)  # something else than the training sample
    h_mom, h_win = 13.0, 7.0
    monitor = DriftMonitor(stats, names(8), DriftConfig(horizon_rows=h_mom, window_rows=h_win, min_rows=0))
    for size in (1, 5, 17, 2, 40, 35):  # uneven batches, 100 rows in all
        start = monitor.report()["rows_seen"]
        monitor.update(live[start : start + size])

    # Batch Norm's running-statistics recurrence, one row at a time, started at 0 and bias-corrected.
    lam, lam_h = 1 - 1 / h_mom, 1 - 1 / h_win
    m = np.zeros(8)
    q = np.zeros(8)
    hist = np.zeros((8, N_BINS))
    edges = np.asarray(stats.decile_edges)
    for row in live.astype(np.float64):
        m = lam * m + (1 - lam) * row
        q = lam * q + (1 - lam) * row**2
        hist *= lam_h
        for j in range(8):
            hist[j, np.searchsorted(edges[j], row[j], side="right")] += 1 - lam_h
    n = len(live)
    mean = m / (1 - lam**n)
    var = q / (1 - lam**n) - mean**2
    freqs = hist / (1 - lam_h**n)
    w = lam_h ** np.arange(n)
    n_eff = w.sum() ** 2 / (w**2).sum()

    rep = monitor.report()
    assert rep["rows_seen"] == n
    got_mean = np.array([f["mean_live"] for f in rep["features"]])
    got_std = np.array([f["std_live"] for f in rep["features"]])
    np.testing.assert_allclose(got_mean, mean, rtol=1e-9, atol=1e-9)
    # var by E[x^2] - E[x]^2 loses digits at the offset-1000 feature; the monitor's centred form does not
    np.testing.assert_allclose(got_std[:6], np.sqrt(np.maximum(var[:6], 0)), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(rep["rows_effective"], n_eff, rtol=1e-12)
    expected_psi = psi(freqs, np.asarray(stats.decile_freqs), monitor.config.psi_epsilon)
    np.testing.assert_allclose([f["psi"] for f in rep["features"]], expected_psi, rtol=1e-9, atol=1e-12)


def test_psi_by_hand() -> None:
    # (0.2 - 0.5) ln(0.2 / 0.5) + (0.8 - 0.5) ln(0.8 / 0.5) = 0.3 ln 4
    assert psi(np.array([[0.2, 0.8]]), np.array([[0.5, 0.5]]), epsilon=0.0)[0] == pytest.approx(
        0.3 * math.log(4), rel=1e-12
    )
    assert psi(np.array([[0.3, 0.7]]), np.array([[0.3, 0.7]]))[0] == 0.0
    # A bin empty in training stays finite thanks to the smoothing: p -> (p + e) / (1 + 2e)
    e = 1e-4
    p0, p1, q0, q1 = (0.1 + e) / (1 + 2 * e), (0.9 + e) / (1 + 2 * e), e / (1 + 2 * e), (1 + e) / (1 + 2 * e)
    by_hand = (p0 - q0) * math.log(p0 / q0) + (p1 - q1) * math.log(p1 / q1)
    assert psi(np.array([[0.1, 0.9]]), np.array([[0.0, 1.0]]), epsilon=e)[0] == pytest.approx(
        by_hand, rel=1e-12
    )


def test_monitor_psi_and_bins_by_hand() -> None:
    # One feature, edges 1..9, uniform training deciles. Every live row at 3.0, exactly on an edge: with
    # side="right" it falls in bin 3, so the live histogram is one-hot there.
    stats = InputStats(
        mean=[5.0],
        std=[2.0],
        decile_edges=[[1.0, 2, 3, 4, 5, 6, 7, 8, 9]],
        decile_freqs=[[0.1] * 10],
        rows=10,
    )
    monitor = DriftMonitor(stats, ["a"], DriftConfig(min_rows=0))
    feed(monitor, np.full((50, 1), 3.0, dtype=np.float32), batch=7)
    e = monitor.config.psi_epsilon
    hit, miss, q = (1 + e) / (1 + 10 * e), e / (1 + 10 * e), (0.1 + e) / (1 + 10 * e)
    by_hand = (hit - q) * math.log(hit / q) + 9 * (miss - q) * math.log(miss / q)
    rep = monitor.report()
    assert rep["features"][0]["psi"] == pytest.approx(by_hand, rel=1e-9)
    assert rep["score"] == pytest.approx(by_hand, rel=1e-9)
    assert rep["features"][0]["mean_shift"] == pytest.approx(1.0, rel=1e-12)  # |3 - 5| / 2


def test_float32_rows_fall_in_the_float64_bins() -> None:
    # float32(0.7) = 0.69999999 < 0.7: a comparison against float32(edges) would put it on the wrong side.
    edges = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    train = np.arange(1, N_BINS + 1) / 55.0  # unequal, so that each bin gives its own PSI
    stats = InputStats(mean=[0.5], std=[0.3], decile_edges=[edges], decile_freqs=[train.tolist()], rows=10)
    values = np.array([0.1, 0.3, 0.7, 0.7000001, 0.9, 1.0], dtype=np.float32)
    for v in values:
        mon32 = DriftMonitor(stats, ["a"], DriftConfig(min_rows=0))
        mon64 = DriftMonitor(stats, ["a"], DriftConfig(min_rows=0))
        mon32.update(np.array([[v]], dtype=np.float32))
        mon64.update(np.array([[v]], dtype=np.float64))
        expected_bin = int(np.searchsorted(edges, np.float64(v), side="right"))
        live = np.full((1, N_BINS), 0.0)
        live[0, expected_bin] = 1.0
        expected = psi(live, train[None, :])[0]
        assert mon32.report()["score"] == pytest.approx(expected, rel=1e-9), v
        assert mon64.report()["score"] == pytest.approx(expected, rel=1e-9), v


def test_before_any_row_everything_is_zero() -> None:
    x = synthetic(np.random.default_rng(3), 1000)
    rep = DriftMonitor(reference_stats(x), names(8)).report()
    assert rep["rows_seen"] == 0 and rep["rows_effective"] == 0.0 and rep["score"] == 0.0
    assert rep["drifting"] is False and rep["top_features"] == []
    assert all(f["psi"] == 0.0 and f["mean_shift"] == 0.0 and f["mean_live"] is None for f in rep["features"])
    json.dumps(rep, allow_nan=False)


def test_no_drift_on_the_training_distribution() -> None:
    rng = np.random.default_rng(4)
    stats = reference_stats(synthetic(rng, 20000))
    monitor = DriftMonitor(stats, names(8))
    feed(monitor, synthetic(rng, 3000), batch=32)
    rep = monitor.report()
    assert rep["rows_seen"] == 3000
    # PSI's small-sample bias is ~ 9 / rows_effective ~ 0.005 per feature
    assert rep["score"] < 0.05, rep["top_features"]
    assert not rep["drifting"]
    assert max(f["mean_shift"] for f in rep["features"]) < 0.15


def test_shifted_features_are_named_first(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(5)
    stats = reference_stats(synthetic(rng, 20000))
    monitor = DriftMonitor(stats, names(8), DriftConfig(top_k=3))
    live = synthetic(rng, 2000)
    live[:, 0] += 1.0  # one training std
    live[:, 3] *= 0.3  # same mean, narrower: only PSI sees it
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        feed(monitor, live, batch=50)
    rep = monitor.report()
    assert rep["drifting"] and rep["score"] > 0.25
    assert {f["name"] for f in rep["top_features"][:2]} == {"x0", "x3"}
    by_name = {f["name"]: f for f in rep["features"]}
    assert by_name["x0"]["mean_shift"] == pytest.approx(1.0, abs=0.1)
    assert by_name["x3"]["mean_shift"] < 0.1
    assert by_name["x3"]["std_live"] == pytest.approx(0.3 * 2 / math.sqrt(12), rel=0.1)
    assert all(f["psi"] < 0.05 for f in rep["features"] if f["name"] not in ("x0", "x3"))
    assert "x0" in caplog.text and "x3" in caplog.text


def test_features_constant_in_training_stay_finite() -> None:
    rng = np.random.default_rng(6)
    stats = reference_stats(synthetic(rng, 5000))
    assert stats.std[5] == 0.0
    monitor = DriftMonitor(stats, names(8))
    same = synthetic(rng, 500)
    feed(monitor, same, batch=20)
    const = monitor.report()["features"][5]
    assert const["mean_shift"] == 0.0 and const["psi"] == pytest.approx(0.0, abs=1e-12)
    moved = synthetic(rng, 500)
    moved[:, 5] = 4.0
    monitor.reset()
    feed(monitor, moved, batch=20)
    rep = monitor.report()
    json.dumps(rep, allow_nan=False)
    const = rep["features"][5]
    assert const["mean_shift"] == pytest.approx(1.0 / monitor.config.std_floor, rel=1e-9)
    assert math.isfinite(const["psi"])


def test_warning_once_per_crossing_and_reset(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(7)
    stats = reference_stats(synthetic(rng, 20000))
    cfg = DriftConfig(horizon_rows=100, window_rows=100, min_rows=50, check_every_rows=10)
    monitor = DriftMonitor(stats, names(8), cfg, name="m")
    shifted = synthetic(rng, 600)
    shifted[:, 2] += 5.0
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        feed(monitor, shifted, batch=10)
        for _ in range(5):
            monitor.report()
        assert len(caplog.records) == 1, caplog.text
        assert "model 'm'" in caplog.text and "x2" in caplog.text
        # back to normal: the score falls under rearm_ratio * threshold and the warning re-arms
        feed(monitor, synthetic(rng, 1500), batch=10)
        assert monitor.report()["score"] < cfg.rearm_ratio * cfg.threshold
        feed(monitor, shifted, batch=10)
        assert len(caplog.records) == 2
        # reset forgets the rows and re-arms at once
        monitor.reset()
        rep = monitor.report()
        assert (
            rep["rows_seen"] == 0
            and rep["score"] == 0.0
            and not rep["drifting"]
            and rep["top_features"] == []
        )
        feed(monitor, shifted, batch=10)
        assert len(caplog.records) == 3
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_too_few_rows_never_drift() -> None:
    rng = np.random.default_rng(8)
    stats = reference_stats(synthetic(rng, 5000))
    monitor = DriftMonitor(stats, names(8), DriftConfig(min_rows=200))
    wild = synthetic(rng, 150) + 100
    feed(monitor, wild, batch=10)
    rep = monitor.report()
    assert rep["score"] > 1 and rep["rows_effective"] < 200 and not rep["drifting"]


def test_bad_input() -> None:
    rng = np.random.default_rng(9)
    monitor = DriftMonitor(reference_stats(synthetic(rng, 1000)), names(8))
    with pytest.raises(ValueError, match=r"expected a batch of shape \(n, 8\), got \(3, 7\)"):
        monitor.update(np.zeros((3, 7), np.float32))
    x = synthetic(rng, 4)
    x[1, 2] = np.nan
    x[3, 0] = np.inf
    monitor.update(x)
    rep = monitor.report()
    assert rep["rows_seen"] == 2 and rep["rows_nonfinite"] == 2
    json.dumps(rep, allow_nan=False)
    with pytest.raises(ValueError, match="horizon_rows"):
        DriftConfig(horizon_rows=0.5)
    with pytest.raises(
        ValueError, match=r"input_stats.mean: expected shape \(9,\) for 9 features, got \(8,\)"
    ):
        DriftMonitor(reference_stats(synthetic(rng, 100)), [*names(7), "a", "b"])


def test_concurrent_updates_lose_nothing() -> None:
    rng = np.random.default_rng(10)
    x = synthetic(rng, 4000)
    # A horizon far beyond the stream makes the EWMA the plain mean, whatever order the batches land in.
    monitor = DriftMonitor(reference_stats(x), names(8), DriftConfig(horizon_rows=1e12, window_rows=1e12))
    chunks = np.array_split(x, 8)

    def work(chunk: np.ndarray) -> None:
        sizes = np.random.default_rng(len(chunk)).integers(1, 20, 1000)
        start = 0
        for s in sizes:
            if start >= len(chunk):
                break
            monitor.update(chunk[start : start + s])
            start += s
        monitor.update(chunk[start:])

    threads = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rep = monitor.report()
    assert rep["rows_seen"] == len(x)
    np.testing.assert_allclose(
        [f["mean_live"] for f in rep["features"]], x.astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-6
    )
    assert rep["score"] < 1e-6  # the same rows as the training statistics


def test_digits_held_out_rows_stay_under_the_threshold(digits) -> None:
    stats, held_out, pixel_names = digits
    monitor = DriftMonitor(stats, pixel_names, name="digits")
    feed(monitor, held_out, batch=8)
    rep = monitor.report()
    assert rep["rows_seen"] == len(held_out)
    assert rep["score"] < 0.5 * rep["threshold"], rep["top_features"]
    assert not rep["drifting"]


@pytest.mark.parametrize(
    ("shift", "direction"),
    [
        pytest.param(lambda x: np.minimum(x * 1.5, 16), 1, id="brighter"),
        pytest.param(lambda x: 16 - x, 0, id="inverted"),
    ],
)
def test_digits_shifted_rows_cross_the_threshold(
    digits, shift, direction, caplog: pytest.LogCaptureFixture
) -> None:
    stats, held_out, pixel_names = digits
    monitor = DriftMonitor(stats, pixel_names, name="digits")
    feed(monitor, held_out, batch=8)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        feed(monitor, shift(held_out).astype(np.float32), batch=8)
    rep = monitor.report()
    assert rep["drifting"] and rep["score"] > 2 * rep["threshold"]
    top = rep["top_features"]
    assert len(top) == monitor.config.top_k
    # the named features are ones that moved: their live mean is away from the training mean (brighter: up),
    # on a window that still holds about a third of unshifted rows
    for f in top:
        assert f["psi"] > rep["threshold"]
        assert f["mean_shift"] > 0.2, f
        if direction:
            assert f["mean_live"] > f["mean_train"], f
    assert len(caplog.records) == 1 and top[0]["name"] in caplog.text


def test_prometheus_gauges(digits) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    stats, held_out, pixel_names = digits
    monitor = DriftMonitor(stats, pixel_names, name="digits")
    registry = CollectorRegistry(auto_describe=True)
    register_drift_gauges(registry, lambda: {"digits": monitor})
    feed(monitor, 16 - held_out, batch=64)
    rep = monitor.report()
    text = generate_latest(registry).decode()
    assert f'bnserve_drift_score{{model="digits"}} {rep["score"]!r}' in text
    assert 'bnserve_drift_drifting{model="digits"} 1.0' in text
    assert f'bnserve_drift_rows_seen{{model="digits"}} {float(len(held_out))!r}' in text
    name = rep["top_features"][0]["name"]
    assert f'bnserve_drift_feature_psi{{feature="{name}",model="digits"}}' in text


def _update_in_another_process(path: str, stats: InputStats, x: np.ndarray) -> None:
    DriftMonitor(stats, names(x.shape[1]), shared=Path(path)).update(x)


def test_a_shared_file_gives_one_estimate_across_processes(tmp_path: Path) -> None:
    """Rows served by another process and by this one add up to what one monitor seeing all of them reports."""
    import multiprocessing

    rng = np.random.default_rng(7)
    stats = reference_stats(synthetic(rng, 2000))
    first, second = synthetic(rng, 300) + 0.5, synthetic(rng, 200)
    path = tmp_path / "digits-1.drift"
    here = DriftMonitor(stats, names(8), shared=path)
    worker = multiprocessing.get_context("spawn").Process(
        target=_update_in_another_process, args=(str(path), stats, first)
    )
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0
    here.update(second)
    alone = DriftMonitor(stats, names(8))
    alone.update(first)
    alone.update(second)
    got, expected = here.report(), alone.report()
    assert got["rows_seen"] == 500
    for key in ("score", "rows_effective", "rows_effective_moments"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12)
    for a, b in zip(got["features"], expected["features"], strict=True):
        assert a["psi"] == pytest.approx(b["psi"], rel=1e-12, abs=1e-15)
        assert a["mean_live"] == pytest.approx(b["mean_live"], rel=1e-12)
    # A reset through one monitor is seen by every other one on the file.
    DriftMonitor(stats, names(8), shared=path).reset()
    assert here.report()["rows_seen"] == 0


def test_the_report_rounds_away_float_noise() -> None:
    # One feature whose training mean is 0.1 + 0.2 (0.30000000000000004 in float64) and whose live rows are
    # all 0.1 + 0.2 too: the report reads 0.3 for both, and no shift at all.
    noisy = 0.1 + 0.2
    stats = InputStats([noisy], [1.0], [[float(k) for k in range(9)]], [[0.1] * N_BINS], 10)
    monitor = DriftMonitor(stats, ["x"])
    monitor.update(np.full((3, 1), noisy))
    feature = monitor.report()["features"][0]
    assert feature["mean_train"] == 0.3 and feature["mean_live"] == 0.3
    assert feature["mean_shift"] == 0.0 and feature["std_live"] == 0.0
