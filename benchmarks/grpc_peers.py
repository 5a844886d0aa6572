"""bnserve's gRPC port against Triton's, same model and same client: ModelInfer at batch 1 and 64, 1/8/32 streams.

Each server runs alone (started, driven, stopped), so the two never share the cores. The client is one
``grpc.aio`` process holding one channel (one HTTP/2 connection, as ``tritonclient.grpc`` uses) with N RPCs in
flight at any time; every request is the same pre-serialized ``ModelInferRequest`` (the first digits image,
repeated ``batch`` times, as ``raw_input_contents``, which is what tritonclient sends), and each answer is
checked once before the timing starts. The client runs on the same two cores as the server: absolute figures
are the pair's, the ratio is what to read.

Triton comes from ``../shared/tools/peers`` (``setup`` installs it under ``PEERS_CACHE``, default
``/var/tmp/bnserve-peers``): its python-backend ``digits`` model, dynamic batching on, started as that
directory's ``bench`` starts it, with a gRPC port.

    python -m benchmarks.grpc_peers [--seconds 5] [--batches 1,64] [--streams 1,8,32] [--only bnserve,triton]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sysconfig
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import LiveServer, free_port
from service import proto

CACHE = Path(os.environ.get("PEERS_CACHE", "/var/tmp/bnserve-peers"))
ROW = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0]
ROW += [0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]
INFER = proto.method_path("ModelInfer")


def start(name: str, http: int, grpc: int) -> LiveServer:
    """Server ``name`` (bnserve or triton) listening on ``http`` and ``grpc``; not ready yet."""
    if name == "bnserve":
        return LiveServer("--grpc-port", str(grpc), port=http, name=name)
    if name != "triton":
        raise ValueError(f"unknown server {name!r}: bnserve or triton")
    triton = CACHE / "ptx/pytriton/tritonserver"
    command = [
        str(triton / "bin/tritonserver"),
        f"--model-repository={CACHE / 'triton-repo'}",
        f"--backend-directory={triton / 'backends'}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={free_port()}",
        "--log-verbose=0",
    ]
    env = {"LD_LIBRARY_PATH": sysconfig.get_config_var("LIBDIR") or ""}
    return LiveServer(command=command, port=http, env=env, name=name)


def request_bytes(batch: int) -> bytes:
    x = np.tile(np.asarray(ROW, dtype="<f4"), (batch, 1))  # (batch, 64)
    request = proto.ModelInferRequest(model_name="digits", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=[batch, 64])
    return request.SerializeToString()


def check(answer: bytes, batch: int) -> None:
    """The answer is the digit 0 for every row (the image is a 0), whichever server gave it."""
    response = proto.ModelInferResponse.FromString(answer)
    names = [o.name for o in response.outputs]
    label = np.frombuffer(response.raw_output_contents[names.index("label")], "<i8")
    if label.shape != (batch,) or (label != 0).any():
        raise RuntimeError(f"wrong answer: labels {label[:5]}")


async def drive(address: str, batch: int, streams: int, seconds: float) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, failed) with ``streams`` RPCs in flight on one channel for ``seconds``."""
    from grpc import aio

    body = request_bytes(batch)
    latencies: list[float] = []
    failed = 0
    async with aio.insecure_channel(address) as channel:
        infer = channel.unary_unary(INFER)  # bytes in, bytes out: no client-side (de)serialization
        check(await infer(body, timeout=30), batch)
        deadline = time.perf_counter() + seconds

        async def stream() -> None:
            nonlocal failed
            while (start := time.perf_counter()) < deadline:
                try:
                    await infer(body, timeout=30)
                except Exception:
                    failed += 1
                    continue
                latencies.append(time.perf_counter() - start)

        began = time.perf_counter()
        await asyncio.gather(*(stream() for _ in range(streams)))
        elapsed = time.perf_counter() - began
    if not latencies:
        return 0.0, float("nan"), float("nan"), failed
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return len(latencies) / elapsed, q[49] * 1e3, q[98] * 1e3, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--streams", default="1,8,32")
    parser.add_argument("--only", default="bnserve,triton")
    args = parser.parse_args()
    results: dict[tuple[str, int, int], tuple[float, float, float, int]] = {}
    print("| server | batch | streams | req/s | rows/s | p50 ms | p99 ms | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.only.split(","):
        grpc_port = free_port()
        server = start(name, free_port(other_than=grpc_port), grpc_port)
        try:
            server.wait_ready(timeout=120)
            address = f"127.0.0.1:{grpc_port}"
            asyncio.run(drive(address, 1, 8, 1.0))  # warm-up
            for batch in map(int, args.batches.split(",")):
                for streams in map(int, args.streams.split(",")):
                    r = results[name, batch, streams] = asyncio.run(
                        drive(address, batch, streams, args.seconds)
                    )
                    print(
                        f"| {name} | {batch} | {streams} | {r[0]:,.0f} | {r[0] * batch:,.0f} | {r[1]:.2f} "
                        f"| {r[2]:.2f} | {r[3]} |",
                        flush=True,
                    )
        except Exception as exc:
            print(f"| {name} | | | did not run: {exc} | | | | |", flush=True)
        finally:
            server.stop()
    if "bnserve" in args.only and "triton" in args.only:
        print("\nbnserve / triton (same batch and streams): throughput, p99")
        for (name, batch, streams), r in results.items():
            peer = results.get(("triton", batch, streams))
            if name == "bnserve" and peer:
                print(
                    f"- batch {batch}, {streams} streams: {r[0] / max(peer[0], 1e-9):.2f}x, {r[2] / peer[2]:.2f}x"
                )


if __name__ == "__main__":
    main()
