"""Service settings: pydantic-settings with the ``BNSERVE_`` prefix, validated once at start-up.

Every field can be set by an environment variable (``BNSERVE_PORT=8080``) or by the matching command-line
option (``--port 8080``); the command line wins. :func:`load_settings` is the only factory: nothing reads the
environment at import time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.cpus import available_cpus
from service.drift import DriftConfig

ENV_PREFIX = "BNSERVE_"


class Settings(BaseSettings):
    """Everything the service can be told at start-up."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    model_repository: Path = Field(
        default=Path("models"),
        description="Model repository to serve: <name>/<version>/model.onnx, the versions each model's "
        "config.pbtxt version_policy selects (Triton's; default the latest one).",
    )
    model_control_mode: Literal["none", "explicit", "poll"] = Field(
        default="poll",
        description="poll: new versions in the repository go live by themselves (re-read every "
        "--repository-poll-seconds and on file events), the repository API can load; explicit: only the "
        "repository API (POST /v2/repository/models/<name>/load, /unload) changes what is served; none: what "
        "start-up loads stays, the API is off.",
    )
    repository_poll_seconds: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="In poll mode, seconds between two reads of the model repository.",
    )
    repository_file_events: bool = Field(
        default=True,
        description="In poll mode, also re-read the repository as soon as a file under it changes "
        "(inotify, through watchfiles), not only every poll interval.",
    )
    host: str = Field(default="127.0.0.1", min_length=1, description="Address to bind (0.0.0.0 in Docker).")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port to listen on.")
    grpc_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="TCP port of the gRPC server (Open Inference Protocol, GRPCInferenceService); 0 turns gRPC off.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Logging level of the service and of uvicorn."
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log line format: human-readable text, or one JSON object per line."
    )
    access_log: bool = Field(default=True, description="Write one access-log line per request.")
    intra_op_threads: int = Field(
        default=1, ge=1, le=256, description="onnxruntime intra-op threads per model session."
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted, in bytes (chunked bodies included); larger gets 413.",
    )
    max_batch_rows: int = Field(
        default=10_000, ge=1, description="Most rows accepted in one inference request; more gets 413."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="When set, inference and metadata routes require 'Authorization: Bearer <key>' (one such "
        "header). Printable ASCII without surrounding whitespace, else the service refuses to start.",
    )
    graceful_timeout: int = Field(
        default=8,
        ge=1,
        le=300,
        description="Seconds in-flight requests get to finish after SIGTERM before the server exits.",
    )
    inline_max_bytes: int = Field(
        default=65536,
        ge=0,
        le=1024 * 1024,
        description="Inference requests whose uncompressed body is at most this many bytes (64 KiB: about 190 rows of "
        "64 features in JSON) are decoded and encoded on the event loop and batched there with the others of the same "
        "loop iteration; a batch of more than 256 rows runs onnxruntime on the inference threads. Larger or "
        "compressed bodies run whole on the inference threads. 0 sends every inference to the threads.",
    )
    batching: bool = Field(
        default=True,
        description="Dynamic batching: the small (inline) inference requests that reach a model in the same event "
        "loop iteration share one onnxruntime run. It never waits for a batch to fill, and a row's answer does "
        "not depend on its batch (Batch Norm is folded).",
    )
    cpu_yield_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="When a worker's event loop has worked this many milliseconds without a pause, it lets any "
        "other task waiting for its CPU run first (sched_yield; Linux only): a sidecar proxy or a client on the "
        "same cores then waits about this long (checked between the loop's callbacks), not until the "
        "scheduler's next tick. It costs nothing when no task is waiting. 0: never.",
    )
    wire_path: bool = Field(
        default=True,
        description="Answer the small inline inference requests (POST, a Content-Length up to inline_max_bytes, "
        "no compression, tracing off) inside the HTTP protocol, without an ASGI task; the same bytes as the ASGI "
        "route, at a fraction of its cost per request. false sends every request through the ASGI app.",
    )
    workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Worker processes sharing the port, each with every model. 0 (the default): one per CPU this "
        "process may use (its affinity, capped by a cgroup CPU quota). Metrics and drift are aggregated across "
        "them.",
    )
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request line plus headers accepted, in bytes; larger gets 431 and a close.",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Seconds a client has, from a request's first byte, to send all of its headers; then 408 "
        "and a close.",
    )
    body_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Seconds a client has, after the headers, to send the whole body; then the connection is "
        "closed (counted as status 499).",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Open connections per worker. At the cap a new connection first evicts the least recently "
        "active idle or still-sending one; when every connection has a request in progress it gets 503. Kept "
        "below the open-files limit.",
    )

    drift_enabled: bool = Field(
        default=True,
        description="Monitor every model's inputs for covariate shift (GET /v2/models/<name>/drift).",
    )
    drift_horizon_rows: float = Field(
        default=1000.0,
        ge=1,
        allow_inf_nan=False,
        description="EWMA horizon of the live means and variances, in rows.",
    )
    drift_window_rows: float = Field(
        default=1000.0,
        ge=1,
        allow_inf_nan=False,
        description="Horizon of the decayed decile histogram behind the drift score (PSI), in rows.",
    )
    drift_threshold: float = Field(
        default=0.25,
        gt=0,
        allow_inf_nan=False,
        description="Drift score (max PSI over features) above which a model is drifting; 0.25 is 'significant'.",
    )
    drift_min_rows: float = Field(
        default=200.0,
        ge=0,
        allow_inf_nan=False,
        description="Effective rows the estimate must rest on before a model can be reported drifting.",
    )
    drift_top_k: int = Field(
        default=5, ge=1, le=1000, description="How many of the most shifted features a drift report names."
    )
    drift_layers: bool = Field(
        default=True,
        description="Also monitor each hidden layer's outputs (models exported with hidden statistics); "
        "updated once per burst of rows, after the responses, off the request path.",
    )
    drift_layers_max_rows: float = Field(
        default=1000.0,
        ge=0,
        le=1e9,
        allow_inf_nan=False,
        description="Rows per second per worker that the hidden layers' drift statistics take at most: above it "
        "(heavy traffic) a uniform sample of each served batch, below it every row; a run over the budget "
        "computes no hidden layer. 0: every row (their update costs ~10x the inputs' per row).",
    )
    drift_max_rows: float = Field(
        default=20000.0,
        ge=0,
        le=1e9,
        allow_inf_nan=False,
        description="Rows per second per worker that the observers (the inputs' drift statistics, the live-input "
        "sample, the missing-cell counts, create_app's observers_for) take at most: above it a uniform sample of each served batch, below it "
        "every row. 0: every row.",
    )
    drift_sample_rows: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="Keep a uniform sample of this many served rows per model version, downloadable as CSV "
        "(GET .../drift/sample) for `python -m training adapt`; 0 keeps none. Needs BNSERVE_API_KEY: the "
        "sample holds raw client inputs.",
    )

    @field_validator("workers")
    @classmethod
    def _workers_follow_the_cpus(cls, value: int) -> int:
        return value or available_cpus()

    @field_validator("model_repository")
    @classmethod
    def _repository_is_a_directory(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @field_validator("grpc_port")
    @classmethod
    def _grpc_port_is_not_the_http_port(cls, value: int, info: ValidationInfo) -> int:
        if value != 0 and value == info.data.get("port"):
            raise ValueError(f"must differ from the HTTP port {value} (0 turns gRPC off)")
        return value

    @field_validator("api_key")
    @classmethod
    def _key_is_printable_ascii(cls, value: SecretStr | None) -> SecretStr | None:
        # The key is compared byte for byte with what follows "Bearer " in one header (service.auth), so only
        # a key that a client can send exactly as configured is accepted.
        if value is None:
            return value
        key = value.get_secret_value()
        if not key.strip():
            raise ValueError("must not be blank (unset it to turn authentication off)")
        if key != key.strip():
            raise ValueError("must not start or end with whitespace")
        if not (key.isascii() and key.isprintable()):
            raise ValueError("must be printable ASCII (no control or non-ASCII characters)")
        return value

    @field_validator("drift_sample_rows")
    @classmethod
    def _sample_needs_a_key(cls, value: int, info: ValidationInfo) -> int:
        # The sample is raw client data: never downloadable without authentication. (api_key is declared
        # before this field, so it has been validated already.)
        if value and info.data.get("api_key") is None:
            raise ValueError("needs BNSERVE_API_KEY (the sample holds raw client inputs)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _explicit_runs_one_worker(cls, data: Any) -> Any:
        # Explicit mode's default is one worker (not one per CPU): see _explicit_needs_one_process.
        if (
            isinstance(data, dict)
            and data.get("model_control_mode") == "explicit"
            and data.get("workers") is None
        ):
            return {**data, "workers": 1}
        return data

    @model_validator(mode="after")
    def _explicit_needs_one_process(self) -> Settings:
        # A load or unload call reaches one worker only; the others would serve another set. In poll mode every
        # worker reads the repository itself and they converge.
        if self.model_control_mode == "explicit" and self.workers > 1:
            raise ValueError(
                "--model-control-mode explicit needs --workers 1 (an API call reaches one worker only); "
                "use poll mode with several workers"
            )
        return self

    def drift_config(self) -> DriftConfig:
        """The :class:`DriftConfig` of every model's monitor (its other fields keep their defaults)."""
        return DriftConfig(
            horizon_rows=self.drift_horizon_rows,
            window_rows=self.drift_window_rows,
            threshold=self.drift_threshold,
            min_rows=self.drift_min_rows,
            top_k=self.drift_top_k,
        )


class SettingsError(Exception):
    """A setting has a bad value; the message is one readable line."""


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m service`` command line, one option per :class:`Settings` field."""
    parser = _OneLineErrorParser(
        prog="python -m service",
        description="Serve the models of a bnserve model repository over HTTP (KServe V2 and V1).",
        epilog=f"Every option can also be set by an environment variable {ENV_PREFIX}<OPTION> "
        f"(e.g. {ENV_PREFIX}PORT=8080); the command line wins.",
    )
    for name, field in Settings.model_fields.items():
        env = ENV_PREFIX + name.upper()
        shown = (
            "(unset)"
            if name == "api_key"
            else (str(field.default) if isinstance(field.default, Path) else repr(field.default))
        )
        help_text = f"{field.description} [env {env}, default {shown}]"
        parser.add_argument(_option(name), dest=name, default=None, metavar=name.upper(), help=help_text)
    return parser


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage dump) and exits 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"bnserve: {message} (see --help)\n")
        raise SystemExit(2)


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """Build validated settings from the command line and ``BNSERVE_*``; raise :class:`SettingsError`."""
    args = build_parser().parse_args(list(argv) if argv is not None else [])
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    """The first validation error as ``invalid --port / BNSERVE_PORT: <reason> (got '70000')``."""
    err = exc.errors()[0]
    if not err["loc"]:  # a check across settings names them itself
        return "invalid setting: " + str(err["msg"]).removeprefix("Value error, ")
    name = str(err["loc"][0])
    where = f"{_option(name)} / {ENV_PREFIX}{name.upper()}" if name in Settings.model_fields else name
    reason = str(err["msg"]).removeprefix("Value error, ")
    got = "" if name == "api_key" else f" (got {err.get('input')!r})"
    if err["type"] == "extra_forbidden":
        return f"invalid setting: unknown option {name}"
    return f"invalid setting {where}: {reason}{got}"
