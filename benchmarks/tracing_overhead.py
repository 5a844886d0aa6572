"""What request tracing costs per request, off and on, next to the work of a batch-1 gRPC inference.

In one process, no server: the blocking part of a ``ModelInfer`` (decode, predict, encode of the committed
digits model, one row) timed three ways, each the median of ``--repeat`` rounds of ``--number`` calls (bare
and off interleaved round by round, on after them):

- bare: the three steps with no tracing code at all;
- off: the service's own ``dataplane.infer_grpc`` with tracing off (``step(None, ...)`` around each step);
- on: the same with a server span and its three child spans, the SDK's ``BatchSpanProcessor`` and an exporter
  that drops the spans (what the SDK costs, not the network).

    python -m benchmarks.tracing_overhead [--number 2000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks.harness import MODELS
from service import proto, v2_grpc
from service.dataplane import Limits, RequestInfo, infer_grpc
from service.lifecycle import ModelManager
from service.tracing import Tracing, step


def one_row_request() -> Any:
    x = np.arange(64, dtype="<f4").reshape(1, 64) % 17  # (1, 64)
    request = proto.ModelInferRequest(model_name="digits", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    return request


def per_call_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - start) / number)
    return statistics.median(rounds) * 1e6


class _DropAll:
    """A span exporter that accepts and forgets (the SDK's export path without a network)."""

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    model = ModelManager(MODELS, mode="none").start().get("digits")
    request = one_row_request()

    def bare() -> object:
        decoded = v2_grpc.parse_infer_request(request, model, 10_000)
        results = model.predict(decoded.x)
        return v2_grpc.encode_infer_response(model, decoded, results)

    limits = Limits(max_body_bytes=16 << 20, max_batch_rows=10_000)

    def off() -> object:  # the service's own path with tracing off
        return infer_grpc(model, request, limits, RequestInfo("r"))

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_DropAll()))  # type: ignore[arg-type]
    tracing = Tracing(provider)
    carrier = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}

    def on() -> object:  # what the gRPC transport adds around it with tracing on
        info = RequestInfo("r")
        info.trace = tracing.start(
            "inference.GRPCInferenceService/ModelInfer", carrier, {"rpc.system": "grpc"}
        )
        out = infer_grpc(model, request, limits, info)
        info.trace.finish(model.name, model.version, info.rows, {"rpc.grpc.status_code": 0})
        return out

    def three_null_steps() -> None:
        with step(None, "decode"):
            pass
        with step(None, "inference"):
            pass
        with step(None, "encode"):
            pass

    steps_only = per_call_us(three_null_steps, args.number * 10, args.repeat)
    # bare and off interleaved (a change in the machine's load hits both), then on: its export thread and
    # garbage would otherwise slow whichever round follows it.
    rounds: dict[str, list[float]] = {"bare": [], "off": []}
    for _ in range(args.repeat):
        for name, fn in (("bare", bare), ("off", off)):
            rounds[name].append(per_call_us(fn, args.number, 1))
    rounds["on"] = [per_call_us(on, args.number, 1) for _ in range(args.repeat)]
    figures = {name: statistics.median(values) for name, values in rounds.items()}
    fastest = {name: min(values) for name, values in rounds.items()}
    provider.shutdown()
    print(
        f"batch-1 ModelInfer work (decode + predict + encode), {args.repeat} rounds of {args.number} calls:"
    )
    for name, us in figures.items():
        print(
            f"  {name:4s} median {us:8.2f} us/request ({us - figures['bare']:+.2f} vs bare), "
            f"fastest round {fastest[name]:8.2f} ({fastest[name] - fastest['bare']:+.2f})"
        )
    print(f"  three step(None, ...) calls alone: {steps_only:.3f} us")


if __name__ == "__main__":
    main()
