"""Fixtures for the service tests: tiny ONNX models built with ``onnx.helper``, written into a tmp repository.

Each tiny model is one Gemm (plus Softmax and ArgMax for classification) whose weights are kept here, so the
tests compare the service against a closed form computed with numpy, independently of onnxruntime.
Broken variants (truncated, not ONNX, no metadata, metadata contradicting the graph) are written on demand.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

import contract
from service.app import create_app
from service.settings import Settings


@dataclass(frozen=True)
class TinyModel:
    """A served model and the numbers to check it with: ``y = x @ W + b`` (then softmax / arg-max)."""

    name: str
    version: int
    W: np.ndarray  # (F, K) float32
    b: np.ndarray  # (K,) float32
    contract: contract.ModelContract

    @property
    def n_features(self) -> int:
        return self.W.shape[0]

    def expected(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The closed form in float64: probabilities and label, or prediction."""
        z = x.astype(np.float64) @ self.W.astype(np.float64) + self.b  # (N, K)
        if self.contract.task == contract.TASK_REGRESSION:
            return {"prediction": z}
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        return {"probabilities": p, "label": p.argmax(axis=1)}


def input_stats(n_features: int, rng: np.random.Generator) -> contract.InputStats:
    """Plausible training statistics for ``n_features`` standard-normal-ish features."""
    edges = np.sort(rng.normal(size=(n_features, contract.N_BINS - 1)), axis=1)
    return contract.InputStats(
        mean=[float(v) for v in rng.normal(scale=0.5, size=n_features)],
        std=[1.0] * n_features,
        decile_edges=edges.tolist(),
        decile_freqs=[[0.1] * contract.N_BINS for _ in range(n_features)],
        rows=100,
    )


def make_contract(
    task: str, feature_names: list[str], outputs: list, rng: np.random.Generator
) -> contract.ModelContract:
    """A valid contract; ``outputs`` are the class labels or the target names."""
    return contract.ModelContract(
        task=task,
        feature_names=feature_names,
        input_stats=input_stats(len(feature_names), rng),
        class_labels=outputs if task == contract.TASK_CLASSIFICATION else [],
        target_names=outputs if task == contract.TASK_REGRESSION else [],
        training={"dataset": "synthetic", "seed": 0},
    )


def build_onnx(
    task: str,
    W: np.ndarray,
    b: np.ndarray,
    metadata: dict[str, str] | None,
    output_names: tuple[str, ...] | None = None,
) -> onnx.ModelProto:
    """Gemm (+ Softmax + ArgMax) with a symbolic batch axis and the given metadata_props."""
    f, k = W.shape
    names = output_names or contract.output_names(task)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "B")]
    x = helper.make_tensor_value_info(contract.INPUT_NAME, TensorProto.FLOAT, ["N", f])
    if task == contract.TASK_CLASSIFICATION:
        nodes = [
            helper.make_node("Gemm", [contract.INPUT_NAME, "W", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [names[0]], axis=1),
            helper.make_node("ArgMax", [names[0]], [names[1]], axis=1, keepdims=0),
        ]
        outputs = [
            helper.make_tensor_value_info(names[0], TensorProto.FLOAT, ["N", k]),
            helper.make_tensor_value_info(names[1], TensorProto.INT64, ["N"]),
        ]
    else:
        nodes = [helper.make_node("Gemm", [contract.INPUT_NAME, "W", "B"], [names[0]])]
        outputs = [helper.make_tensor_value_info(names[0], TensorProto.FLOAT, ["N", k])]
    graph = helper.make_graph(nodes, "tiny", [x], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


def write_model(root: Path, name: str, version: int, model: onnx.ModelProto | bytes) -> Path:
    """Write ``root/name/version/model.onnx`` (plus the side files the service must ignore)."""
    folder = root / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    # every version served, as before version policies (Triton's default would serve the latest only)
    (root / name / "config.pbtxt").write_text(f'name: "{name}"\nversion_policy: {{ all: {{ }} }}\n')
    (folder / "history.json").write_text("{}")
    path = folder / "model.onnx"
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    return path


def tiny_model(
    name: str, version: int, task: str, feature_names: list[str], outputs: list, seed: int
) -> tuple[TinyModel, onnx.ModelProto]:
    """Random weights (scaled so that probabilities are not degenerate) and the matching ONNX graph."""
    rng = np.random.default_rng(seed)
    f, k = len(feature_names), len(outputs)
    W = (rng.normal(size=(f, k)) / np.sqrt(f)).astype(np.float32)
    b = rng.normal(scale=0.1, size=k).astype(np.float32)
    mc = make_contract(task, feature_names, outputs, rng)
    return TinyModel(name, version, W, b, mc), build_onnx(task, W, b, mc.to_metadata())


DIGIT_FEATURES = [f"pixel_{i}_{j}" for i in range(8) for j in range(8)]
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@dataclass(frozen=True)
class Repo:
    """The tmp model repository and what it holds."""

    root: Path
    models: dict[str, TinyModel]  # "digits" (v1 and v2 as "digits@1"), "iris", "house"


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """digits (64 features, classes 0..9; versions 1 and 2), iris (string labels), house (regression)."""
    root = tmp_path_factory.mktemp("models")
    specs = [
        ("digits@1", "digits", 1, contract.TASK_CLASSIFICATION, DIGIT_FEATURES, list(range(10)), 1),
        ("digits", "digits", 2, contract.TASK_CLASSIFICATION, DIGIT_FEATURES, list(range(10)), 2),
        (
            "iris",
            "iris",
            1,
            contract.TASK_CLASSIFICATION,
            IRIS_FEATURES,
            ["setosa", "versicolor", "virginica"],
            3,
        ),
        ("house", "house", 3, contract.TASK_REGRESSION, ["rooms", "age", "distance"], ["price"], 4),
    ]
    models = {}
    for key, name, version, task, features, outputs, seed in specs:
        tiny, proto = tiny_model(name, version, task, features, outputs, seed)
        write_model(root, name, version, proto)
        models[key] = tiny
    return Repo(root=root, models=models)


@pytest.fixture(scope="session", autouse=True)
def _no_bnserve_environment() -> Iterator[None]:
    """The tests' settings must not depend on the BNSERVE_* variables of whoever runs them."""
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("BNSERVE_")]:
            mp.delenv(key)
        yield


def settings_for(root: Path, **overrides: object) -> Settings:
    """Settings for a test app serving ``root``."""
    # gRPC off unless a test asks: the default port 8001 is one per machine, and tests run side by side.
    return Settings(**{"model_repository": root, "access_log": True, "grpc_port": 0, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(repo: Repo) -> Iterator[TestClient]:
    """A TestClient on the tiny repository, lifespan run (models loaded)."""
    with TestClient(create_app(settings_for(repo.root))) as c:
        yield c


@pytest.fixture
def broken_repo(tmp_path: Path, repo: Repo) -> Path:
    """An empty model repository to put one broken model into (with a good one beside it)."""
    root = tmp_path / "models"
    good = repo.models["iris"]
    write_model(root, "iris", 1, build_onnx("classification", good.W, good.b, good.contract.to_metadata()))
    return root


def broken_variants() -> dict[str, tuple[bytes | None, str]]:
    """name -> (model.onnx bytes, or None for a missing file; a phrase the start-up error must contain)."""
    rng = np.random.default_rng(7)
    W = rng.normal(size=(4, 3)).astype(np.float32)
    b = np.zeros(3, np.float32)
    good = make_contract("classification", IRIS_FEATURES, ["a", "b", "c"], rng)
    valid = build_onnx("classification", W, b, good.to_metadata()).SerializeToString()
    five = make_contract("classification", [*IRIS_FEATURES, "extra"], ["a", "b", "c"], rng)
    four_classes = make_contract("classification", IRIS_FEATURES, ["a", "b", "c", "d"], rng)
    regression = make_contract("regression", IRIS_FEATURES, ["t0", "t1", "t2"], rng)
    return {
        "missing": (None, "file is missing"),
        "truncated": (valid[: len(valid) // 2], "not a loadable ONNX model"),
        "not_onnx": (b"this is not an ONNX file\n" * 10, "not a loadable ONNX model"),
        "empty": (b"", "not a loadable ONNX model"),
        "no_metadata": (build_onnx("classification", W, b, None).SerializeToString(), "no bnserve contract"),
        "features": (
            build_onnx("classification", W, b, five.to_metadata()).SerializeToString(),
            "metadata lists 5 features but input 'input' has width 4",
        ),
        "classes": (
            build_onnx("classification", W, b, four_classes.to_metadata()).SerializeToString(),
            "metadata lists 4 class labels but output 'probabilities' has width 3",
        ),
        "output_names": (
            build_onnx("classification", W, b, good.to_metadata(), ("probs", "label")).SerializeToString(),
            "graph outputs are ['label', 'probs'], a classification model must output ['probabilities', 'label']",
        ),
        "task": (
            build_onnx("classification", W, b, regression.to_metadata()).SerializeToString(),
            "a regression model must output ['prediction']",
        ),
    }


def run_on_uvloop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` to completion on a fresh uvloop loop (the loop the service runs on), then close it."""
    import uvloop

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
