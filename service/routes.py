"""The route table: every HTTP operation once, its endpoint, whether it needs the key, whether it is hot.

One endpoint per operation: routes under ``/v2/models/{name}`` exist unversioned and under
``/versions/{version}``, and both call the same endpoint, with ``version=None`` for the highest version. The
table feeds FastAPI (:func:`register`: routing, OpenAPI), the fast path (:mod:`service.fastpath`) and the
wire path (:mod:`service.wire`), which serve the hot routes, those with a ``prepare``, themselves. The key is
decided by :class:`service.auth.ApiKey` on every way; the body limit by
:class:`service.middleware.RequestContext` (by the wire path's Content-Length rule on its own).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service import dataplane, schemas, v1, v2
from service.auth import ApiKey
from service.dataplane import JSON, RequestInfo
from service.errors import BadRequest, NotReady
from service.lifecycle import ModelManager
from service.metrics import CONTENT_TYPE
from service.middleware import request_info
from service.openapi import SECURITY_SCHEME, errors, json_body
from service.runtime import ModelRuntime
from service.state import ServiceState

#: An endpoint: ``(request, **path parameters) -> Response``; ``version`` is None on unversioned paths.
Endpoint = Callable[..., Awaitable[Response]]
#: A hot (inference) route's first step: ``(info, body, raw headers, **path parameters) -> Prepared``, the model
#: looked up and the decode to run. The FastAPI endpoint and the fast path hand it to :func:`offload`;
#: :mod:`service.wire` runs the rest without a task.
Prepare = Callable[..., dataplane.Prepared]
#: The request headers as the server gives them: lower-case names, bytes.
RawHeaders = list[tuple[bytes, bytes]]
_HEADER_LENGTH = v2.HEADER_LENGTH.lower().encode("latin-1")


def find_headers(headers: RawHeaders, *names: bytes) -> tuple[str | None, ...]:
    """The first value of each of ``names`` (lower case) in ``headers``, as text, or None: one pass."""
    found: list[str | None] = [None] * len(names)
    for key, value in headers:
        if key in names:
            i = names.index(key)
            if found[i] is None:
                found[i] = value.decode("latin-1")
    return tuple(found)


@dataclass(frozen=True)
class Route:
    """One method and path of the table, the endpoint that answers it, and its OpenAPI description."""

    method: str
    path: str
    endpoint: Endpoint
    summary: str
    doc: dict[str, Any]  # further FastAPI route arguments: tags, responses, response_model, ...
    name: str = ""  # in the OpenAPI operation id; the endpoint's name by default
    guarded: bool = False  # needs the key, when one is set
    prepare: Prepare | None = None  # a hot route's first step (see :data:`Prepare`): served by the fast path
    #: The path as Starlette compiles it (``{param}`` is ``[^/]+``), for the fast path.
    pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.endpoint.__name__)
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path)
        object.__setattr__(self, "pattern", re.compile(regex))


def versioned(
    method: str,
    prefix: str,
    suffix: str,
    endpoint: Endpoint,
    summaries: tuple[str, str],
    doc: dict[str, Any],
    *,
    description: str | None = None,
    version_name: str | None = None,
    prepare: Prepare | None = None,
    **flags: bool,
) -> tuple[Route, Route]:
    """The unversioned route ``prefix + suffix`` (with ``description``) and ``prefix/versions/{version} + suffix``.

    Both call ``endpoint``; their OpenAPI names are the endpoint's and ``version_name`` (``<endpoint>_version``
    by default).
    """
    plain_doc = doc if description is None else {**doc, "description": description}
    name = endpoint.__name__
    return (
        Route(
            method, prefix + suffix, endpoint, summaries[0], plain_doc, name=name, prepare=prepare, **flags,
        ),
        Route(
            method, f"{prefix}/versions/{{version}}{suffix}", endpoint, summaries[1], doc,
            name=version_name or f"{name}_version", prepare=prepare, **flags,
        ),
    )  # fmt: skip


async def offload(
    state: ServiceState, info: RequestInfo, body: bytes, prepared: dataplane.Prepared
) -> dataplane.Reply:
    """A prepared inference request decoded, run and encoded where :class:`dataplane.Offload` decides (the
    FastAPI endpoint's and the fast path's way; :mod:`service.wire` has its own, without a task)."""
    assert state.offload is not None, "the models load before any inference"
    return await state.offload.infer(len(body), prepared.compressed, prepared.decode, info, *prepared.args)


def json_response(content: Any) -> Response:
    return Response(orjson.dumps(content), media_type=JSON)


class Endpoints:
    """The operations, each once. Blocking work (a drift report, a metrics scrape, an inference) runs off
    the event loop."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def _model(self, info: RequestInfo, name: str, version: str | None) -> ModelRuntime:
        """The model ``name`` at ``version`` (the highest when None), noted for the access log and metrics."""
        model = self.state.models().get(name, version)
        info.model, info.version = model.name, model.version
        return model

    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def ready(self, request: Request) -> Response:
        if not self.state.ready:
            raise NotReady("shutting down" if self.state.draining else "the models are not loaded yet")
        return Response(status_code=200)

    async def model_ready(self, request: Request, name: str, version: str | None = None) -> Response:
        self._model(request_info(request), name, version)
        if not self.state.ready:
            raise NotReady("shutting down")
        return Response(status_code=200)

    async def server_metadata(self, request: Request) -> Response:
        return json_response(v2.server_metadata(self.state.version))

    async def model_metadata(self, request: Request, name: str, version: str | None = None) -> Response:
        model = self._model(request_info(request), name, version)
        versions = sorted(self.state.models().models[name]) if version is None else [model.version]
        return json_response(v2.model_metadata(model, versions))

    async def v2_infer(self, request: Request, name: str, version: str | None = None) -> Response:
        return await self._infer(request, self.v2_infer_prepare, name, version)

    async def _infer(self, request: Request, prepare: Prepare, name: str, version: str | None) -> Response:
        info, body = request_info(request), await request.body()
        reply = await offload(
            self.state, info, body, prepare(info, body, request.scope["headers"], name, version)
        )
        return Response(reply.body, headers=reply.headers)

    def v2_infer_prepare(
        self, info: RequestInfo, body: bytes, headers: RawHeaders, name: str, version: str | None = None
    ) -> dataplane.Prepared:
        """V2 ``infer``'s model and decode (every way in: FastAPI, the fast path, :mod:`service.wire`)."""
        model = self._model(info, name, version)
        encoding, header_length = find_headers(headers, b"content-encoding", _HEADER_LENGTH)
        args = (model, body, encoding, header_length, self.state.limits, info)
        return dataplane.Prepared(dataplane.decode_v2, args, encoding is not None)

    async def v1_predict(self, request: Request, name: str, version: str | None = None) -> Response:
        return await self._infer(request, self.v1_predict_prepare, name, version)

    def v1_predict_prepare(
        self, info: RequestInfo, body: bytes, headers: RawHeaders, name: str, version: str | None = None
    ) -> dataplane.Prepared:
        """V1 ``:predict``'s model and decode."""
        model = self._model(info, name, version)
        (encoding,) = find_headers(headers, b"content-encoding")
        args = (model, body, encoding, self.state.limits, info)
        return dataplane.Prepared(dataplane.decode_v1, args, encoding is not None)

    async def v1_status(self, request: Request, name: str) -> Response:
        model = self._model(request_info(request), name, None)
        versions = sorted(self.state.models().models[name])
        return json_response(v1.model_status(model, versions, self.state.ready))

    async def drift(self, request: Request, name: str, version: str | None = None) -> Response:
        model = self._model(request_info(request), name, version)
        return await run_in_threadpool(self._drift_report, model, False)  # ~0.1 ms of numpy

    async def drift_reset(self, request: Request, name: str, version: str | None = None) -> Response:
        model = self._model(request_info(request), name, version)
        return await run_in_threadpool(self._drift_report, model, True)

    def _drift_report(self, model: ModelRuntime, reset: bool) -> Response:
        monitor = self.state.drift_monitor(model)  # waits for the observers to catch up
        if reset:
            monitor.reset()
            reservoir = self.state.samples.get((model.name, model.version))
            if reservoir is not None:  # the live-input sample starts afresh too
                reservoir.reset()
        return json_response(monitor.report() | {"model": model.name, "version": str(model.version)})

    async def drift_sample(self, request: Request, name: str, version: str | None = None) -> Response:
        model = self._model(request_info(request), name, version)
        return await run_in_threadpool(self._sample_csv, model)  # formatting 1000 rows takes milliseconds

    def _sample_csv(self, model: ModelRuntime) -> Response:
        reservoir = self.state.sample(model)  # waits for the observers to catch up
        filename = f"{model.name}-{model.version}-sample.csv"
        return Response(
            reservoir.to_csv(model.contract.numeric_names),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    # ---- the model repository (Triton's extension); the logic is service.lifecycle's -------------------------
    def _manager(self) -> ModelManager:
        if self.state.manager is None:
            raise NotReady("the models are not loaded yet")
        return self.state.manager

    async def repository_index(self, request: Request) -> Response:
        body = await _json_object(request)
        ready_only = body.get("ready", False)
        if not isinstance(ready_only, bool):
            raise BadRequest(f"'ready' must be true or false, got {str(ready_only)[:32]!r}")
        return json_response(await run_in_threadpool(self._manager().index, ready_only))

    async def repository_load(self, request: Request, name: str) -> Response:
        parameters = (await _json_object(request)).get("parameters") or {}
        if isinstance(parameters, dict) and any(k == "config" or k.startswith("file:") for k in parameters):
            raise BadRequest(
                "a load with a config or files in the request is not supported; change the repository"
            )
        await run_in_threadpool(self._manager().load, name)  # loading blocks: off the event loop
        return Response(status_code=200)

    async def repository_unload(self, request: Request, name: str) -> Response:
        await _json_object(request)
        await run_in_threadpool(self._manager().unload, name)
        return Response(status_code=200)

    async def metrics(self, request: Request) -> Response:
        return Response(await run_in_threadpool(self.state.metrics.render), media_type=CONTENT_TYPE)


_INFER_200 = {
    "description": "Outputs; with binary outputs, a JSON header of Inference-Header-Content-Length "
    "bytes followed by the raw tensors.",
    "content": {
        JSON: {"schema": {"$ref": "#/components/schemas/InferenceResponse"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


async def _json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object body; an empty body (what tritonclient sends for the index) is ``{}``."""
    body = await request.body()
    if not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(value).__name__}")
    return value


def _health(ok: str, *codes: int) -> dict[str, Any]:
    return {
        "tags": ["health"],
        "response_class": Response,
        "responses": {200: {"description": ok}, **errors(*codes)},
    }


def _repository(ok: str, *codes: int, description: str) -> dict[str, Any]:
    return {
        "tags": ["repository"],
        "response_class": Response,
        "description": description,
        "responses": {200: {"description": ok}, **errors(*codes)},
    }


def _json(tag: str, model: type, *codes: int, **more: Any) -> dict[str, Any]:
    return {"tags": [tag], "response_model": model, "responses": errors(*codes), **more}


def route_table(state: ServiceState) -> list[Route]:
    """Every route of the service, in FastAPI's matching order."""
    e = Endpoints(state)
    models, v1_models = "/v2/models/{name}", "/v1/models/{name}"
    drift_doc = _json("drift", schemas.DriftReport, 401, 404, 503, response_class=Response)
    infer_doc = {
        "tags": ["v2"],
        "openapi_extra": json_body("InferenceRequest"),
        "responses": {200: _INFER_200, **errors(400, 401, 404, 413, 503)},
        "response_class": Response,
    }
    predict_doc = _json(
        "v1", schemas.V1PredictResponse, 400, 401, 404, 413, 503,
        openapi_extra=json_body("V1PredictRequest"), response_class=Response,
    )  # fmt: skip
    sample_doc = {
        "tags": ["drift"],
        "response_class": Response,
        "responses": {
            200: {
                "description": "CSV: a header of feature names, one sampled row per line.",
                "content": {"text/csv": {}},
            },
            **errors(401, 404, 503),
        },
    }
    metrics_doc = {
        "tags": ["metrics"],
        "response_class": Response,
        "responses": {200: {"description": "Prometheus text format.", "content": {CONTENT_TYPE: {}}}},
    }
    return [
        Route("GET", "/v2/health/live", e.live, "Server live", _health("The process is up (empty body).")),
        Route(
            "GET", "/v2/health/ready", e.ready, "Server ready", _health("Every model is loaded (empty body).", 503)
        ),
        *versioned(
            "GET", models, "/ready", e.model_ready, ("Model ready", "Model version ready"),
            _health("The model is ready (empty body).", 404, 503), version_name="model_version_ready",
        ),
        Route(
            "GET", "/v2", e.server_metadata, "Server metadata", _json("v2", schemas.ServerMetadata, 401),
            guarded=True,
        ),
        *versioned(
            "GET", models, "", e.model_metadata, ("Model metadata", "Model version metadata"),
            _json("v2", schemas.ModelMetadata, 401, 404, 503), version_name="model_version_metadata",
            guarded=True,
        ),
        *versioned(
            "POST", models, "/infer", e.v2_infer, ("Inference", "Inference on a version"), infer_doc,
            guarded=True, prepare=e.v2_infer_prepare,
        ),
        *versioned(
            "POST", v1_models, ":predict", e.v1_predict, ("Predict (V1)", "Predict on a version (V1)"),
            predict_doc, guarded=True, prepare=e.v1_predict_prepare,
        ),
        Route(
            "GET", v1_models, e.v1_status, "Model status (V1)", _json("v1", schemas.V1ModelStatus, 401, 404, 503),
            guarded=True,
        ),
        *versioned(
            "GET", models, "/drift", e.drift, ("Input drift", "Input drift of a version"), drift_doc,
            description="How far the rows served since start-up (or the last reset) are from the training "
            "distribution: per-feature PSI and mean shift, the model's score (max PSI), whether it is drifting.",
            guarded=True,
        ),
        *versioned(
            "POST", models, "/drift/reset", e.drift_reset, ("Reset input drift", "Reset input drift of a version"),
            drift_doc,
            description="Forget the live rows (after acting on a drift), the live-input sample included, and "
            "re-arm the warning; returns the empty report.",
            guarded=True,
        ),
        *versioned(
            "GET", models, "/drift/sample", e.drift_sample,
            ("Sample of live inputs", "Sample of live inputs of a version"), sample_doc,
            description="A uniform sample (reservoir) of the rows this version served, as CSV with a header of "
            "feature names: the input of `python -m training adapt --rows`. Only with "
            "BNSERVE_DRIFT_SAMPLE_ROWS > 0, which requires an API key: these are raw client inputs.",
            guarded=True,
        ),
        Route(
            "POST", "/v2/repository/index", e.repository_index, "Repository index",
            _repository("A JSON list of {name, version, state, reason}.", 400, 401, 403, 503,
                description="Every model and version in the repository with its state (READY, UNAVAILABLE, "
                "LOADING, UNLOADING) and why; the body {\"ready\": true} lists the ready ones only."),
            guarded=True,
        ),
        Route(
            "POST", "/v2/repository/models/{name}/load", e.repository_load, "Load a model",
            _repository("Loaded (empty body).", 400, 401, 403, 404, 503,
                description="Read the model from the repository again and serve the versions its version_policy "
                "selects, each loaded and checked before it takes traffic; a 400 names a version that failed "
                "(the versions serving before stay). In poll mode: re-read now."),
            guarded=True,
        ),
        Route(
            "POST", "/v2/repository/models/{name}/unload", e.repository_unload, "Unload a model",
            _repository("Unloaded (empty body).", 400, 401, 403, 404, 409, 503,
                description="Stop serving every version of the model (explicit mode; 409 in poll mode, where "
                "the repository's folders decide); requests already running finish."),
            guarded=True,
        ),
        Route("GET", "/metrics", e.metrics, "Prometheus metrics", metrics_doc),
    ]  # fmt: skip


def register(app: FastAPI, routes: list[Route], auth: ApiKey) -> None:
    """Add every route to FastAPI, guarded ones behind ``auth`` (and declaring the key in OpenAPI when set)."""
    for route in routes:
        doc = dict(route.doc)
        if route.guarded and auth.required:
            doc["openapi_extra"] = {**doc.get("openapi_extra", {}), "security": [{SECURITY_SCHEME: []}]}
        endpoint = _fastapi_endpoint(route, auth)
        app.add_api_route(
            route.path, endpoint, methods=[route.method], name=route.name, summary=route.summary, **doc
        )


def _fastapi_endpoint(route: Route, auth: ApiKey) -> Endpoint:
    """``route.endpoint`` behind the key, with the path parameters in its signature (FastAPI reads them there
    to route and to document)."""

    async def call(request: Request, **params: str) -> Response:
        if route.guarded:
            auth.check(request.scope["headers"])
        return await route.endpoint(request, **params)

    if "{version}" in route.path:

        async def versioned_endpoint(request: Request, name: str, version: str) -> Response:
            return await call(request, name=name, version=version)

        return versioned_endpoint
    if "{name}" in route.path:

        async def model_endpoint(request: Request, name: str) -> Response:
            return await call(request, name=name)

        return model_endpoint

    async def server_endpoint(request: Request) -> Response:
        return await call(request)

    return server_endpoint
