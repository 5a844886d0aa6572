"""The real server: ``python -m service`` in a subprocess on a free 127.0.0.1 port, driven by real clients.

Serves the committed ``models/`` repository (the digits model) and checks it against the ONNX reference
evaluator. Every wait is bounded; every server started here is stopped here.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from onnx.reference import ReferenceEvaluator
from tritonclient.utils import InferenceServerException

from benchmarks.harness import MODELS, ROOT, LiveServer, free_port
from tests.service.conftest import broken_variants, write_model

DIGITS = MODELS / "digits" / "1" / "model.onnx"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    srv = LiveServer("--model-repository", str(MODELS), env={"BNSERVE_LOG_FORMAT": "json"})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def reference() -> ReferenceEvaluator:
    return ReferenceEvaluator(str(DIGITS))


def digits_rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 17, size=(n, 64)).astype(np.float32)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient(server: LiveServer, reference: ReferenceEvaluator, binary: bool) -> None:
    client = triton.InferenceServerClient(
        f"127.0.0.1:{server.port}", connection_timeout=10, network_timeout=10
    )
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        meta = client.get_model_metadata("digits")
        assert meta["platform"] == "onnx_onnxv1" and meta["inputs"][0]["shape"] == [-1, 64]

        x = digits_rows(8)
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outputs = (
            None
            if binary
            else [
                triton.InferRequestedOutput("probabilities", binary_data=False),
                triton.InferRequestedOutput("label", binary_data=False),
            ]
        )
        result = client.infer("digits", [inp], outputs=outputs, request_id="t-1")
        assert result.get_response()["id"] == "t-1"
        want_p, want_k = reference.run(["probabilities", "label"], {"input": x})
        np.testing.assert_allclose(result.as_numpy("probabilities"), want_p, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(result.as_numpy("label"), want_k)

        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            client.infer("nope", [inp])
        bad = triton.InferInput("input", [1, 63], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 63), np.float32), binary_data=binary)
        with pytest.raises(InferenceServerException, match="expected 64 features per row, got 63"):
            client.infer("digits", [bad])
    finally:
        client.close()


def post(
    server: LiveServer, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    request = urllib.request.Request(server.url(path), data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_readme_tritonclient_example(server: LiveServer) -> None:
    """docs/examples/triton_client.py, as the README shows it, against the real server."""
    out = subprocess.run(
        [sys.executable, "docs/examples/triton_client.py", "--url", f"127.0.0.1:{server.port}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "server ready: True | model ready: True"
    assert lines[1].startswith("binary: labels [0, 1, 2] (true [0, 1, 2])")
    assert lines[2].startswith("JSON  : labels [0, 1, 2] (true [0, 1, 2])")


def test_plain_http_row_independence(server: LiveServer) -> None:
    x = digits_rows(100, seed=1)
    body = {"inputs": [{"name": "input", "shape": [100, 64], "datatype": "FP32", "data": x.tolist()}]}
    status, batch = post(server, "/v2/models/digits/infer", json.dumps(body).encode())
    assert status == 200
    probs = np.reshape(batch["outputs"][0]["data"], (100, 10))
    for i in range(0, 100, 9):
        one = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x[i].tolist()}]}
        # urllib sends a form content-type by default; no header at all is tested below with curl
        status, alone = post(server, "/v2/models/digits/infer", json.dumps(one).encode())
        assert status == 200
        np.testing.assert_array_equal(alone["outputs"][0]["data"], probs[i])


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl(server: LiveServer, reference: ReferenceEvaluator) -> None:
    x = digits_rows(2, seed=2)
    payload = json.dumps({"instances": x.tolist()})
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-X",
            "POST",
            server.url("/v1/models/digits:predict"),
            "-H",
            "Content-Type:",
            "-d",
            payload,
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    predictions = json.loads(out)["predictions"]
    want_p, want_k = reference.run(["probabilities", "label"], {"input": x})
    assert [p["label"] for p in predictions] == want_k.tolist()
    np.testing.assert_allclose(
        [list(p["probabilities"].values()) for p in predictions], want_p, rtol=1e-5, atol=1e-6
    )
    metrics = subprocess.run(
        ["curl", "-sS", "--max-time", "10", server.url("/metrics")],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    assert 'bnserve_requests_total{model="digits",protocol="v1",status="200"}' in metrics


def test_access_log_is_json_without_the_key(server: LiveServer) -> None:
    status, _ = post(
        server, "/v1/models/digits:predict", b'{"instances": [[0]]}', {"X-Request-ID": "abc-123"}
    )
    assert status == 400
    line = json.loads(server.wait_for_line('"request_id":"abc-123"'))
    assert line["status"] == 400 and line["model"] == "digits" and line["path"] == "/v1/models/digits:predict"


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0() -> None:
    srv = LiveServer("--model-repository", str(MODELS), "--graceful-timeout", "5")
    try:
        srv.wait_ready()
        body = json.dumps({"instances": digits_rows(1).tolist()}).encode()
        head = (
            f"POST /v1/models/digits:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(head + body[:10])  # the request is now in flight, its body incomplete
            # A request on a second connection, answered: by then the loop has read the first connection's
            # bytes too (a SIGTERM before that read would find no request in flight and close the socket).
            with urllib.request.urlopen(srv.url("/v2/health/live"), timeout=10) as r:
                assert r.status == 200
            srv.proc.send_signal(signal.SIGTERM)
            srv.wait_for_line("Shutting down")
            sock.sendall(body[10:])
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        status_line, _, rest = reply.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 200 OK"
        assert b'"predictions"' in rest
        assert srv.proc.wait(timeout=20) == 0
    finally:
        srv.stop()


def test_start_up_refuses_a_broken_model(tmp_path: Path) -> None:
    content, phrase = broken_variants()["features"]
    assert content is not None
    path = write_model(tmp_path, "broken", 1, content)
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model-repository", str(tmp_path), "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert errors == [f"bnserve: cannot start: {path}: {phrase}"]
