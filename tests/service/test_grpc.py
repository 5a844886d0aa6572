"""The Open Inference Protocol over gRPC, in process: ``tritonclient.grpc`` and raw stubs against the servicer.

The numbers are checked against each tiny model's closed form (conftest), and the errors against the REST
answers to the same mistakes: same words, the gRPC status of the same class.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from benchmarks.harness import free_port
from service import dataplane, proto
from service.auth import ApiKey
from service.grpc_server import GrpcServer
from service.lifecycle import ModelManager
from tests.service.conftest import Repo
from tests.service.grpc_harness import GrpcService, serve_grpc


@pytest.fixture(scope="module")
def service(repo: Repo) -> Iterator[GrpcService]:
    with serve_grpc(repo.root) as running:
        yield running


@pytest.fixture(scope="module")
def client(service: GrpcService) -> Iterator[triton_grpc.InferenceServerClient]:
    with triton_grpc.InferenceServerClient(service.address) as c:
        yield c


def rows(n: int, seed: int = 0, features: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, features)).astype(np.float32)


def raw_input(x: np.ndarray, datatype: str = "FP32") -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def call(service: GrpcService, rpc: str, request: Any, metadata: Any = ()) -> tuple[Any, Any]:
    """One RPC through our own classes: (response, call) so that trailing metadata can be read."""
    request_class, response_class = proto.METHODS[rpc]
    with grpc.insecure_channel(service.address) as channel:
        stub = channel.unary_unary(
            proto.method_path(rpc),
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        return stub.with_call(request, metadata=metadata, timeout=10)


def error_of(service: GrpcService, rpc: str, request: Any, metadata: Any = ()) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(service, rpc, request, metadata)
    return caught.value


# ---- health and metadata ---------------------------------------------------------------------------------------
def test_health(client: triton_grpc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    with pytest.raises(InferenceServerException) as caught:
        client.is_model_ready("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'nope'" in caught.value.message()


def test_metadata_matches_rest(client: triton_grpc.InferenceServerClient, service: GrpcService) -> None:
    server = client.get_server_metadata()
    rest = service.rest_json("/v2")
    assert (server.name, server.version, list(server.extensions)) == (
        rest["name"],
        rest["version"],
        rest["extensions"],
    )
    for path, version in (("/v2/models/digits", ""), ("/v2/models/digits/versions/1", "1")):
        meta = client.get_model_metadata("digits", version)
        rest = service.rest_json(path)
        assert (meta.name, list(meta.versions), meta.platform) == (
            rest["name"],
            rest["versions"],
            rest["platform"],
        )
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            (t["name"], t["datatype"], t["shape"]) for t in rest["inputs"]
        ]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
            (t["name"], t["datatype"], t["shape"]) for t in rest["outputs"]
        ]


# ---- inference ------------------------------------------------------------------------------------------------
def test_raw_inference_matches_the_closed_form(client: triton_grpc.InferenceServerClient, repo: Repo) -> None:
    x = rows(5)
    result = client.infer("digits", [raw_input(x)], request_id="req-7")
    expected = repo.models["digits"].expected(x)
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), expected["probabilities"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("digits", "2", "req-7")
    assert len(response.raw_output_contents) == 2  # raw in, raw out


def test_versions_and_requested_outputs(client: triton_grpc.InferenceServerClient, repo: Repo) -> None:
    x = rows(3, seed=1)
    result = client.infer(
        "digits", [raw_input(x)], model_version="1", outputs=[triton_grpc.InferRequestedOutput("label")]
    )
    assert result.get_response().model_version == "1"
    assert [o.name for o in result.get_response().outputs] == ["label"]
    np.testing.assert_array_equal(result.as_numpy("label"), repo.models["digits@1"].expected(x)["label"])


@pytest.mark.parametrize(
    ("datatype", "field", "dtype"),
    [
        ("FP32", "fp32_contents", np.float32),
        ("FP64", "fp64_contents", np.float64),
        ("INT32", "int_contents", np.int32),
        ("INT64", "int64_contents", np.int64),
        ("UINT8", "uint_contents", np.uint8),
    ],
)
def test_typed_contents_in_and_out(
    service: GrpcService, repo: Repo, datatype: str, field: str, dtype: Any
) -> None:
    x = (
        (rows(4, seed=2) * 5).astype(dtype)
        if dtype not in (np.uint8,)
        else np.abs(rows(4, seed=2) * 5).astype(dtype)
    )
    request = proto.ModelInferRequest(model_name="digits", id="typed")
    tensor = request.inputs.add(name="input", datatype=datatype, shape=list(x.shape))
    getattr(tensor.contents, field).extend(x.ravel().tolist())
    response, _ = call(service, "ModelInfer", request)
    assert not response.raw_output_contents  # typed in, typed out
    by_name = {o.name: o for o in response.outputs}
    probabilities = np.array(by_name["probabilities"].contents.fp32_contents, np.float32).reshape(4, 10)
    expected = repo.models["digits"].expected(x.astype(np.float32))
    np.testing.assert_allclose(probabilities, expected["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(by_name["label"].contents.int64_contents, expected["label"])
    assert list(by_name["probabilities"].shape) == [4, 10] and by_name["label"].datatype == "INT64"


def test_raw_and_typed_answers_are_the_same_bits(service: GrpcService) -> None:
    raw = proto.ModelInferRequest(model_name="iris", raw_input_contents=[rows(6, 3, 4).tobytes()])
    raw.inputs.add(name="input", datatype="FP32", shape=[6, 4])
    typed = proto.ModelInferRequest(model_name="iris")
    typed.inputs.add(name="input", datatype="FP32", shape=[6, 4]).contents.fp32_contents.extend(
        rows(6, 3, 4).ravel().tolist()
    )
    from_raw, _ = call(service, "ModelInfer", raw)
    from_typed, _ = call(service, "ModelInfer", typed)
    raw_p = np.frombuffer(from_raw.raw_output_contents[0], "<f4")
    typed_p = np.array(from_typed.outputs[0].contents.fp32_contents, np.float32)
    assert raw_p.size == 18 and raw_p.tobytes() == typed_p.tobytes()


def test_binary_data_output_parameter_chooses_the_form(service: GrpcService) -> None:
    request = proto.ModelInferRequest(model_name="house")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3]).contents.fp32_contents.extend(
        [1.0, 2.0, 3.0]
    )
    request.parameters["binary_data_output"].bool_param = True
    response, _ = call(service, "ModelInfer", request)
    assert len(response.raw_output_contents) == 1 and not response.outputs[0].HasField("contents")


def test_request_id_metadata_round_trips(service: GrpcService) -> None:
    _, rpc = call(
        service, "ServerLive", proto.ServerLiveRequest(), metadata=(("x-request-id", "trace-me-1"),)
    )
    assert ("x-request-id", "trace-me-1") in tuple(rpc.trailing_metadata())
    _, rpc = call(service, "ServerLive", proto.ServerLiveRequest(), metadata=(("x-request-id", "bad id!"),))
    given = dict(rpc.trailing_metadata())["x-request-id"]
    assert given != "bad id!" and len(given) == 32


# ---- errors: the REST message, the gRPC status of its class ---------------------------------------------------
def _infer(
    model: str = "digits", shape: tuple[int, int] = (1, 64), datatype: str = "FP32", raw: bytes | None = None
) -> Any:
    request = proto.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype=datatype, shape=list(shape))
    request.raw_input_contents.append(raw if raw is not None else bytes(4 * shape[0] * shape[1]))
    return request


@pytest.mark.parametrize(
    ("request_", "code", "phrase"),
    [
        (_infer(shape=(1, 63)), grpc.StatusCode.INVALID_ARGUMENT, "expected 64 features per row, got 63"),
        (_infer(datatype="BYTES"), grpc.StatusCode.INVALID_ARGUMENT, "unsupported datatype 'BYTES'"),
        (_infer(raw=bytes(10)), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents[0] has 10 bytes"),
        (
            _infer(raw=np.full((1, 64), np.nan, np.float32).tobytes()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "value at row 0, column 0 is NaN",
        ),
        (
            _infer(raw=np.full((1, 64), -1e33, np.float32).tobytes()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "value at row 0, column 0 is -1e+33, outside the model's input range [-1e+32, 1e+32]",
        ),
        (_infer(shape=(0, 64)), grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
        (_infer(model="nope"), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        (_infer(shape=(65, 64)), grpc.StatusCode.RESOURCE_EXHAUSTED, "65 rows exceed the limit of 64 rows"),
    ],
    ids=["features", "datatype", "raw-size", "nan", "input-range", "empty", "unknown-model", "rows"],
)
def test_errors(service: GrpcService, request_: Any, code: grpc.StatusCode, phrase: str) -> None:
    error = error_of(service, "ModelInfer", request_)
    assert error.code() == code and phrase in error.details(), (error.code(), error.details())


def test_typed_contents_keep_the_declared_range(service: GrpcService) -> None:
    request = proto.ModelInferRequest(model_name="house")
    request.inputs.add(name="input", datatype="INT8", shape=[1, 3]).contents.int_contents.extend([1, 1000, 3])
    error = error_of(service, "ModelInfer", request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        error.details()
        == "value at row 0, column 1 is 1000, outside the declared datatype's range [-128, 127]"
    )
    rest = service.http.post(
        "/v2/models/house/infer",
        json={"inputs": [{"name": "input", "shape": [1, 3], "datatype": "INT8", "data": [1, 1000, 3]}]},
    )
    assert rest.status_code == 400 and rest.json()["error"] == error.details()


def test_typed_contents_errors(service: GrpcService) -> None:
    request = proto.ModelInferRequest(model_name="house")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3]).contents.fp64_contents.extend([1, 2, 3])
    assert (
        "its values go in contents.fp32_contents, got fp64_contents"
        in error_of(service, "ModelInfer", request).details()
    )
    request = proto.ModelInferRequest(model_name="house")
    request.inputs.add(name="input", datatype="FP32", shape=[2, 3]).contents.fp32_contents.extend([1, 2, 3])
    assert (
        "shape [2, 3] needs 6 values but contents.fp32_contents has 3"
        in error_of(service, "ModelInfer", request).details()
    )
    request.outputs.add(name="nope")
    request.inputs[0].contents.fp32_contents.extend([1, 2, 3])
    error = error_of(service, "ModelInfer", request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown output 'nope'" in error.details()


def test_a_message_over_the_body_limit_is_refused_by_grpc(service: GrpcService) -> None:
    big = _infer(shape=(64, 64), raw=bytes(service.settings.max_body_bytes))
    assert error_of(service, "ModelInfer", big).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_metrics_count_grpc_calls_by_protocol_and_status(service: GrpcService) -> None:
    before = service.metric('bnserve_requests_total{model="digits",protocol="grpc",status="400"}')
    error_of(service, "ModelInfer", _infer(shape=(1, 63)))
    call(service, "ModelInfer", _infer())
    assert service.metric('bnserve_requests_total{model="digits",protocol="grpc",status="400"}') == before + 1
    assert service.metric('bnserve_requests_total{model="digits",protocol="grpc",status="200"}') >= 1
    assert service.metric('bnserve_requests_total{model="",protocol="health",status="200"}') >= 0


def test_grpc_rows_feed_the_same_drift_monitor(service: GrpcService) -> None:
    before = service.rest_json("/v2/models/iris/drift")["rows_seen"]
    request = proto.ModelInferRequest(model_name="iris", raw_input_contents=[rows(7, 4, 4).tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=[7, 4])
    call(service, "ModelInfer", request)
    assert service.rest_json("/v2/models/iris/drift")["rows_seen"] == before + 7


# ---- authentication and draining --------------------------------------------------------------------------------
def test_bearer_key_guards_what_http_guards(repo: Repo) -> None:
    with serve_grpc(repo.root, api_key="s3cret") as service:
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
            error = error_of(service, "ModelInfer", _infer(), metadata)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "API key" in error.details()
            assert error_of(
                service, "ModelMetadata", proto.ModelMetadataRequest(name="digits"), metadata
            ).code() == (grpc.StatusCode.UNAUTHENTICATED)
        response, _ = call(service, "ModelInfer", _infer(), (("authorization", "Bearer s3cret"),))
        assert response.model_name == "digits"
        # Health stays open, as /v2/health/* does.
        assert call(service, "ServerReady", proto.ServerReadyRequest())[0].ready
        assert call(service, "ModelReady", proto.ModelReadyRequest(name="digits"))[0].ready


def test_shutdown_drains_rpcs_in_flight_and_refuses_new_ones(
    repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    real = dataplane.decode_grpc

    def held(*args: Any) -> Any:  # an inference that waits for the test's word, on an inference thread
        entered.set()
        assert release.wait(10)
        return real(*args)

    monkeypatch.setattr(dataplane, "decode_grpc", held)
    # On the inference threads (not inline on the loop), so that the loop answers the other RPCs meanwhile.
    with serve_grpc(repo.root, graceful_timeout=10, inline_max_bytes=0) as service:
        request_class, response_class = proto.METHODS["ModelInfer"]
        with grpc.insecure_channel(service.address) as channel:
            infer = channel.unary_unary(
                proto.method_path("ModelInfer"),
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )
            in_flight = infer.future(_infer(), timeout=30)
            assert entered.wait(10)
            service.state.begin_shutdown()  # what SIGTERM does
            refused = error_of(service, "ModelInfer", _infer())
            assert refused.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in refused.details()
            assert not call(service, "ServerReady", proto.ServerReadyRequest())[0].ready
            assert call(service, "ServerLive", proto.ServerLiveRequest())[0].live
            release.set()
            assert in_flight.result(timeout=30).model_name == "digits"


# ---- the model repository extension ------------------------------------------------------------------------------
@contextmanager
def repository_server(root: Path, manager: ModelManager) -> Iterator[GrpcService]:
    """The app (gRPC off) plus a GrpcServer of its own with the model manager as its repository API."""
    with serve_grpc(root, grpc_port=0) as service:
        port = free_port()
        state = service.state
        state.settings = state.settings.model_copy(update={"grpc_port": port})
        server = GrpcServer(state, ApiKey(None), repository_api=manager)
        portal = service.http.portal
        assert portal is not None
        portal.call(server.start)
        try:
            yield GrpcService(f"127.0.0.1:{port}", service.http, state.settings, state)
        finally:
            portal.call(server.stop)


def test_repository_rpcs_answer_through_the_model_manager(repo: Repo, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(repo.root, root)
    manager = ModelManager(root=root, mode="explicit")
    manager.start()
    with repository_server(root, manager) as service:
        index, _ = call(service, "RepositoryIndex", proto.RepositoryIndexRequest())
        assert [(m.name, m.version, m.state, m.reason) for m in index.models] == [
            (e["name"], e.get("version", ""), e["state"], e["reason"]) for e in manager.index()
        ]
        assert ("iris", "1", "READY") in {(m.name, m.version, m.state) for m in index.models}
        call(service, "RepositoryModelUnload", proto.RepositoryModelUnloadRequest(model_name="iris"))
        assert "iris" not in manager.repository.models
        ready, _ = call(service, "RepositoryIndex", proto.RepositoryIndexRequest(ready=True))
        assert "iris" not in {m.name for m in ready.models}
        call(service, "RepositoryModelLoad", proto.RepositoryModelLoadRequest(model_name="iris"))
        assert 1 in manager.repository.models["iris"]
        error = error_of(service, "RepositoryModelLoad", proto.RepositoryModelLoadRequest(model_name="nope"))
        assert error.code() == grpc.StatusCode.NOT_FOUND and "no model 'nope'" in error.details()
    off = ModelManager(root=root, mode="none")
    off.start()
    with repository_server(root, off) as service:
        assert error_of(service, "RepositoryIndex", proto.RepositoryIndexRequest()).code() == (
            grpc.StatusCode.PERMISSION_DENIED
        )


def test_the_apps_repository_rpcs_are_the_rest_routes(repo: Repo, tmp_path: Path) -> None:
    """The app's gRPC port answers the repository RPCs through the service's own model manager, as REST does."""
    root = tmp_path / "models"
    shutil.copytree(repo.root, root)
    with serve_grpc(root, model_control_mode="explicit", grpc_port=free_port(), workers=1) as service:
        index, _ = call(service, "RepositoryIndex", proto.RepositoryIndexRequest())
        rest = service.http.post("/v2/repository/index", json={}).json()
        assert [(m.name, m.version, m.state) for m in index.models] == [
            (e["name"], e.get("version", ""), e["state"]) for e in rest
        ]
        call(service, "RepositoryModelUnload", proto.RepositoryModelUnloadRequest(model_name="iris"))
        assert service.http.get("/v2/models/iris/ready").status_code == 404
