"""The model manager: verified swaps, failures that never serve, version policies, control modes, the index.

Models are the conftest's tiny Gemm graphs; every served answer is checked against their numpy closed form.
"""

from __future__ import annotations

import gc
import logging
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest

from service.errors import BadRequest, Conflict, Forbidden, ModelLoadError, NotFound
from service.lifecycle import Hooks, ModelManager, probe
from service.runtime import ModelRuntime
from tests.service.conftest import DIGIT_FEATURES, broken_variants, build_onnx, tiny_model, write_model


class Recorder:
    """Hooks that remember what they were told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int | None]] = []

    def hooks(self) -> Hooks:
        return Hooks(
            prepare=lambda rt: self.events.append(("prepare", rt.name, rt.version)),
            retire=lambda rt: self.events.append(("retire", rt.name, rt.version)),
            published=lambda repo: self.events.append(
                ("published", ",".join(f"{r.name}/{r.version}" for r in repo), None)
            ),
            failed=lambda name, version, reason: self.events.append(("failed", name, version)),
        )

    def of(self, kind: str) -> list[tuple[str, int | None]]:
        return [(name, v) for k, name, v in self.events if k == kind]


def add_version(
    root: Path, name: str, version: int, seed: int | None = None, features: list[str] | None = None
):
    tiny, proto = tiny_model(
        name, version, "classification", features or DIGIT_FEATURES, list(range(10)), seed or version
    )
    put(root, name, version, proto)
    return tiny


def put(root: Path, name: str, version: int, model) -> None:
    """``write_model`` with the default policy (latest 1): the conftest's config serves every version."""
    write_model(root, name, version, model)
    (root / name / "config.pbtxt").write_text(f'name: "{name}"\n')


def set_policy(root: Path, name: str, policy: str) -> None:
    (root / name / "config.pbtxt").write_text(f'name: "{name}"\nversion_policy: {{ {policy} }}\n')


def check_serves(manager: ModelManager, tiny, version: str | None = None) -> None:
    """The published ``tiny`` answers as its closed form does."""
    x = np.random.default_rng(0).normal(size=(3, tiny.n_features)).astype(np.float32)
    runtime = manager.repository.get(tiny.name, version)
    assert runtime.version == tiny.version
    np.testing.assert_allclose(
        runtime.predict(x)["probabilities"], tiny.expected(x)["probabilities"], atol=1e-6
    )


def states(manager: ModelManager) -> dict[tuple[str, str], tuple[str, str]]:
    return {(e["name"], e.get("version", "")): (e["state"], e["reason"]) for e in manager.index()}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "models"


def test_poll_swaps_to_a_new_version_and_releases_the_old_one(root: Path) -> None:
    v1 = add_version(root, "m", 1)
    rec = Recorder()
    manager = ModelManager(root, mode="poll", hooks=rec.hooks())
    manager.start()
    check_serves(manager, v1)
    old = manager.repository.get("m")  # as a request that is running holds it
    released = weakref.ref(old)

    v2 = add_version(root, "m", 2)
    manager.poll()
    check_serves(manager, v2)
    # the request that held version 1 still completes on it
    x = np.zeros((1, 64), np.float32)
    np.testing.assert_allclose(old.predict(x)["probabilities"], v1.expected(x)["probabilities"], atol=1e-6)
    assert rec.events[-3:] == [("prepare", "m", 2), ("published", "m/2", None), ("retire", "m", 1)]
    assert states(manager) == {
        ("m", "1"): ("UNAVAILABLE", "unloaded (version_policy latest { num_versions: 1 })"),
        ("m", "2"): ("READY", ""),
    }
    del old
    gc.collect()
    assert released() is None  # nothing but running requests kept version 1 alive


def test_a_broken_version_never_serves_and_is_reported_once(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    v1 = add_version(root, "m", 1)
    rec = Recorder()
    manager = ModelManager(root, mode="poll", hooks=rec.hooks())
    manager.start()
    good = add_version(root, "m", 9)  # weights kept to write them as version 2 later
    shutil.rmtree(root / "m" / "9")
    corrupt = root / "m" / "2"
    corrupt.mkdir()
    (corrupt / "model.onnx").write_bytes(b"\x08\x07half a model")
    with caplog.at_level(logging.INFO, "bnserve.lifecycle"):
        manager.poll()
        manager.poll()  # the same file again: no second attempt, log line or count
    check_serves(manager, v1)
    assert rec.of("failed") == [("m", 2)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "model m version 2 was not loaded (version 1 stays)" in warnings[0]
    state, reason = states(manager)[("m", "2")]
    assert state == "UNAVAILABLE" and reason.startswith("failed to load: not a loadable ONNX model")
    with pytest.raises(NotFound):
        manager.repository.get("m", "2")

    # the file is replaced by a good one (a changed file is tried again)
    proto = build_onnx("classification", good.W, good.b, good.contract.to_metadata())
    (corrupt / "model.onnx").write_bytes(proto.SerializeToString())
    manager.poll()
    runtime = manager.repository.get("m")
    assert runtime.version == 2
    assert states(manager)[("m", "2")] == ("READY", "")


@pytest.mark.parametrize("variant", ["truncated", "features", "classes", "task", "no_metadata"])
def test_every_start_up_check_guards_a_swap(root: Path, variant: str) -> None:
    from tests.service.conftest import IRIS_FEATURES

    _, proto = tiny_model("m", 1, "classification", IRIS_FEATURES, ["a", "b", "c"], 1)
    put(root, "m", 1, proto)
    manager = ModelManager(root, mode="poll")
    manager.start()
    data, phrase = broken_variants()[variant]
    assert data is not None
    put(root, "m", 2, data)
    manager.poll()
    assert manager.repository.get("m").version == 1
    state, reason = states(manager)[("m", "2")]
    assert state == "UNAVAILABLE" and phrase in reason


def test_the_probe_refuses_a_model_that_answers_nan(root: Path) -> None:
    tiny, _ = tiny_model("m", 2, "classification", DIGIT_FEATURES, list(range(10)), 2)
    add_version(root, "m", 1)
    manager = ModelManager(root, mode="poll")
    manager.start()
    b = tiny.b.copy()
    b[3] = np.nan  # loads, passes the shape checks, but answers NaN for every row
    put(root, "m", 2, build_onnx("classification", tiny.W, b, tiny.contract.to_metadata()))
    manager.poll()
    assert manager.repository.get("m").version == 1
    # Refused by the start-up checks of load_model already (its probe rows), before the lifecycle's probe.
    assert "output 'probabilities' is not finite for probe row 0" in states(manager)[("m", "2")][1]


def test_probe_passes_a_good_model(root: Path) -> None:
    add_version(root, "m", 1)
    manager = ModelManager(root, mode="none")
    manager.start()
    runtime: ModelRuntime = manager.repository.get("m")
    probe(runtime)


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ("latest: { num_versions: 2 }", [2, 3]),
        ("all: { }", [1, 2, 3]),
        ("specific: { versions: [1, 3] }", [1, 3]),
    ],
)
def test_version_policies(root: Path, policy: str, served: list[int]) -> None:
    models = {v: add_version(root, "m", v) for v in (1, 2, 3)}
    set_policy(root, "m", policy)
    manager = ModelManager(root, mode="poll")
    manager.start()
    assert sorted(manager.repository.models["m"]) == served
    check_serves(manager, models[served[-1]])  # no version: the highest ready one
    for v in served:
        check_serves(manager, models[v], str(v))


def test_policy_chooses_among_loadable_versions(root: Path) -> None:
    models = {v: add_version(root, "m", v) for v in (1, 2)}
    set_policy(root, "m", "latest: { num_versions: 2 }")
    manager = ModelManager(root, mode="poll")
    manager.start()
    put(root, "m", 3, b"not onnx")
    set_policy(root, "m", "latest: { num_versions: 2 }")  # write_model wrote a plain config
    manager.poll()
    assert sorted(manager.repository.models["m"]) == [1, 2]  # 3 failed: 2 and 1 stay the latest two
    check_serves(manager, models[2])


def test_models_come_and_go_with_their_folders(root: Path) -> None:
    add_version(root, "m", 1)
    manager = ModelManager(root, mode="poll")
    manager.start()
    other = add_version(root, "other", 4)
    manager.poll()
    check_serves(manager, other)
    shutil.rmtree(root / "other")
    manager.poll()
    with pytest.raises(NotFound):
        manager.repository.get("other")
    assert ("other", "4") not in states(manager)


def test_a_bad_config_keeps_serving_and_is_said_once(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    v1 = add_version(root, "m", 1)
    rec = Recorder()
    manager = ModelManager(root, mode="poll", hooks=rec.hooks())
    manager.start()
    add_version(root, "m", 2)
    set_policy(root, "m", "latest: { num_versions: 0 }")
    with caplog.at_level(logging.WARNING, "bnserve.lifecycle"):
        manager.poll()
        manager.poll()
    check_serves(manager, v1)
    assert rec.of("failed") == [("m", None)]
    assert (
        len(caplog.records) == 1 and "num_versions must be one integer >= 1" in caplog.records[0].getMessage()
    )


def test_explicit_mode(root: Path) -> None:
    v1 = add_version(root, "m", 1)
    manager = ModelManager(root, mode="explicit")
    manager.start()
    v2 = add_version(root, "m", 2)
    manager.poll()  # explicit: the repository is only read when asked
    check_serves(manager, v1)
    manager.load("m")
    check_serves(manager, v2)
    put(root, "m", 3, b"garbage")
    with pytest.raises(
        BadRequest, match=r"failed to load 'm': version 3: not a loadable ONNX model.*; version 2 stays"
    ):
        manager.load("m")
    check_serves(manager, v2)
    manager.unload("m")
    with pytest.raises(NotFound):
        manager.repository.get("m")
    assert states(manager)[("m", "2")] == ("UNAVAILABLE", "unloaded")
    with pytest.raises(NotFound, match="no model 'nope'"):
        manager.load("nope")
    with pytest.raises(NotFound, match="no model 'nope'"):
        manager.unload("nope")
    shutil.rmtree(root / "m" / "3")
    manager.load("m")
    check_serves(manager, v2)
    assert manager.index(ready_only=True) == [{"name": "m", "version": "2", "state": "READY", "reason": ""}]


def test_modes_guard_the_api(root: Path) -> None:
    add_version(root, "m", 1)
    none = ModelManager(root, mode="none")
    none.start()
    for call in (none.index, lambda: none.load("m"), lambda: none.unload("m")):
        with pytest.raises(Forbidden, match="off in model control mode 'none'") as info:
            call()
        assert info.value.status_code == 403
    poll = ModelManager(root, mode="poll")
    poll.start()
    with pytest.raises(Conflict, match="unload is not allowed in poll mode"):
        poll.unload("m")
    poll.load("m")  # in poll mode: re-read this model now
    with pytest.raises(ValueError, match="unknown model control mode"):
        ModelManager(root, mode="sometimes")


def test_start_is_strict(root: Path) -> None:
    add_version(root, "m", 1)
    put(root, "bad", 1, b"junk")
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        ModelManager(root).start()
    with pytest.raises(ModelLoadError, match="has no models"):
        ModelManager(root / "m" / "1").start()
