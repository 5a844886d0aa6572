"""A table with text, boolean, date and missing cells: trained, exported, served by ``python -m service``.

The model is trained here in a temporary repository (``tests/service/tabular_model.py``: the training API that
``python -m training --csv`` runs), served on 127.0.0.1 with the default workers (one per CPU, so the counters
and the drift report are aggregated across processes), and asked the same four rows in every way a client can:
V1 named rows (strings, booleans, nulls, a missing key), V2 JSON and binary through ``tritonclient.http``, and
gRPC through ``tritonclient.grpc`` (raw contents) and typed ``bytes_contents``. Every answer must be the float64
network's within float32 rounding; unknown categories and missing cells must be counted in ``/metrics`` and in
the drift report. Every wait is bounded; the server is stopped here.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from benchmarks.harness import LiveServer
from service import proto
from tests.service.tabular_model import NAME, TabularModel, train_tabular_model
from tests.service.test_tabular import ATOL, S, X, named_rows

pytestmark = pytest.mark.slow


@dataclass
class Served:
    server: LiveServer
    model: TabularModel

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    model = train_tabular_model(tmp_path_factory.mktemp("tabular-live") / "models")
    server = LiveServer("--model-repository", str(model.root))
    try:
        server.wait_ready()
        yield Served(server, model)
    finally:
        server.stop()


def post(server: LiveServer, path: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(
        server.url(path), data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(server: LiveServer, path: str) -> str:
    with urllib.request.urlopen(server.url(path), timeout=10) as r:
        return r.read().decode()


def http_infer(served: Served, binary: bool) -> np.ndarray:
    client = triton_http.InferenceServerClient(
        f"127.0.0.1:{served.server.port}", connection_timeout=10, network_timeout=10
    )
    try:
        numbers = triton_http.InferInput("input", list(X.shape), "FP32")
        numbers.set_data_from_numpy(X, binary_data=binary)  # NaN: missing, for the imputed features
        strings = triton_http.InferInput("categorical", list(S.shape), "BYTES")
        strings.set_data_from_numpy(S, binary_data=binary)
        result = client.infer(NAME, [numbers, strings])
    finally:
        client.close()
    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None
    return probabilities


def test_v1_named_rows_match_the_float64_network(served: Served) -> None:
    status, body = post(served.server, f"/v1/models/{NAME}:predict", {"instances": named_rows()})
    assert status == 200, body
    labels = served.model.contract.class_labels
    got = np.array([[p["probabilities"][str(c)] for c in labels] for p in body["predictions"]])
    np.testing.assert_allclose(got, served.model.expected(X, S), rtol=0, atol=ATOL)


def test_v2_json_needs_null_for_a_missing_number_and_tritonclient_binary_sends_nan(served: Served) -> None:
    # tritonclient's JSON path writes NaN as a bare token, which is not JSON: the server says so (400).
    with pytest.raises(InferenceServerException, match="NaN at char"):
        http_infer(served, binary=False)
    complete = ~np.isnan(X).any(axis=1)
    client = triton_http.InferenceServerClient(f"127.0.0.1:{served.server.port}", network_timeout=10)
    try:
        numbers = triton_http.InferInput("input", [int(complete.sum()), 3], "FP32")
        numbers.set_data_from_numpy(X[complete], binary_data=False)
        strings = triton_http.InferInput("categorical", [int(complete.sum()), 3], "BYTES")
        strings.set_data_from_numpy(S[complete], binary_data=False)
        result = client.infer(NAME, [numbers, strings])
    finally:
        client.close()
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), served.model.expected(X[complete], S[complete]), rtol=0, atol=ATOL
    )
    np.testing.assert_allclose(
        http_infer(served, binary=True), served.model.expected(X, S), rtol=0, atol=ATOL
    )


def test_grpc_raw_and_typed_contents_match_the_float64_network(served: Served) -> None:
    with triton_grpc.InferenceServerClient(served.address) as client:
        numbers = triton_grpc.InferInput("input", list(X.shape), "FP32")
        numbers.set_data_from_numpy(X)
        strings = triton_grpc.InferInput("categorical", list(S.shape), "BYTES")
        strings.set_data_from_numpy(S)
        raw = client.infer(NAME, [strings, numbers], client_timeout=30).as_numpy("probabilities")
        meta = client.get_model_metadata(NAME)
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            ("input", "FP32", [-1, 3]),
            ("categorical", "BYTES", [-1, 3]),
        ]
    request = proto.ModelInferRequest(model_name=NAME)
    request.inputs.add(name="input", datatype="FP32", shape=list(X.shape)).contents.fp32_contents.extend(
        X.ravel().tolist()
    )
    request.inputs.add(
        name="categorical", datatype="BYTES", shape=list(S.shape)
    ).contents.bytes_contents.extend([v.encode() for v in S.ravel()])
    with grpc.insecure_channel(served.address) as channel:
        infer = channel.unary_unary(
            proto.method_path("ModelInfer"),
            request_serializer=proto.ModelInferRequest.SerializeToString,
            response_deserializer=proto.ModelInferResponse.FromString,
        )
        response = infer(request, timeout=30)
    out = response.outputs[0]
    typed = np.array(out.contents.fp32_contents).reshape(list(out.shape))
    expected = served.model.expected(X, S)
    np.testing.assert_allclose(raw, expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(typed, expected, rtol=0, atol=ATOL)


def test_grpc_bad_cells_are_invalid_argument_naming_the_feature(served: Served) -> None:
    s = S.copy()
    s[2, 1] = ""  # colour has no imputed value
    with triton_grpc.InferenceServerClient(served.address) as client:
        numbers = triton_grpc.InferInput("input", list(X.shape), "FP32")
        numbers.set_data_from_numpy(X)
        strings = triton_grpc.InferInput("categorical", list(s.shape), "BYTES")
        strings.set_data_from_numpy(s)
        with pytest.raises(InferenceServerException) as caught:
            client.infer(NAME, [numbers, strings], client_timeout=30)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "feature 'colour' is missing (row 2)" in caught.value.message()


def test_v1_bad_cells_get_400(served: Served) -> None:
    for change, phrase in [
        ({"table": "wide"}, "feature 'table' is a string (row 1); expected a number"),
        ({"cut": 2}, "feature 'cut' is a number (row 1); expected a string"),
        ({"colour": None}, "feature 'colour' is missing (row 1)"),
    ]:
        rows = named_rows()[:2]
        rows[1] = {**rows[1], **change}
        status, body = post(served.server, f"/v1/models/{NAME}:predict", {"instances": rows})
        assert status == 400 and phrase in body["error"], body


def counter(metrics: str, name: str, feature: str) -> float:
    prefix = f'{name}{{feature="{feature}",model="{NAME}",version="1"}} '
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def settled_metrics(server: LiveServer) -> str:
    """``/metrics`` once its cell counters have stopped moving (the observers count a few ms after answers)."""
    last: list[str] | None = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = get(server, "/metrics")
        cells = [
            line for line in text.splitlines() if line.startswith(("bnserve_missing", "bnserve_unknown"))
        ]
        if cells == last:
            return text
        last = cells
        time.sleep(0.3)
    raise AssertionError("the cell counters kept changing for 10 s")


def test_unknown_categories_and_missing_cells_are_counted_across_workers(served: Served) -> None:
    before = settled_metrics(served.server)  # earlier tests' rows counted, on whichever worker served them
    drift_before = json.loads(get(served.server, f"/v2/models/{NAME}/drift"))["cells"]["features"]
    rows = named_rows() * 5  # 5 x (carat, depth, cut missing once; cut 'Superb' and colour 'Z' unknown)
    for _ in range(4):  # several requests: the workers share them
        assert post(served.server, f"/v1/models/{NAME}:predict", {"instances": rows})[0] == 200
    wanted = {
        ("bnserve_missing_cells_total", "carat"): 20,
        ("bnserve_missing_cells_total", "cut"): 20,
        ("bnserve_unknown_category_total", "colour"): 20,
        ("bnserve_unknown_category_total", "cut"): 20,
    }
    deadline = time.monotonic() + 10
    while True:  # the observers count on their own thread, a few milliseconds after the answers
        metrics = get(served.server, "/metrics")
        got = {k: counter(metrics, *k) - counter(before, *k) for k in wanted}
        if got == wanted or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got == wanted
    assert counter(metrics, "bnserve_unknown_category_total", "boxed") == 0
    old = {f["name"]: f for f in drift_before}
    deadline = time.monotonic() + 10
    while True:
        cells = {
            f["name"]: f
            for f in json.loads(get(served.server, f"/v2/models/{NAME}/drift"))["cells"]["features"]
        }
        if (
            cells["colour"]["unknown_cells"] - old["colour"]["unknown_cells"] == 20
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.1)
    assert cells["colour"]["unknown_cells"] - old["colour"]["unknown_cells"] == 20
    assert cells["cut"]["missing_cells"] - old["cut"]["missing_cells"] == 20
    assert 0 < cells["carat"]["missing_rate_live"] < 1 and cells["carat"]["missing_rate_train"] > 0
