"""The drift monitor wired into the service, over the real committed digits model.

The held-out rows are the committed model's own test split, reproduced as ``training/train.py`` draws it
(the first of ``SeedSequence(0).spawn(4)``); its training statistics travel in the model's metadata. Rows go
through V2 inference in requests of a few rows, and the drift report is read back over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.drift import DriftConfig
from service.runtime import ModelRuntime
from service.settings import SettingsError, load_settings
from tests.service.conftest import settings_for
from training.data import load_digits, split

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "models" / "digits" / "1" / "model.onnx"
DRIFT = "/v2/models/digits/drift"
RESET = "/v2/models/digits/drift/reset"
KEY = "drift-key"
BATCH = 4  # rows per inference request


@dataclass(frozen=True)
class Digits:
    root: Path  # a model repository holding only the committed digits model
    held_out: np.ndarray  # (269, 64) float32: the committed model's test split
    train_mean: np.ndarray  # (64,) of its training split


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    return committed_digits(tmp_path_factory.mktemp("committed"))


def committed_digits(root: Path) -> Digits:
    """A repository under ``root`` holding only the committed digits model, and its held-out rows."""
    (root / "digits" / "1").mkdir(parents=True)
    shutil.copyfile(COMMITTED, root / "digits" / "1" / "model.onnx")
    ds = load_digits()
    rng_split = np.random.default_rng(np.random.SeedSequence(0).spawn(4)[0])
    sp = split(ds, rng_split)
    return Digits(root, ds.X[sp.test].astype(np.float32), ds.X[sp.train].mean(axis=0))


@pytest.fixture
def client(digits: Digits) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(digits.root, access_log=False))) as c:
        yield c


def send(client: TestClient, rows: np.ndarray, headers: dict[str, str] | None = None) -> None:
    """Serve ``rows`` through V2 inference, ``BATCH`` rows per request, in order."""
    for i in range(0, len(rows), BATCH):
        chunk = rows[i : i + BATCH]
        tensor = {
            "name": "input",
            "shape": list(chunk.shape),
            "datatype": "FP32",
            "data": chunk.ravel().tolist(),
        }
        body = {"inputs": [tensor]}
        response = client.post("/v2/models/digits/infer", json=body, headers=headers)
        assert response.status_code == 200, response.text


def report(client: TestClient, path: str = DRIFT) -> dict:
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def brighter(x: np.ndarray) -> np.ndarray:
    return np.minimum(x * 1.5, 16.0).astype(np.float32)


def inverted(x: np.ndarray) -> np.ndarray:
    return (16.0 - x).astype(np.float32)


def test_the_split_is_the_committed_models(client: TestClient, digits: Digits) -> None:
    """The reproduced training split has exactly the training means the model carries."""
    rep = report(client)
    mean_train = np.array([f["mean_train"] for f in rep["features"]])
    np.testing.assert_allclose(mean_train, digits.train_mean, rtol=1e-12, atol=1e-12)
    assert len(digits.held_out) == 269


def test_before_any_row(client: TestClient) -> None:
    rep = report(client)
    assert rep["model"] == "digits" and rep["version"] == "1"
    assert rep["rows_seen"] == 0 and rep["score"] == 0.0 and rep["drifting"] is False
    assert rep["top_features"] == [] and len(rep["features"]) == 64
    assert rep["features"][0]["mean_live"] is None


def test_held_out_rows_stay_under_the_threshold(client: TestClient, digits: Digits) -> None:
    send(client, digits.held_out)
    rep = report(client)
    assert rep["rows_seen"] == len(digits.held_out) and rep["rows_nonfinite"] == 0
    assert rep["rows_effective"] >= rep["min_rows"]  # the verdict rests on enough rows to mean something
    assert 0 < rep["score"] < 0.5 * rep["threshold"], rep["top_features"]
    assert rep["drifting"] is False
    # The live means are the per-row EWMA (horizon 1000 rows, bias-corrected) of exactly the rows served,
    # in order: the closed form sum_i lam**(n-1-i) x_i / sum_i lam**(n-1-i).
    lam = 1 - 1 / 1000
    w = lam ** np.arange(len(digits.held_out) - 1, -1, -1)  # (n,)
    expected = w @ digits.held_out.astype(np.float64) / w.sum()  # (64,)
    np.testing.assert_allclose([f["mean_live"] for f in rep["features"]], expected, rtol=1e-9, atol=1e-9)
    assert report(client, "/v2/models/digits/versions/1/drift")["score"] == rep["score"]


def test_shifted_rows_cross_the_threshold_and_name_the_moved_pixels(
    client: TestClient, digits: Digits, caplog: pytest.LogCaptureFixture
) -> None:
    send(client, digits.held_out)
    reset = client.post(RESET)
    assert reset.status_code == 200
    assert reset.json()["rows_seen"] == 0 and reset.json()["score"] == 0.0
    assert report(client)["rows_seen"] == 0

    with caplog.at_level(logging.WARNING, logger="service.drift"):
        send(client, brighter(digits.held_out))
        bright = report(client)
        report(client)  # reading again does not warn again
    assert bright["drifting"] is True and bright["score"] > 2 * bright["threshold"]
    assert bright["rows_seen"] == len(digits.held_out)
    top = bright["top_features"]
    assert len(top) == 5
    for f in top:  # pixels that got brighter, not ones that stayed put
        assert f["psi"] > bright["threshold"] and f["mean_live"] > f["mean_train"] + 0.3 * f["std_train"], f
        assert bright["features"][f["index"]]["name"] == f["name"]
    # one warning for the inputs (the hidden layers have their own, tests/service/test_drift_layers_service.py)
    (warning,) = [
        r for r in caplog.records if r.levelno == logging.WARNING and "input drift" in r.getMessage()
    ]
    assert "digits/1" in warning.getMessage() and top[0]["name"] in warning.getMessage()

    caplog.clear()
    assert client.post("/v2/models/digits/versions/1/drift/reset").json()["rows_seen"] == 0
    with caplog.at_level(logging.WARNING, logger="service.drift"):
        send(client, inverted(digits.held_out))
        inv = report(client)
    assert inv["drifting"] is True and inv["score"] > bright["score"]
    for f in inv["top_features"]:  # pixels that were dark in training and are now bright
        assert f["mean_train"] < 8 < f["mean_live"], f
    inputs = [r for r in caplog.records if r.levelno == logging.WARNING and "input drift" in r.getMessage()]
    assert len(inputs) == 1  # re-armed by the reset

    metrics = client.get("/metrics").text
    labels = 'model="digits",version="1"'
    assert f"bnserve_drift_score{{{labels}}} {inv['score']!r}" in metrics
    assert f"bnserve_drift_drifting{{{labels}}} 1.0" in metrics
    assert f"bnserve_drift_threshold{{{labels}}} 0.25" in metrics
    assert f"bnserve_drift_rows_seen{{{labels}}} {float(len(digits.held_out))!r}" in metrics
    name = inv["top_features"][0]["name"]
    assert f'bnserve_drift_feature_psi{{feature="{name}",{labels}}}' in metrics


def test_settings_reach_the_monitor(digits: Digits) -> None:
    settings = settings_for(
        digits.root, drift_threshold=0.01, drift_top_k=3, drift_min_rows=10, drift_horizon_rows=50
    )
    with TestClient(create_app(settings)) as c:
        send(c, digits.held_out[:40])
        rep = report(c)
    assert rep["threshold"] == 0.01 and rep["min_rows"] == 10 and len(rep["top_features"]) == 3
    assert rep["config"]["horizon_rows"] == 50 and rep["config"]["window_rows"] == 1000
    assert rep["drifting"] is True  # 40 held-out rows are noisy enough to cross a threshold of 0.01


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--drift-threshold", "0"],
            "--drift-threshold / BNSERVE_DRIFT_THRESHOLD: Input should be greater than 0",
        ),
        (["--drift-threshold", "nan"], "--drift-threshold / BNSERVE_DRIFT_THRESHOLD"),
        (["--drift-horizon-rows", "0.5"], "--drift-horizon-rows / BNSERVE_DRIFT_HORIZON_ROWS"),
        (["--drift-window-rows", "0"], "--drift-window-rows / BNSERVE_DRIFT_WINDOW_ROWS"),
        (["--drift-min-rows", "-1"], "--drift-min-rows / BNSERVE_DRIFT_MIN_ROWS"),
        (["--drift-top-k", "0"], "--drift-top-k / BNSERVE_DRIFT_TOP_K"),
        (["--drift-enabled", "maybe"], "--drift-enabled / BNSERVE_DRIFT_ENABLED"),
    ],
)
def test_bad_drift_settings_refuse_to_start(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(argv)
    assert message in str(info.value)


def test_drift_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, digits: Digits) -> None:
    monkeypatch.setenv("BNSERVE_MODEL_REPOSITORY", str(digits.root))
    monkeypatch.setenv("BNSERVE_DRIFT_WINDOW_ROWS", "500")
    monkeypatch.setenv("BNSERVE_DRIFT_ENABLED", "false")
    settings = load_settings(["--drift-threshold", "0.3"])
    assert settings.drift_enabled is False
    assert settings.drift_config() == DriftConfig(window_rows=500, threshold=0.3)


def test_unknown_model_or_version_is_a_json_404(client: TestClient) -> None:
    for method, path, phrase in [
        ("GET", "/v2/models/nope/drift", "unknown model 'nope'"),
        ("POST", "/v2/models/nope/drift/reset", "unknown model 'nope'"),
        ("GET", "/v2/models/digits/versions/2/drift", "model 'digits' has no version '2'"),
        ("POST", "/v2/models/digits/versions/x/drift/reset", "model 'digits' has no version 'x'"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404, path
        body = response.json()
        assert list(body) == ["error"] and phrase in body["error"], body


def test_drift_routes_need_the_key(digits: Digits) -> None:
    with TestClient(create_app(settings_for(digits.root, api_key=KEY))) as c:
        for method, path in [("GET", DRIFT), ("POST", RESET), ("GET", "/v2/models/digits/versions/1/drift")]:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                response = c.request(method, path, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.json() == {
                    "error": "missing or wrong API key: send 'Authorization: Bearer <key>'"
                }
            assert c.request(method, path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.get("/metrics").status_code == 200  # metrics stay open, as before


def test_disabled_monitoring(digits: Digits) -> None:
    with TestClient(create_app(settings_for(digits.root, drift_enabled=False))) as c:
        send(c, digits.held_out[:8])
        response = c.get(DRIFT)
        metrics = c.get("/metrics").text
        assert c.app.state.service.repository.get("digits").observers == []  # type: ignore[attr-defined]
    assert response.status_code == 404
    assert response.json() == {"error": "drift monitoring is off (BNSERVE_DRIFT_ENABLED=false)"}
    assert "# TYPE bnserve_drift_score gauge" in metrics and "bnserve_drift_score{" not in metrics


@pytest.mark.parametrize("inline_max_bytes", [0, 32 * 1024], ids=["threadpool", "inline"])
def test_observers_run_after_the_requests_batched_on_the_event_loop(
    digits: Digits, inline_max_bytes: int
) -> None:
    """Wherever the inference ran (the threadpool, or the loop for small requests), the observers run later, on
    the event loop's thread (tests/service/test_observers.py: batched, in order, large drains on a thread)."""
    threads: list[int] = []
    rows: list[int] = []
    served: list[int] = []  # the thread of the app's loop, seen from a request's own observer hook

    def probe(x: np.ndarray) -> None:
        rows.append(len(x))
        asyncio.get_running_loop()  # raises off the loop
        threads.append(threading.get_ident())

    def observers_for(model: ModelRuntime) -> list:
        # the drift monitor, registered before the hook's observers (with the hidden layers: a layer observer)
        assert len(model.observers) + len(model.layer_observers) == 1
        return [probe]

    settings = settings_for(digits.root, inline_max_bytes=inline_max_bytes)
    app = create_app(settings, observers_for=observers_for)
    with TestClient(app) as c:
        served.append(c.portal.call(threading.get_ident))  # type: ignore[union-attr]
        send(c, digits.held_out[:8])
        assert (
            c.post("/v1/models/digits:predict", json={"instances": digits.held_out[:2].tolist()}).status_code
            == 200
        )
        deadline = time.monotonic() + 10
        while sum(rows) < 10 and time.monotonic() < deadline:  # the drain comes within the linger (20 ms)
            time.sleep(0.01)
        assert report(c)["rows_seen"] == 10
    assert sum(rows) == 10
    assert set(threads) == set(served)
