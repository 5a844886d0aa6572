"""Hidden-layer drift and the live-input sample, on a model exported with hidden statistics."""

from __future__ import annotations

import csv
import io
import logging

import numpy as np
import pytest

from service.drift import DriftConfig
from service.hidden_drift import ModelDriftMonitor
from service.metrics import register_drift_gauges
from service.runtime import load_model
from service.sample import Reservoir


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small digits model exported by the training side (hidden statistics and hidden outputs included)."""
    from training.data import load_digits
    from training.export import export
    from training.train import TrainConfig, train

    ds = load_digits()
    res = train(ds, hidden=(32, 32), config=TrainConfig(epochs=10, seed=0), progress=False)
    repo = tmp_path_factory.mktemp("models")
    rep = export(res, repo, "digits")
    return load_model("digits", 1, rep.path), ds, res.split


def stream(monitor: ModelDriftMonitor, X: np.ndarray, batch: int = 16) -> dict:
    for i in range(0, len(X), batch):
        monitor.update(X[i : i + batch].astype(np.float32))
    return monitor.report()


def test_runtime_loads_hidden_outputs_but_predicts_only_the_client_outputs(exported):
    model, ds, _ = exported
    assert model.output_names == ("probabilities", "label")
    out = model.predict(ds.X[:3].astype(np.float32))
    assert set(out) == {"probabilities", "label"}
    hidden = model.hidden_outputs(ds.X[:3].astype(np.float32))
    assert [h.shape for h in hidden] == [(3, 32), (3, 32)]


def test_shifted_stream_raises_the_layer_scores_and_held_out_does_not(exported, caplog):
    model, ds, sp = exported
    cfg = DriftConfig(min_rows=100)
    held_out = ds.X[np.concatenate([sp.val, sp.test])]  # 538 rows never used for the statistics
    calm = stream(
        ModelDriftMonitor(model.contract, cfg, name="digits/1", hidden_outputs=model.hidden_outputs), held_out
    )
    with caplog.at_level(logging.WARNING):
        shifted = stream(
            ModelDriftMonitor(model.contract, cfg, name="digits/1", hidden_outputs=model.hidden_outputs),
            np.clip(held_out * 1.5, 0, 16),
        )
    assert [layer["name"] for layer in calm["layers"]] == ["layer0", "layer1"]
    for c, s in zip(calm["layers"], shifted["layers"], strict=True):
        assert c["units"] == 32 and c["output"] == f"{c['name']}.z"
        assert not c["drifting"] and c["score"] < cfg.threshold
        assert s["drifting"] and s["score"] > cfg.threshold > 2 * c["score"]
        assert len(s["top_units"]) == cfg.top_k and s["top_units"][0]["name"].startswith(c["name"] + ".")
    assert shifted["rows_seen"] == calm["rows_seen"] == len(held_out)
    assert "layer0" in caplog.text


def test_layer_gauges_and_reset(exported):
    from prometheus_client import CollectorRegistry, generate_latest

    model, ds, _ = exported
    monitor = ModelDriftMonitor(model.contract, name="digits/1", hidden_outputs=model.hidden_outputs)
    stream(monitor, np.clip(ds.X[:400] * 1.5, 0, 16))
    registry = CollectorRegistry()
    register_drift_gauges(registry, lambda: {("digits", "1"): monitor}, labels=("model", "version"))
    text = generate_latest(registry).decode()
    score = monitor.report()["layers"][1]["score"]
    assert f'bnserve_drift_layer_score{{layer="layer1",model="digits",version="1"}} {score}' in text
    monitor.reset()
    rep = monitor.report()
    assert rep["rows_seen"] == 0 and all(layer["score"] == 0 for layer in rep["layers"])


def test_without_hidden_outputs_it_is_the_input_monitor(exported):
    model, ds, _ = exported
    monitor = ModelDriftMonitor(model.contract, name="digits/1")
    rep = stream(monitor, ds.X[:100])
    assert rep["layers"] == [] and rep["rows_seen"] == 100


def test_reservoir_is_uniform_and_bounded():
    """Every row of the stream ends up in the sample with probability capacity / rows (binomial check)."""
    k, n, trials = 10, 100, 2000
    counts = np.zeros(n)
    for seed in range(trials):
        r = Reservoir(k, 1, seed=seed)
        for start in range(0, n, 7):  # uneven batches
            r.update(np.arange(start, min(start + 7, n), dtype=np.float32)[:, None])
        kept = r.rows()[:, 0].astype(int)
        assert len(kept) == k and len(set(kept)) == k
        counts[kept] += 1
    p = k / n
    sd = np.sqrt(trials * p * (1 - p))
    assert np.abs(counts - trials * p).max() < 5 * sd  # 5 sigma over 100 rows: fails by chance ~1e-4


def test_reservoir_csv_round_trips_and_drops_non_finite():
    r = Reservoir(5, 2, seed=0)
    r.update(np.array([[1.5, 2.0], [np.nan, 1.0], [0.1, -3.25]], dtype=np.float32))
    assert r.seen == 2
    text = r.to_csv(["a", "b"])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [["a", "b"], ["1.5", "2.0"], ["0.1", "-3.25"]]
    assert np.float32(rows[2][0]) == np.float32(0.1)
    r.reset()
    assert r.rows().shape == (0, 2)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        r.update(np.zeros((1, 3)))


def test_workers_share_the_layer_statistics(exported, tmp_path):
    """Two monitors on one state file (two workers) see each other's rows, hidden layers included."""
    model, ds, _ = exported
    path = tmp_path / "digits-1.drift"
    a = ModelDriftMonitor(model.contract, name="digits/1", hidden_outputs=model.hidden_outputs, shared=path)
    b = ModelDriftMonitor(model.contract, name="digits/1", hidden_outputs=model.hidden_outputs, shared=path)
    a.update(ds.X[:30].astype(np.float32))
    b.update(ds.X[30:50].astype(np.float32))
    ra, rb = a.report(), b.report()
    assert ra["rows_seen"] == rb["rows_seen"] == 50
    assert [layer["score"] for layer in ra["layers"]] == [layer["score"] for layer in rb["layers"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "digits-1.drift",
        "digits-1.drift.layer0",
        "digits-1.drift.layer1",
    ]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_row_budget_takes_every_row_below_its_rate_and_a_uniform_sample_above() -> None:
    from service.hidden_drift import RowBudget

    clock = FakeClock()
    budget = RowBudget(100.0, clock=clock)
    assert budget.take(60) is None  # within the first second's 100 rows: all of them
    rows = budget.take(60)  # 40 left
    assert rows is not None and len(rows) == 40 and np.all(np.diff(rows) > 0) and rows.max() < 60
    assert len(budget.take(10)) == 0  # spent
    clock.now += 0.5  # half a second refills 50 rows
    assert len(budget.take(80)) == 50
    clock.now += 10  # an idle spell refills one second's worth, not more
    assert len(budget.take(500)) == 100
    assert RowBudget(0.0, clock=clock).take(10**6) is None  # no budget: every row
    # Uniform within a batch: over many draws every position is taken about equally often.
    seen = np.zeros(50)
    sampler = RowBudget(10.0, clock=clock)
    for _ in range(2000):
        clock.now += 1
        seen[sampler.take(50)] += 1
    assert seen.sum() == 2000 * 10 and np.all(np.abs(seen / 2000 - 0.2) < 0.05)


def test_hidden_layers_see_the_budgeted_rows_and_the_inputs_every_row(exported) -> None:
    runtime, ds, _ = exported
    clock = FakeClock()
    monitor = ModelDriftMonitor(runtime.contract, DriftConfig(), layers=True, layer_rows_per_second=50.0)
    monitor.layer_budget._clock = clock  # the budget's own clock, stepped by the test
    monitor.layer_budget._last = clock.now
    x = ds.X[:120].astype(np.float32)
    layers = runtime.hidden_outputs(x)
    monitor.update_layers(x, layers)
    report = monitor.report()
    assert report["rows_seen"] == 120  # the inputs: every row
    assert [layer["rows_seen"] for layer in report["layers"]] == [50, 50]
    # Every layer got the same 50 rows: a monitor fed those rows by hand agrees exactly.
    rows = np.random.default_rng(0).permutation(120)[:50]  # the budget's own draw (seed 0)
    by_hand = ModelDriftMonitor(runtime.contract, DriftConfig(), layers=True)
    for layer, z in zip(by_hand.layers, layers, strict=True):
        layer.monitor.update(z[np.sort(rows)])
    assert [layer["score"] for layer in by_hand.report()["layers"]] == [
        layer["score"] for layer in report["layers"]
    ]
