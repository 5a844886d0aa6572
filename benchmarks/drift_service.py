"""What drift monitoring costs a served prediction: the same requests with BNSERVE_DRIFT_ENABLED on and off.

    python -m benchmarks.drift_service [--model-repository models] [--requests 300]

Two measurements on the first model of the repository, for requests of 1 and 64 rows (held-out-like rows:
the model's training means plus noise):

* ``predict``: ``ModelRuntime.predict`` (onnxruntime + finiteness check + observers), with and without the
  drift monitor among its observers; the monitor's share of the work a request does in the threadpool.
* ``http``: a V2 JSON inference request through the whole in-process app (FastAPI TestClient), drift on
  vs off.

On and off alternate in blocks, so slow phases of a shared machine hit both; each reports its fastest
block (the least disturbed by other work), in microseconds per request.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def alternate(
    on: Callable[[], object], off: Callable[[], object], calls: int, blocks: int
) -> tuple[float, float]:
    """Microseconds per call of ``on`` and ``off`` in their fastest block, timed in alternating blocks."""
    on(), off()  # warm-up
    t_on, t_off = [], []
    for _ in range(blocks):
        t_on.append(per_call_us(on, calls))
        t_off.append(per_call_us(off, calls))
    return min(t_on), min(t_off)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--requests", type=int, default=300, help="requests per block")
    parser.add_argument("--blocks", type=int, default=7)
    args = parser.parse_args()
    logging.getLogger("service.drift").setLevel(logging.ERROR)
    apps = {
        enabled: create_app(
            Settings(
                model_repository=args.model_repository,
                access_log=False,
                drift_enabled=enabled,
                grpc_port=0,  # HTTP only: two apps at once, and the default gRPC port may be taken
            )
        )
        for enabled in (True, False)
    }
    with TestClient(apps[True]) as on, TestClient(apps[False]) as off:
        model_on = next(iter(apps[True].state.service.repository))
        model_off = apps[False].state.service.repository.get(model_on.name, str(model_on.version))
        stats = model_on.contract.input_stats
        rng = np.random.default_rng(0)
        print(
            f"model {model_on.name}/{model_on.version}, {model_on.n_features} features; microseconds per "
            f"request, best of {args.blocks} blocks ({args.requests} predict, {args.requests // 3} http calls)"
        )
        print(
            f"{'rows':>5}  {'predict on':>10}  {'off':>8}  {'diff':>6}  {'http on':>8}  {'off':>8}  {'diff':>6}"
        )
        for n in (1, 64):
            x = np.asarray(stats.mean) + rng.normal(size=(n, model_on.n_features)) * np.asarray(stats.std)
            x = x.astype(np.float32)  # (n, F)
            p_on, p_off = alternate(
                lambda x=x: model_on.predict(x), lambda x=x: model_off.predict(x), args.requests, args.blocks
            )
            tensor = {
                "name": "input",
                "shape": [n, x.shape[1]],
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
            body, path = {"inputs": [tensor]}, f"/v2/models/{model_on.name}/infer"
            h_on, h_off = alternate(
                lambda b=body, p=path: on.post(p, json=b),
                lambda b=body, p=path: off.post(p, json=b),
                args.requests // 3,
                args.blocks,
            )
            print(
                f"{n:>5}  {p_on:>10.1f}  {p_off:>8.1f}  {p_on - p_off:>+6.1f}  "
                f"{h_on:>8.1f}  {h_off:>8.1f}  {h_on - h_off:>+6.1f}"
            )


if __name__ == "__main__":
    main()
