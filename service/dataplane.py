"""The data plane: request bytes -> float32 rows -> the model -> response bytes, per protocol. No HTTP here.

Each protocol is one ``decode_*`` function of the model, the request's bytes and the few transport facts it
needs (the content coding, the V2 binary header length), returning the request's rows and how to encode its
answer (a :class:`Decoded`); errors are the typed :mod:`service.errors`. The HTTP routes and the gRPC server
hand them to :meth:`Offload.infer`, which decides where the work runs: small bodies on the event loop, their
rows batched with the other requests of the same loop iteration (:mod:`service.batching`), larger ones whole
on the inference threads. Each step (decode, inference, encode) is a child span of the request's when the
request is traced (:mod:`service.tracing`; a shared no-op otherwise).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import re
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

from service import v1, v2, v2_grpc
from service.batching import Batcher
from service.errors import BadRequest, PayloadTooLarge
from service.runtime import ModelRuntime
from service.tracing import RequestTrace, step

JSON = "application/json"
T = TypeVar("T")

# Request ids: 16 random hex digits per process, then a counter; unique like uuid4, a fraction of its cost.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


#: A request id a caller may give (HTTP's X-Request-ID, gRPC's x-request-id): short, no spaces or controls.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def new_request_id() -> str:
    """A fresh 32-hex-digit request id, unique across processes and restarts."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def request_id(given: str | None) -> str:
    """The caller's request id when it follows :data:`REQUEST_ID`, else a fresh one."""
    return given if given and REQUEST_ID.fullmatch(given) else new_request_id()


@dataclass
class RequestInfo:
    """Per-request facts the transport and the data plane fill in for the access log, metrics and span."""

    request_id: str
    model: str = ""
    version: int | None = None
    rows: int | None = None
    trace: RequestTrace | None = None  # the request's span, when tracing is on


@dataclass(frozen=True)
class Limits:
    """What one request may carry: bytes (after decompression too) and rows."""

    max_body_bytes: int
    max_batch_rows: int


@dataclass
class Reply:
    """An encoded answer: the body and the headers that describe it (its Content-Type at least)."""

    body: bytes
    headers: dict[str, str]

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The response's header fields as ASGI sends them, those of ``starlette.responses.Response(body,
        headers=headers)`` in the same order: lower-case names, then the Content-Length."""
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        raw.append((b"content-length", str(len(self.body)).encode("latin-1")))
        return raw


_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (``gzip``, ``deflate``, ``identity``; names are case-insensitive, RFC 9110),
    never beyond ``limit`` bytes.

    gzip follows RFC 1952: a body may hold several members one after another (their contents concatenated),
    each must be complete, with its CRC-32 and length trailer checked (by zlib), and nothing may follow the
    last one. deflate is the zlib format (RFC 1950), as tritonclient sends it, complete with its checksum.
    """
    coding = (encoding or "").strip().lower()
    if coding in ("", "identity"):
        return body
    wbits = _WBITS.get(coding)
    if wbits is None:
        raise BadRequest(f"unsupported Content-Encoding {coding[:32]!r}; use gzip, deflate or identity")
    out: list[bytes] = []
    size = 0
    rest = body
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            chunk = inflater.decompress(rest, limit + 1 - size)
        except zlib.error:
            raise BadRequest(f"the body is not valid {coding} data") from None
        size += len(chunk)
        out.append(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the decompressed body exceeds the limit of {limit} bytes")
        if not inflater.eof:  # the output limit was not reached, so the input ran out: cut short
            raise BadRequest(f"the {coding} body is truncated (no complete end of stream and trailer)")
        rest = inflater.unused_data
        if not rest:
            return b"".join(out)
        if coding == "deflate" or not rest.startswith(b"\x1f\x8b"):
            raise BadRequest(f"the {coding} body has {len(rest)} bytes of garbage after its end")


@dataclass
class Decoded(Generic[T]):
    """A decoded request: its model, its float32 rows, the hidden outputs it names, and how to encode its answer
    from the model's outputs."""

    model: ModelRuntime
    x: np.ndarray  # (N, F)
    hidden: list[str]
    encode: Callable[[dict[str, np.ndarray]], T]
    categorical: np.ndarray | None = None  # (N, K) str: the ``categorical`` input of a model that has one


class Prepared(NamedTuple):
    """An inference request before decoding: the decode function and its arguments (the model already looked
    up), and whether the body is compressed (then it is decoded on the inference threads)."""

    decode: Callable[..., Decoded[Any]]
    args: tuple[Any, ...]
    compressed: bool


def decode_v2(
    model: ModelRuntime,
    body: bytes,
    encoding: str | None,
    header_length: str | None,
    limits: Limits,
    info: RequestInfo,
) -> Decoded[Reply]:
    """Open Inference Protocol (V2) ``infer``: JSON or binary tensors in, the requested outputs out."""
    with step(info.trace, "decode"):
        body = decompress(body, encoding, limits.max_body_bytes)
        request = v2.parse_infer_request(body, header_length, model, limits.max_batch_rows)
    info.rows = len(request.x)
    hidden = [name for name, _ in request.outputs if name in model.hidden_output_names]  # asked for by name

    def encode(results: dict[str, np.ndarray]) -> Reply:
        with step(info.trace, "encode"):
            content, headers = v2.encode_infer_response(model, request, results)
        return Reply(content, headers)

    return Decoded(model, request.x, hidden, encode, request.categorical)


def decode_grpc(model: ModelRuntime, request: Any, limits: Limits, info: RequestInfo) -> Decoded[Any]:
    """Open Inference Protocol over gRPC ``ModelInfer``: a ``ModelInferRequest`` in, its response out."""
    with step(info.trace, "decode"):
        decoded = v2_grpc.parse_infer_request(request, model, limits.max_batch_rows)
    info.rows = len(decoded.x)
    hidden = [name for name, _ in decoded.outputs if name in model.hidden_output_names]  # asked for by name

    def encode(results: dict[str, np.ndarray]) -> Any:
        with step(info.trace, "encode"):
            return v2_grpc.encode_infer_response(model, decoded, results)

    return Decoded(model, decoded.x, hidden, encode, decoded.categorical)


def decode_v1(
    model: ModelRuntime, body: bytes, encoding: str | None, limits: Limits, info: RequestInfo
) -> Decoded[Reply]:
    """V1 ``:predict``: ``{"instances": ...}`` in, ``{"predictions": ...}`` out."""
    with step(info.trace, "decode"):
        body = decompress(body, encoding, limits.max_body_bytes)
        x, categorical = v1.parse_predict_request(body, model, limits.max_batch_rows)
    info.rows = len(x)

    def encode(results: dict[str, np.ndarray]) -> Reply:
        with step(info.trace, "encode"):
            return Reply(v1.encode_predict_response(model, results), {"Content-Type": JSON})

    return Decoded(model, x, [], encode, categorical)


def _whole(decode: Callable[..., Decoded[T]], info: RequestInfo, *args: Any) -> T:
    """Decode, predict and encode in one go (on an inference thread)."""
    decoded = decode(*args)
    with step(info.trace, "inference"):
        results = decoded.model.predict(decoded.x, decoded.hidden, decoded.categorical)
    return decoded.encode(results)


def infer_v2(
    model: ModelRuntime, body: bytes, encoding: str | None, header_length: str | None, limits: Limits,
    info: RequestInfo,
) -> Reply:  # fmt: skip
    """:func:`decode_v2`, the model and the encoding, in one synchronous call (no batching)."""
    return _whole(decode_v2, info, model, body, encoding, header_length, limits, info)


def infer_grpc(model: ModelRuntime, request: Any, limits: Limits, info: RequestInfo) -> Any:
    """:func:`decode_grpc`, the model and the encoding, in one synchronous call (no batching)."""
    return _whole(decode_grpc, info, model, request, limits, info)


def predict_v1(
    model: ModelRuntime, body: bytes, encoding: str | None, limits: Limits, info: RequestInfo
) -> Reply:
    """:func:`decode_v1`, the model and the encoding, in one synchronous call (no batching)."""
    return _whole(decode_v1, info, model, body, encoding, limits, info)


class Offload:
    """Where the parts of an inference run: decoding and encoding, and the model.

    Small uncompressed bodies (up to ``inline_max_bytes``) are decoded and encoded on the event loop, where
    their work (~0.1 ms) costs less than the hop to a thread and back (two thread wake-ups and a GIL hand-off,
    ~65 us), and their rows go through the :class:`~service.batching.Batcher`: the requests that reach the
    model in the same loop iteration share one onnxruntime run. Larger or compressed ones run whole (decode,
    onnxruntime, encode) on a plain thread pool, off the event loop: their own rows already make a batch.
    ``batching=False`` gives each inline request its own run.
    """

    def __init__(
        self,
        inline_max_bytes: int,
        threads: int | None = None,
        batching: bool = True,
        in_flight: Callable[[], int | None] | None = None,
    ) -> None:
        """``in_flight``: how many requests the process is serving (a lone one skips the batcher's wait)."""
        self.inline_max_bytes = inline_max_bytes
        self._executor = ThreadPoolExecutor(
            max_workers=threads or max(2, os.cpu_count() or 1), thread_name_prefix="infer"
        )
        self.batcher = Batcher(self._executor, in_flight=in_flight) if batching else None

    async def infer(
        self,
        body_size: int,
        compressed: bool,
        decode: Callable[..., Decoded[T]],
        info: RequestInfo,
        *args: Any,
    ) -> T:
        """``decode(*args)``, the model on its rows, and the encoded answer, on the loop or on the inference
        threads, by the size and coding of the body."""
        if self.inline_max_bytes and not compressed and body_size <= self.inline_max_bytes:
            decoded = decode(*args)
            with step(info.trace, "inference"):
                if self.batcher is None:
                    results = decoded.model.predict(decoded.x, decoded.hidden, decoded.categorical)
                else:
                    results = await self.batcher.infer(
                        decoded.model, decoded.x, decoded.hidden, decoded.categorical
                    )
            return decoded.encode(results)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(_whole, decode, info, *args)
        )

    def close(self) -> None:
        """Let the running calls finish, then stop the threads."""
        self._executor.shutdown()
