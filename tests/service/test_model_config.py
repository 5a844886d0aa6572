"""config.pbtxt and the version policy, checked against protobuf's own text-format parser on Triton's schema."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import tritonclient

from service.model_config import (
    DEFAULT_POLICY,
    ConfigError,
    VersionPolicy,
    parse_text_proto,
    read_version_policy,
    version_policy,
)

ROOT = Path(__file__).resolve().parents[2]


def _triton_schema() -> ModuleType:
    """tritonclient's generated ``model_config_pb2``, loaded from its file (its package imports grpc)."""
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def triton_policy():
    """``text -> VersionPolicy`` as protobuf reads the text into Triton's ModelConfig: the independent truth."""
    from google.protobuf import text_format

    schema = _triton_schema()

    def read(text: str) -> VersionPolicy:
        config = text_format.Parse(text, schema.ModelConfig())
        if not config.HasField("version_policy"):
            return DEFAULT_POLICY
        vp = config.version_policy
        which = vp.WhichOneof("policy_choice")
        if which == "all":
            return VersionPolicy("all")
        if which == "specific":
            return VersionPolicy("specific", versions=tuple(sorted(set(vp.specific.versions))))
        return VersionPolicy("latest", num_versions=vp.latest.num_versions)

    return read


SPELLINGS = [
    "",
    'name: "digits"\nplatform: "onnxruntime_onnx"\n',
    "version_policy: { latest: { num_versions: 2 } }",
    "version_policy { latest { num_versions: 3 } }",
    "version_policy < latest < num_versions: 4 > >",
    "version_policy: { all: { } }",
    "version_policy { all {} }",
    "version_policy: { specific: { versions: [1, 3] } }",
    "version_policy { specific { versions: 5 versions: 2; versions: 5 } }",
    "# a comment\nversion_policy { # another\n  specific { versions: [ 7 ] }\n}\n",
    'name: "x"\ninput [ { name: "input" data_type: TYPE_FP32 dims: [ -1, 64 ] } ]\n'
    'output [ { name: "label", data_type: TYPE_INT64, dims: [ -1 ] } ]\n'
    "version_policy: { latest: { num_versions: 1 } }\nmax_batch_size: 0\n",
]


@pytest.mark.parametrize("text", SPELLINGS)
def test_policy_matches_protobuf_on_tritons_schema(text: str, triton_policy) -> None:
    assert version_policy(parse_text_proto(text)) == triton_policy(text)


def test_committed_config_is_read_like_triton(triton_policy) -> None:
    text = (ROOT / "models" / "digits" / "config.pbtxt").read_text()
    parsed = parse_text_proto(text)
    assert parsed["name"] == ["digits"]
    assert parsed["input"][0]["dims"] == [-1, 64]  # type: ignore[index]
    assert version_policy(parsed) == triton_policy(text) == DEFAULT_POLICY


def test_scalars() -> None:
    parsed = parse_text_proto(r'a: 0x1f b: -2.5e3 c: true d: "q\"uote" e: FOO f: 1.5f')
    assert parsed == {"a": [31], "b": [-2500.0], "c": [True], "d": ['q"uote'], "e": ["FOO"], "f": [1.5]}


@pytest.mark.parametrize(
    ("policy", "available", "chosen"),
    [
        (VersionPolicy(), [1, 2, 3], {3}),
        (VersionPolicy("latest", num_versions=2), [5, 1, 3], {3, 5}),
        (VersionPolicy("latest", num_versions=9), [1, 2], {1, 2}),
        (VersionPolicy("all"), [2, 4], {2, 4}),
        (VersionPolicy("specific", versions=(1, 3)), [2, 3, 4], {3}),
        (VersionPolicy(), [], set()),
    ],
)
def test_select(policy: VersionPolicy, available: list[int], chosen: set[int]) -> None:
    assert policy.select(available) == chosen


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("version_policy { latest { num_versions: 0 } }", "num_versions must be one integer >= 1"),
        ("version_policy { newest { } }", "unknown version_policy 'newest'"),
        ("version_policy { all { } latest { } }", "exactly one of"),
        ("version_policy { specific { } }", "specific.versions must list integers"),
        ("version_policy { specific { versions: [0] } }", "specific.versions must list integers"),
        ("version_policy { latest { num_versions: 1 }", "unexpected end of file, expected '}'"),
        ("version_policy latest", "expected ':' or '{'"),
        ("name: @", "line 1: unexpected character '@'"),
    ],
)
def test_bad_configs_name_the_problem(text: str, phrase: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        version_policy(parse_text_proto(text))
    assert phrase in str(info.value)


def test_read_names_the_file(tmp_path: Path) -> None:
    assert read_version_policy(tmp_path) == DEFAULT_POLICY  # no config.pbtxt
    (tmp_path / "config.pbtxt").write_text("version_policy { all { } }\n")
    assert read_version_policy(tmp_path) == VersionPolicy("all")
    (tmp_path / "config.pbtxt").write_text("version_policy {\n latest { num_versions: -1 } }\n")
    with pytest.raises(ConfigError, match=r"config\.pbtxt: version_policy\.latest\.num_versions"):
        read_version_policy(tmp_path)
