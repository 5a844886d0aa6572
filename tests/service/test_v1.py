"""V1 predict (TensorFlow-Serving style) and status, through the TestClient."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import IRIS_FEATURES, Repo


def test_predict_rows_classification(client: TestClient, repo: Repo) -> None:
    x = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
    response = client.post("/v1/models/iris:predict", json={"instances": x.tolist()})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    want = repo.models["iris"].expected(x)
    labels = ["setosa", "versicolor", "virginica"]
    for row, p, k in zip(predictions, want["probabilities"], want["label"]):
        assert row["label"] == labels[k]
        assert list(row["probabilities"]) == labels
        np.testing.assert_allclose(list(row["probabilities"].values()), p, rtol=1e-5, atol=1e-6)


def test_predict_named_features_in_any_order(client: TestClient, repo: Repo) -> None:
    x = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
    named = dict(reversed(list(zip(IRIS_FEATURES, x[0].tolist()))))
    by_name = client.post("/v1/models/iris:predict", json={"instances": [named]}).json()
    by_row = client.post("/v1/models/iris:predict", json={"instances": x.tolist()}).json()
    assert by_name == by_row


def test_integer_class_labels_keep_their_type(client: TestClient, repo: Repo) -> None:
    x = np.zeros((1, 64), np.float32)
    body = client.post("/v1/models/digits/versions/1:predict", json={"instances": x.tolist()}).json()
    (row,) = body["predictions"]
    assert row["label"] == int(repo.models["digits@1"].expected(x)["label"][0])
    assert isinstance(row["label"], int)
    assert list(row["probabilities"]) == [str(k) for k in range(10)]


def test_predict_regression(client: TestClient, repo: Repo) -> None:
    x = np.random.default_rng(6).normal(size=(2, 3)).astype(np.float32)
    predictions = client.post("/v1/models/house:predict", json={"instances": x.tolist()}).json()[
        "predictions"
    ]
    np.testing.assert_allclose(predictions, repo.models["house"].expected(x)["prediction"][:, 0], rtol=1e-5)


def test_status(client: TestClient) -> None:
    body = client.get("/v1/models/digits").json()
    assert body["name"] == "digits" and body["ready"] is True
    assert [v["version"] for v in body["model_version_status"]] == ["2", "1"]
    assert {v["state"] for v in body["model_version_status"]} == {"AVAILABLE"}
    response = client.get("/v1/models/nope")
    assert response.status_code == 404 and "unknown model 'nope'" in response.json()["error"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json"])
def test_any_or_no_content_type(client: TestClient, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(
        "/v1/models/iris:predict", content=b'{"instances": [[1, 2, 3, 4]]}', headers=headers
    )
    assert response.status_code == 200
