"""New versions arrive while a real server is under load: none fails, bad ones never answer, good ones go live.

``python -m service`` in poll mode on 127.0.0.1, clients sending unversioned V2 requests back to back, while
versions 2..5 of ``digits`` are placed the way training places them (a hidden folder renamed into place):
2 good, 3 corrupt, 4 with a contract its graph contradicts, 5 good. Every answer is checked against the
closed form of the version it names, so an answer from a version that should never serve cannot pass.
Then tritonclient's repository calls against an explicit-mode server.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from benchmarks.harness import LiveServer
from benchmarks.swap import Load, place_version, swap_latency
from tests.service.conftest import DIGIT_FEATURES, TinyModel, build_onnx, make_contract, tiny_model

pytestmark = pytest.mark.slow

POLL_SECONDS = 0.5
X = np.random.default_rng(5).normal(size=(1, 64)).astype(np.float32)
BODY = orjson.dumps(
    {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": X.ravel().tolist()}]}
)


def versions() -> tuple[dict[int, TinyModel], dict[int, bytes]]:
    """The good versions' closed forms, and the bytes of every version 1..5."""
    good, data = {}, {}
    for v in (1, 2, 5):
        tiny, proto = tiny_model("digits", v, "classification", DIGIT_FEATURES, list(range(10)), seed=10 + v)
        good[v], data[v] = tiny, proto.SerializeToString()
    data[3] = data[2][: len(data[2]) // 2]  # half a file: what a copy interrupted would leave
    rng = np.random.default_rng(4)
    wide = make_contract("classification", [*DIGIT_FEATURES, "extra"], list(range(10)), rng)
    data[4] = build_onnx("classification", good[2].W, good[2].b, wide.to_metadata()).SerializeToString()
    return good, data


def post(server: LiveServer, path: str, body: dict | None = None) -> tuple[int, object]:
    request = urllib.request.Request(server.url(path), data=json.dumps(body or {}).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            text = r.read()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("workers", [1, 2])
def test_versions_arrive_under_load(tmp_path: Path, workers: int) -> None:
    good, data = versions()
    root = tmp_path / "models"
    (root / "digits").mkdir(parents=True)
    place_version(root, "digits", 1, data[1])
    # One process polls only (the file watch off), two use file events: polling must work without them.
    file_events = "true" if workers > 1 else "false"
    server = LiveServer(
        "--model-repository", str(root), "--model-control-mode", "poll", "--repository-poll-seconds",
        str(POLL_SECONDS), "--repository-file-events", file_events, "--workers", str(workers),
        "--access-log", "false",
    )  # fmt: skip
    placed: dict[int, float] = {}
    load_ms: dict[int, float] = {}
    live_at: dict[int, float] = {}
    with server:
        server.wait_ready()
        for _ in range(workers):  # every worker has loaded version 1 before version 2 arrives
            server.wait_for_line("Application startup complete", timeout=60)
        load = Load(server.port, "/v2/models/digits/infer", BODY, connections=4)
        load.start()
        try:
            time.sleep(0.5)
            for v in (2, 3, 4, 5):
                placed[v] = place_version(root, "digits", v, data[v])
                if v in good:
                    for _ in range(workers):  # every worker swaps, each on its own
                        line = server.wait_for_line(f"serving digits version {v} ", timeout=POLL_SECONDS + 30)
                        took = re.search(r"swapped in (\d+) ms", line)
                        assert took is not None, line
                        load_ms[v] = max(load_ms.get(v, 0.0), float(took.group(1)))
                    live_at[v] = time.monotonic()
                else:
                    for _ in range(workers):
                        server.wait_for_line(
                            f"model digits version {v} was not loaded", timeout=POLL_SECONDS + 30
                        )
                time.sleep(0.3)
            status, index = post(server, "/v2/repository/index")
            metrics = urllib.request.urlopen(server.url("/metrics"), timeout=10).read().decode()
        finally:
            samples = load.stop()

    failed = [s for s in samples if s.status != 200]
    assert not failed, f"{len(failed)} of {len(samples)} requests failed, first: {failed[0]}"
    assert len(samples) > 100
    served = {s.version for s in samples}
    assert served <= {"1", "2", "5"}, served  # 3 and 4 never answered
    assert {"1", "2", "5"} <= served
    for sample in samples:  # each answer is the closed form of the version it names
        expected = good[int(sample.version)].expected(X)["probabilities"][0]
        np.testing.assert_allclose(sample.outputs, expected, atol=1e-6)
    for v in (2, 5):
        # once every worker said it serves v, no request started later was answered by an older version
        late = [s.version for s in samples if s.started > live_at[v] and int(s.version) < v]
        assert late == [], f"version {v} live, then {len(late)} answers from older versions"
        latency = swap_latency(samples, placed[v], str(v))
        assert latency is not None
        # within the poll interval plus load time (plus slack for a machine shared with other test runs)
        assert latency <= POLL_SECONDS + load_ms[v] / 1e3 + 2.0, (v, latency, load_ms[v])

    assert status == 200
    states = {(e["name"], e["version"]): (e["state"], e["reason"]) for e in index}  # type: ignore[union-attr]
    assert states[("digits", "5")] == ("READY", "")
    assert states[("digits", "1")][0] == states[("digits", "2")][0] == "UNAVAILABLE"
    assert states[("digits", "3")][0] == "UNAVAILABLE"
    assert "failed to load: not a loadable ONNX model" in states[("digits", "3")][1]
    assert "metadata lists 65 features but input 'input' has width 64" in states[("digits", "4")][1]
    failures = re.search(r'^bnserve_model_load_failures_total\{model="digits"\} (\S+)$', metrics, re.M)
    assert failures is not None and float(failures.group(1)) == 2 * workers


def test_tritonclient_repository_calls(tmp_path: Path) -> None:
    good, data = versions()
    root = tmp_path / "models"
    (root / "digits").mkdir(parents=True)
    place_version(root, "digits", 1, data[1])
    key = "repo-key"
    with LiveServer(
        "--model-repository", str(root), "--model-control-mode", "explicit", "--api-key", key
    ) as server:
        server.wait_ready()
        client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        auth = {"Authorization": f"Bearer {key}"}
        with pytest.raises(InferenceServerException, match="API key"):
            client.get_model_repository_index()
        assert client.get_model_repository_index(headers=auth) == [
            {"name": "digits", "version": "1", "state": "READY", "reason": ""}
        ]

        def infer() -> tuple[str, np.ndarray]:
            inp = triton.InferInput("input", [1, 64], "FP32")
            inp.set_data_from_numpy(X)
            result = client.infer("digits", [inp], headers=auth)
            return result.get_response()["model_version"], result.as_numpy("probabilities")

        place_version(root, "digits", 2, data[2])
        assert infer()[0] == "1"  # explicit: nothing changes until asked
        client.load_model("digits", headers=auth)
        version, probabilities = infer()
        assert version == "2"
        np.testing.assert_allclose(probabilities[0], good[2].expected(X)["probabilities"][0], atol=1e-6)

        place_version(root, "digits", 3, data[3])
        with pytest.raises(
            InferenceServerException, match=r"version 3: not a loadable ONNX model.*version 2 stays"
        ):
            client.load_model("digits", headers=auth)
        assert infer()[0] == "2"
        assert client.is_model_ready("digits", headers=auth)

        client.unload_model("digits", headers=auth)
        assert not client.is_model_ready("digits", headers=auth)
        index = client.get_model_repository_index(headers=auth)
        assert {(e["version"], e["state"]) for e in index} == {
            ("1", "UNAVAILABLE"),
            ("2", "UNAVAILABLE"),
            ("3", "UNAVAILABLE"),
        }
        with pytest.raises(InferenceServerException, match="no model 'nope'"):
            client.load_model("nope", headers=auth)
