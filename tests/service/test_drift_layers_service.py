"""Hidden-layer drift and the live-input sample, wired into the service, over the committed digits model."""

from __future__ import annotations

import csv
import io
import logging
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import SettingsError, load_settings
from tests.service.conftest import settings_for
from tests.service.test_drift_service import Digits, brighter, committed_digits, report, send

KEY = "sample-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SAMPLE = "/v2/models/digits/drift/sample"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    return committed_digits(tmp_path_factory.mktemp("committed"))


def test_layers_stay_calm_on_held_out_rows_and_drift_on_shifted_ones(digits: Digits, caplog) -> None:
    with TestClient(create_app(settings_for(digits.root, access_log=False))) as c:
        assert [layer["name"] for layer in report(c)["layers"]] == ["layer0", "layer1"]
        send(c, digits.held_out)
        calm = report(c)
        c.post("/v2/models/digits/drift/reset")
        with caplog.at_level(logging.WARNING, logger="service.drift"):
            send(c, brighter(digits.held_out))
            shifted = report(c)
        metrics = c.get("/metrics").text
    for before, after in zip(calm["layers"], shifted["layers"], strict=True):
        assert before["units"] == 256 and before["output"] == before["name"] + ".z"
        # 269 rows, 256 units: the max over units of a PSI with a small-sample bias stays under the threshold
        assert not before["drifting"] and before["score"] < calm["threshold"]
        assert after["drifting"] and after["score"] > max(calm["threshold"], 2 * before["score"])
        assert after["top_units"][0]["name"].startswith(after["name"] + ".")
        assert before["rows_effective"] == pytest.approx(calm["rows_effective"])
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "'digits/1': hidden layer layer0 drift score" in warned
    assert "'digits/1': hidden layer layer1 drift score" in warned
    for layer in shifted["layers"]:
        line = f'bnserve_drift_layer_score{{layer="{layer["name"]}",model="digits",version="1"}}'
        assert line in metrics
    assert 'bnserve_drift_layer_drifting{layer="layer1",model="digits",version="1"} 1.0' in metrics


def test_layers_can_be_turned_off(digits: Digits) -> None:
    with TestClient(create_app(settings_for(digits.root, drift_layers=False))) as c:
        send(c, digits.held_out[:8])
        assert report(c)["layers"] == []


def test_the_sample_is_a_csv_of_served_rows_behind_the_key(digits: Digits) -> None:
    settings = settings_for(digits.root, api_key=KEY, drift_sample_rows=100, access_log=False)
    with TestClient(create_app(settings)) as c:
        send(c, digits.held_out, headers=AUTH)
        assert c.get(SAMPLE).status_code == 401
        response = c.get(SAMPLE, headers=AUTH)
        again = c.get("/v2/models/digits/versions/1/drift/sample", headers=AUTH)
        assert c.post("/v2/models/digits/drift/reset", headers=AUTH).status_code == 200
        emptied = c.get(SAMPLE, headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert 'filename="digits-1-sample.csv"' in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    sample = np.array(rows[1:], dtype=np.float32)
    assert sample.shape == (100, 64)
    # every sampled row is one of the rows served, each at most once
    served = {tuple(r) for r in digits.held_out.tolist()}
    assert all(tuple(r) in served for r in sample.tolist())
    assert again.text == response.text
    assert emptied.text == response.text.splitlines()[0] + "\n"  # the reset forgot the sample: header only


def test_the_sample_is_off_by_default_and_needs_a_key(digits: Digits) -> None:
    with TestClient(create_app(settings_for(digits.root))) as c:
        response = c.get(SAMPLE)
    assert response.status_code == 404
    assert response.json() == {"error": "the live-input sample is off (BNSERVE_DRIFT_SAMPLE_ROWS=0)"}
    with pytest.raises(SettingsError) as info:
        load_settings(["--model-repository", str(digits.root), "--drift-sample-rows", "1000"])
    assert str(info.value) == (
        "invalid setting --drift-sample-rows / BNSERVE_DRIFT_SAMPLE_ROWS: needs BNSERVE_API_KEY (the sample "
        "holds raw client inputs) (got '1000')"
    )


def test_hidden_outputs_only_when_a_client_names_them(digits: Digits) -> None:
    import onnxruntime as ort

    x = digits.held_out[:3]
    tensor = {"name": "input", "shape": [3, 64], "datatype": "FP32", "data": x.ravel().tolist()}
    with TestClient(create_app(settings_for(digits.root))) as c:
        plain = c.post("/v2/models/digits/infer", json={"inputs": [tensor]}).json()
        asked = c.post(
            "/v2/models/digits/infer",
            json={"inputs": [tensor], "outputs": [{"name": "label"}, {"name": "layer1.z"}]},
        ).json()
        unknown = c.post(
            "/v2/models/digits/infer", json={"inputs": [tensor], "outputs": [{"name": "layer9.z"}]}
        )
        metadata = c.get("/v2/models/digits").json()
    assert [o["name"] for o in plain["outputs"]] == ["probabilities", "label"]
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "label"]
    label, hidden = asked["outputs"]
    assert label["data"] == plain["outputs"][1]["data"]
    assert hidden["datatype"] == "FP32" and hidden["shape"] == [3, 256]
    sess = ort.InferenceSession(
        str(digits.root / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (expected,) = sess.run(["layer1.z"], {"input": x})
    np.testing.assert_allclose(np.reshape(hidden["data"], (3, 256)), expected, rtol=1e-6, atol=1e-6)
    assert unknown.status_code == 400
    assert unknown.json()["error"] == (
        "unknown output 'layer9.z'; model 'digits' outputs ['probabilities', 'label'] "
        "(and, on request, the hidden ['layer0.z', 'layer1.z'])"
    )


class RecordingSession:
    """An onnxruntime session that notes the outputs each run computes."""

    def __init__(self, session: object) -> None:
        self.session, self.runs = session, []  # type: list[list[str]]

    def run(self, names: list[str], feed: dict) -> list:
        self.runs.append(list(names))
        return self.session.run(names, feed)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.session, name)


def test_the_layers_budget_is_applied_where_the_model_runs(digits: Digits) -> None:
    """Over the budget, a run computes no hidden layer at all; the inputs still see every row, and every layer
    sees the same rows, no more than the budget allows."""
    rows = digits.held_out[:60]
    with TestClient(create_app(settings_for(digits.root, access_log=False, drift_layers_max_rows=5))) as c:
        model = c.app.state.service.models().get("digits", None)  # type: ignore[attr-defined]
        recording = RecordingSession(model.session)
        model.session = recording
        started = time.monotonic()
        for row in rows:  # one row per request: 60 runs
            send(c, row[None, :])
        elapsed = time.monotonic() - started
        drift = report(c)
    hidden = set(model.hidden_output_names)
    with_layers = [names for names in recording.runs if hidden & set(names)]
    allowed = 5 + 5 * elapsed  # a second's worth of rows to start with, then 5 a second
    assert drift["rows_seen"] == 60
    seen = {layer["rows_seen"] for layer in drift["layers"]}
    assert len(seen) == 1 and 1 <= seen.pop() <= allowed
    assert 1 <= len(with_layers) <= allowed and len(with_layers) < len(recording.runs)
    assert all(set(names) >= hidden for names in with_layers)  # all layers, or none


def test_the_inputs_budget_samples_the_served_rows(digits: Digits) -> None:
    """Over BNSERVE_DRIFT_MAX_ROWS the inputs' statistics take a sample of the rows served; at 0, every row."""
    rows = digits.held_out[:64]
    for budget in (8.0, 0.0):  # sampled, then every row
        with TestClient(create_app(settings_for(digits.root, access_log=False, drift_max_rows=budget))) as c:
            started = time.monotonic()
            send(c, rows)  # BATCH rows per request
            elapsed = time.monotonic() - started
            seen = report(c)["rows_seen"]
        if budget:
            assert 1 <= seen <= budget * (1 + elapsed) < len(rows)
        else:
            assert seen == len(rows)
