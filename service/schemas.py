"""Request and response models of the V2 and V1 protocols, for the OpenAPI schema and ``/docs``.

The inference routes do not validate bodies through these models (a pydantic object per number would be
slow); the codecs in ``v2.py`` / ``v1.py`` parse with orjson and numpy. The models document the same rules
the codecs enforce, so that the schema and the behaviour agree (the fuzz test checks it).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

from service.v2 import DATATYPES

V2Datatype = Literal[
    "FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"
]
assert set(V2Datatype.__args__) == set(DATATYPES)  # type: ignore[attr-defined]

Number = float | int


class ErrorResponse(BaseModel):
    """Every error of the V2 and V1 routes."""

    error: str = Field(description="What went wrong, e.g. 'expected 64 features per row, got 63 (row 2)'.")


class ServerMetadata(BaseModel):
    """``GET /v2``."""

    name: str
    version: str
    extensions: list[str]


class MetadataTensor(BaseModel):
    """A tensor in model metadata; ``-1`` marks the batch axis."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """``GET /v2/models/{name}``."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] = Field(
        description="The contract: task, feature names, class labels or targets; and input_range, [-L, L]: "
        "values beyond it get 400 (the model's float32 outputs may overflow there)."
    )


class InputParameters(BaseModel):
    """Per-input parameters (binary tensor data extension)."""

    binary_data_size: int | None = Field(
        default=None, ge=0, description="Bytes of this input after the header."
    )


class RequestInput(BaseModel):
    """The one input tensor ``input``: rows of features, data flat (row-major) or nested."""

    name: Literal["input"]
    shape: list[NonNegativeInt] = Field(min_length=2, max_length=2, description="[rows, features]")
    datatype: V2Datatype
    parameters: InputParameters | None = None
    data: list[Number] | list[list[Number]] | None = None


class OutputParameters(BaseModel):
    """Per-output parameters."""

    binary_data: bool = Field(
        default=False,
        description="Return this output as raw bytes (default: the request's binary_data_output).",
    )


class RequestOutput(BaseModel):
    """An output to return."""

    name: Literal["probabilities", "label", "prediction"]
    parameters: OutputParameters | None = None


class RequestParameters(BaseModel):
    """Request-level parameters."""

    binary_data_output: bool = Field(default=False, description="Return every output as raw bytes.")


class InferenceRequest(BaseModel):
    """``POST /v2/models/{name}/infer``."""

    id: str | None = Field(default=None, description="Echoed in the response.")
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestOutput] | None = Field(default=None, description="Default: every output.")


class ResponseOutput(BaseModel):
    """An output tensor; ``data`` is flat (row-major), absent when sent as binary."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Number] | None = None


class InferenceResponse(BaseModel):
    """The V2 inference response."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


class V1PredictRequest(BaseModel):
    """``POST /v1/models/{name}:predict``: rows in feature order, or objects keyed by feature name."""

    instances: list[list[Number]] | list[dict[str, Number]] = Field(min_length=1)


class V1PredictResponse(BaseModel):
    """Per row: ``{"label": ..., "probabilities": {class: p}}`` (classification) or the value (regression)."""

    predictions: list[Any]


class V1VersionStatus(BaseModel):
    """TensorFlow-Serving's version status entry."""

    version: str
    state: str
    status: dict[str, str]


class V1ModelStatus(BaseModel):
    """``GET /v1/models/{name}``."""

    name: str
    ready: bool
    model_version_status: list[V1VersionStatus]


class DriftFeature(BaseModel):
    """One input feature's drift scores; live means and stds are null before any row."""

    name: str
    psi: float = Field(description="PSI of the live decile histogram against the training one.")
    mean_shift: float = Field(description="|mean_live - mean_train| / max(std_train, std_floor).")
    mean_train: float
    std_train: float
    mean_live: float | None
    std_live: float | None


class DriftTopFeature(DriftFeature):
    """A most shifted feature, with its position in the input row."""

    index: int


class DriftLayer(BaseModel):
    """One hidden layer's drift: its units' outputs (Batch Norm's) against their training distribution."""

    name: str = Field(description="The layer, e.g. layer0; its units are named <layer>.<unit>.")
    output: str = Field(description="The graph output holding the layer's folded Gemm output.")
    units: int
    score: float = Field(description="Max over the layer's units of the PSI; 0 before any row.")
    drifting: bool = Field(description="score > threshold, on at least min_rows effective rows.")
    rows_effective: float
    top_units: list[DriftTopFeature] = Field(description="The most shifted units, by PSI.")


class DriftReport(BaseModel):
    """``GET /v2/models/{name}/drift``: how far the served rows are from the training distribution."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "digits",
                    "version": "1",
                    "rows_seen": 269,
                    "rows_effective": 267.4,
                    "rows_effective_moments": 267.4,
                    "rows_nonfinite": 0,
                    "since": 1795487930.4,
                    "score": 9.68,
                    "score_definition": "max over features of PSI(live decile histogram, "
                    "training decile histogram)",
                    "threshold": 0.25,
                    "min_rows": 200.0,
                    "drifting": True,
                    "top_features": [
                        {
                            "name": "pixel_7_1",
                            "index": 57,
                            "psi": 9.68,
                            "mean_shift": 16.25,
                            "mean_train": 0.2,
                            "std_train": 0.96,
                            "mean_live": 15.8,
                            "std_live": 0.96,
                        }
                    ],
                    "features": [],
                    "layers": [
                        {
                            "name": "layer0",
                            "output": "layer0.z",
                            "units": 256,
                            "score": 1.31,
                            "drifting": True,
                            "rows_effective": 267.4,
                            "top_units": [],
                        }
                    ],
                    "config": {"horizon_rows": 1000.0, "window_rows": 1000.0, "threshold": 0.25},
                }
            ]
        }
    )

    model: str
    version: str
    rows_seen: int = Field(description="Rows served since start-up or the last reset.")
    rows_effective: float = Field(
        description="Effective rows (Kish) the decayed histogram, hence the score, rests on."
    )
    rows_effective_moments: float = Field(description="Effective rows behind the live means and stds.")
    rows_nonfinite: int = Field(description="Rows left out for holding NaN or infinity.")
    since: float = Field(description="Unix time of start-up or of the last reset.")
    score: float = Field(description="Max over features of the PSI; 0 before any row.")
    score_definition: str
    threshold: float
    min_rows: float
    drifting: bool = Field(description="score > threshold, on at least min_rows effective rows.")
    top_features: list[DriftTopFeature] = Field(description="The most shifted features, by PSI.")
    features: list[DriftFeature] = Field(description="Every feature, in input order.")
    layers: list[DriftLayer] = Field(
        default_factory=list,
        description="Each hidden layer's drift, in forward order (empty for models exported without hidden "
        "statistics, or with BNSERVE_DRIFT_LAYERS=false).",
    )
    config: dict[str, Any]
