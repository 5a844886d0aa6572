"""The model repository: discovery, versions, and refusing every kind of unusable model file."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import ModelLoadError, NotFound
from service.lifecycle import ModelManager
from tests.service.conftest import Repo, broken_variants, write_model


def test_loads_every_model_and_version(repo: Repo) -> None:
    loaded = ModelManager(repo.root).start()
    assert sorted(loaded.models) == ["digits", "house", "iris"]
    assert sorted(loaded.models["digits"]) == [1, 2]
    assert len(loaded) == 4
    assert loaded.get("digits").version == 2  # no version: the highest
    assert loaded.get("digits", "1").version == 1


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        ("nope", None, "unknown model 'nope'"),
        ("digits", "3", "model 'digits' has no version '3'; available: ['1', '2']"),
        ("digits", "0", "has no version '0'"),
        ("digits", "01", "has no version '01'"),
        ("digits", "abc", "has no version 'abc'"),
    ],
)
def test_unknown_model_or_version(repo: Repo, name: str, version: str | None, message: str) -> None:
    loaded = ModelManager(repo.root).start()
    with pytest.raises(NotFound, match=message.replace("[", r"\[").replace("]", r"\]")):
        loaded.get(name, version)


@pytest.mark.parametrize("variant", sorted(broken_variants()))
def test_a_broken_model_refuses_the_whole_repository(broken_repo: Path, variant: str) -> None:
    content, phrase = broken_variants()[variant]
    path = broken_repo / "broken" / "1" / "model.onnx"
    if content is None:
        path.parent.mkdir(parents=True)
    else:
        write_model(broken_repo, "broken", 1, content)
    with pytest.raises(ModelLoadError) as info:
        ModelManager(broken_repo).start()
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert phrase in message
    assert "\n" not in message


def test_model_folder_without_versions_is_refused(broken_repo: Path) -> None:
    (broken_repo / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no version folder"):
        ModelManager(broken_repo).start()


def test_empty_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="has no models"):
        ModelManager(tmp_path).start()
