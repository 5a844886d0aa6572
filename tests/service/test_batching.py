"""Dynamic batching (service.batching): requests that meet in one loop iteration share a run, and nothing a
client sees changes: each request gets exactly the outputs of running its rows alone, its own errors, and the
observers see every served row once."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from service import connections
from service.app import create_app
from service.batching import Batcher
from service.errors import BadRequest
from service.runtime import ModelRuntime, load_model
from tests.service.conftest import settings_for

COMMITTED = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture
def model() -> ModelRuntime:
    """The committed digits model (two hidden layers, their outputs exported), freshly loaded: no observers."""
    return load_model("digits", 1, COMMITTED / "digits" / "1" / "model.onnx")


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 16, (n, 64)).astype(np.float32)  # (n, 64)


def alone(model: ModelRuntime, x: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs of ``x`` run by itself, every graph output (hidden layers too)."""
    names = [o.name for o in model.session.get_outputs()]
    return dict(zip(names, model.session.run(names, {"input": x})))


async def gather_infer(batcher: Batcher, model: ModelRuntime, jobs: list[np.ndarray], **kw: object) -> list:
    return await asyncio.gather(*(batcher.infer(model, x, **kw) for x in jobs), return_exceptions=True)  # type: ignore[arg-type]


def test_requests_of_one_iteration_share_one_run_and_get_their_own_rows_bit_for_bit(
    model: ModelRuntime,
) -> None:
    jobs = [rows(n, seed) for seed, n in enumerate([1, 3, 1, 2, 5, 1])]
    batcher = Batcher()
    results = asyncio.run(gather_infer(batcher, model, jobs))
    assert (batcher.runs, batcher.rows) == (1, 13)
    for x, got in zip(jobs, results, strict=True):
        want = alone(model, x)
        assert set(got) == {
            "probabilities",
            "label",
        }  # what the client asked for, hidden layers only if named
        for name, values in got.items():
            assert values.shape[0] == len(x)
            assert np.array_equal(values, want[name]), name  # batching never changes an answer


def test_named_hidden_outputs_come_back_for_the_request_that_named_them(model: ModelRuntime) -> None:
    a, b = rows(2, 1), rows(3, 2)
    batcher = Batcher()

    async def both() -> list:
        return await asyncio.gather(batcher.infer(model, a, ["layer1.z"]), batcher.infer(model, b))

    got_a, got_b = asyncio.run(both())
    assert batcher.runs == 1
    assert np.array_equal(got_a["layer1.z"], alone(model, a)["layer1.z"])
    assert "layer1.z" not in got_b or np.array_equal(got_b["layer1.z"], alone(model, b)["layer1.z"])


def test_a_request_with_non_finite_outputs_fails_alone(model: ModelRuntime) -> None:
    good1, good2 = rows(2, 3), rows(1, 4)
    bad = rows(3, 5)
    bad[1] = 3e38  # overflows the network: NaN probabilities for that row
    seen: list[np.ndarray] = []
    model.observers.append(seen.append)
    batcher = Batcher()
    results = asyncio.run(gather_infer(batcher, model, [good1, bad, good2]))
    assert batcher.runs == 1
    assert isinstance(results[1], BadRequest)
    assert "for row 1" in results[1].message  # numbered within its own request, not the batch
    assert np.array_equal(results[0]["probabilities"], alone(model, good1)["probabilities"])
    assert np.array_equal(results[2]["label"], alone(model, good2)["label"])
    # The observers saw the answered rows only, once, in arrival order.
    assert len(seen) == 1 and np.array_equal(seen[0], np.concatenate([good1, good2]))


def test_layer_observers_get_the_hidden_outputs_of_the_serving_run(model: ModelRuntime) -> None:
    got: list[tuple[np.ndarray, list[np.ndarray]]] = []
    model.layer_observers.append(lambda x, layers: got.append((x.copy(), [z.copy() for z in layers])))
    jobs = [rows(2, 6), rows(4, 7)]
    batcher = Batcher()
    results = asyncio.run(gather_infer(batcher, model, jobs))
    assert batcher.runs == 1 and all(set(r) == {"probabilities", "label"} for r in results)
    ((x, layers),) = got
    assert np.array_equal(x, np.concatenate(jobs))
    want = alone(model, x)
    assert [z.shape for z in layers] == [(6, 256), (6, 256)]
    assert np.array_equal(layers[0], want["layer0.z"]) and np.array_equal(layers[1], want["layer1.z"])


def test_large_flushes_run_on_the_threads_and_batches_are_capped(model: ModelRuntime) -> None:
    jobs = [rows(4, seed) for seed in range(5)]  # 20 rows
    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(pool, offload_rows=6, max_rows=8)
        results = asyncio.run(gather_infer(batcher, model, jobs))
    assert (batcher.runs, batcher.rows) == (3, 20)  # 8 + 8 + 4 rows: two on the thread, the last on the loop
    for x, got in zip(jobs, results, strict=True):
        assert np.array_equal(got["probabilities"], alone(model, x)["probabilities"])


def test_a_lone_request_runs_at_once_and_concurrent_ones_share_a_run(model: ModelRuntime) -> None:
    """With the server's count of requests in flight: one (this one) runs without waiting for the loop; more
    batch; unknown (None: an app driven in process; 0: not an HTTP request) batches."""
    jobs = [rows(1, seed) for seed in range(4)]
    for in_flight, runs in ((1, 4), (0, 1), (4, 1), (None, 1)):  # 0: a gRPC request, uncounted
        batcher = Batcher(in_flight=lambda n=in_flight: n)  # type: ignore[misc]
        results = asyncio.run(gather_infer(batcher, model, jobs))
        assert batcher.runs == runs, in_flight
        for x, got in zip(jobs, results, strict=True):
            assert np.array_equal(got["probabilities"], alone(model, x)["probabilities"])
    bad = rows(1, 9)
    bad[0] = 3e38
    lone = Batcher(in_flight=lambda: 1)
    assert isinstance(asyncio.run(gather_infer(lone, model, [bad]))[0], BadRequest)  # its own error, at once


def test_wrong_rows_are_refused_before_they_join_a_batch(model: ModelRuntime) -> None:
    batcher = Batcher()
    results = asyncio.run(gather_infer(batcher, model, [rows(1, 0), rows(1, 1)[:, :63]]))
    assert isinstance(results[1], BadRequest) and "64 features" in results[1].message
    assert batcher.runs == 1 and batcher.rows == 1


def test_concurrent_http_requests_answer_as_they_would_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the whole app (V2 JSON and V1, small bodies inline): the same bytes as one at a time, fewer runs."""
    monkeypatch.setattr(connections, "_server_state", None)  # in process: no uvicorn count, so batch
    settings = settings_for(COMMITTED)
    app = create_app(settings)
    bodies = [
        orjson.dumps(
            {
                "inputs": [
                    {"name": "input", "shape": [len(x), 64], "datatype": "FP32", "data": x.ravel().tolist()}
                ]
            }
        )
        for x in (rows(n, 10 + n) for n in (1, 2, 1, 3, 1, 1, 2, 1))
    ]
    v1_body = orjson.dumps({"instances": rows(2, 99).tolist()})

    async def run() -> tuple[list[httpx.Response], list[httpx.Response], int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

                async def post(url: str, body: bytes) -> httpx.Response:
                    return await client.post(url, content=body, headers={"Content-Type": "application/json"})

                infer = "/v2/models/digits/infer"
                one_by_one = [await post(infer, b) for b in bodies] + [
                    await post("/v1/models/digits:predict", v1_body)
                ]
                batcher = app.state.service.offload.batcher
                runs_before = batcher.runs
                together = await asyncio.gather(
                    *(post(infer, b) for b in bodies), post("/v1/models/digits:predict", v1_body)
                )
                return one_by_one, list(together), batcher.runs - runs_before

    one_by_one, together, runs = asyncio.run(run())
    assert [r.status_code for r in together] == [200] * len(together)
    assert [r.content for r in together] == [r.content for r in one_by_one]
    assert runs < len(together)  # some requests shared a run
