"""The artifact contract on its own: standard library only, no onnx, no training code.

The round trip ``ModelContract -> metadata_props -> ModelContract`` must be the identity for both tasks, and
every way the metadata can break must be refused with a :class:`contract.ContractError` naming the key.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

import contract as C


def stats(n: int) -> C.InputStats:
    """Input statistics of ``n`` features: feature j has mean j, std 1, equally spaced deciles."""
    return C.InputStats(
        mean=[float(j) for j in range(n)],
        std=[1.0] * n,
        decile_edges=[[j + (k - 4) / 4 for k in range(C.N_BINS - 1)] for j in range(n)],
        decile_freqs=[[1 / C.N_BINS] * C.N_BINS for _ in range(n)],
        rows=50,
    )


CLASSIFIER = C.ModelContract(
    task=C.TASK_CLASSIFICATION,
    feature_names=["a", "b", "c"],
    input_stats=stats(3),
    class_labels=[0, "one", 2.5],
    training={"seed": 3, "note": "made by hand"},
)
REGRESSOR = C.ModelContract(
    task=C.TASK_REGRESSION, feature_names=["x"], input_stats=stats(1), target_names=["y", "z"]
)


def test_the_contract_module_imports_the_standard_library_only() -> None:
    tree = ast.parse(Path(C.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported - set(sys.stdlib_module_names)


@pytest.mark.parametrize("mc", [CLASSIFIER, REGRESSOR], ids=["classification", "regression"])
def test_round_trip_through_metadata_strings(mc: C.ModelContract) -> None:
    meta = mc.to_metadata()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert all(k.startswith(C.PREFIX) for k in meta)
    assert C.ModelContract.from_metadata(meta) == mc
    # Through real JSON text too, as onnxruntime hands it back: still equal.
    assert C.ModelContract.from_metadata(json.loads(json.dumps(meta))) == mc


def test_sizes_and_output_names() -> None:
    assert (CLASSIFIER.n_features, CLASSIFIER.n_outputs) == (3, 3)
    assert (REGRESSOR.n_features, REGRESSOR.n_outputs) == (1, 2)
    assert C.output_names(C.TASK_CLASSIFICATION) == ("probabilities", "label")
    assert C.output_names(C.TASK_REGRESSION) == ("prediction",)
    with pytest.raises(C.ContractError, match="task must be one of"):
        C.output_names("ranking")


def broken(key: str, value: object) -> dict[str, str]:
    """The classifier's metadata with ``key`` set to ``value`` (JSON-encoded unless a str), or removed (None)."""
    meta = CLASSIFIER.to_metadata()
    if value is None:
        del meta[key]
    else:
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    return meta


def bad_stats(**changes: object) -> dict[str, object]:
    return {**stats(3).to_json(), **changes}


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({}, "no bnserve contract in the metadata"),
        (broken(C.KEY_CONTRACT_VERSION, "one"), "contract_version is not an integer"),
        (broken(C.KEY_CONTRACT_VERSION, "2"), "contract version 2 is not supported"),
        (broken(C.KEY_TASK, None), "metadata key bnserve.task is missing"),
        (broken(C.KEY_TASK, "ranking"), "task must be one of"),
        (broken(C.KEY_FEATURE_NAMES, "[not json"), "bnserve.feature_names is not valid JSON"),
        (broken(C.KEY_FEATURE_NAMES, [1, 2, 3]), "must be a JSON list of strings"),
        (broken(C.KEY_FEATURE_NAMES, ["a", "a", "c"]), "feature_names has duplicates"),
        (broken(C.KEY_CLASS_LABELS, [0]), "classification needs at least 2 class labels, got 1"),
        (broken(C.KEY_CLASS_LABELS, [True, False]), "must be a JSON list of strings or numbers"),
        (broken(C.KEY_CLASS_LABELS, [1, "1"]), "class_labels has duplicates"),
        (broken(C.KEY_TRAINING, [1]), "bnserve.training must be a JSON object"),
        (broken(C.KEY_INPUT_STATS, [1]), "input_stats must be a JSON object"),
        (
            broken(C.KEY_INPUT_STATS, {"mean": [0, 0, 0]}),
            "lacks ['decile_edges', 'decile_freqs', 'rows', 'std']",
        ),
        (
            broken(C.KEY_INPUT_STATS, bad_stats(mean=[0, 0])),
            "mean must be a list of 3 numbers (one per feature), got 2",
        ),
        (broken(C.KEY_INPUT_STATS, bad_stats(std=[1, -1, 1])), "std has a negative entry"),
        (broken(C.KEY_INPUT_STATS, bad_stats(mean=[0, "x", 0])), "non-finite or non-numeric entry: 'x'"),
        (broken(C.KEY_INPUT_STATS, bad_stats(decile_edges=[[0] * 9] * 2)), "one row per feature (3), got 2"),
        (
            broken(C.KEY_INPUT_STATS, bad_stats(decile_edges=[list(range(9, 0, -1))] * 3)),
            "decile_edges[0] is not sorted",
        ),
        (
            broken(C.KEY_INPUT_STATS, bad_stats(decile_freqs=[[0.2] * 10] * 3)),
            "decile_freqs[0] is not a distribution",
        ),
        (broken(C.KEY_INPUT_STATS, bad_stats(rows=0)), "rows must be a positive integer, got 0"),
    ],
)
def test_broken_metadata_is_refused_naming_the_problem(meta: dict[str, str], message: str) -> None:
    with pytest.raises(C.ContractError) as info:
        C.ModelContract.from_metadata(meta)
    assert message in str(info.value)


def test_non_finite_statistics_cannot_be_written() -> None:
    nan = C.ModelContract(
        task=C.TASK_REGRESSION,
        feature_names=["x"],
        input_stats=C.InputStats([float("nan")], [1.0], [[0.0] * 9], [[0.1] * 10], 1),
        target_names=["y"],
    )
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        nan.to_metadata()


def test_package_version_is_a_version_string() -> None:
    version = C.package_version()
    assert version == C.UNINSTALLED_VERSION or version[0].isdigit()
