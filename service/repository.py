"""The model repository: finds ``<name>/<version>/model.onnx`` files and holds the loaded runtimes.

Layout (Triton's): ``<root>/<name>/<version>/model.onnx`` with ``<version>`` a positive integer folder. Other
files beside the model (``config.pbtxt``, ``history.json``) and non-numeric folders are ignored. Loading is
all-or-nothing: the first model that cannot be served raises :class:`ModelLoadError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import ModelLoadError, NotFound
from service.runtime import ModelRuntime, load_model

MODEL_FILE = "model.onnx"
_VERSION = re.compile(r"[1-9][0-9]{0,8}")


@dataclass
class ModelRepository:
    """Loaded models by name, then by integer version."""

    root: Path
    models: dict[str, dict[int, ModelRuntime]] = field(default_factory=dict)

    def get(self, name: str, version: str | None = None) -> ModelRuntime:
        """The model ``name`` at ``version`` (the highest when ``None``); :class:`NotFound` otherwise."""
        versions = self.models.get(name)
        if versions is None:
            raise NotFound(f"unknown model {_short(name)!r}; this server has {sorted(self.models)}")
        if version is None:
            return versions[max(versions)]
        if not _VERSION.fullmatch(version) or int(version) not in versions:
            raise NotFound(
                f"model {name!r} has no version {_short(version)!r}; available: {[str(v) for v in sorted(versions)]}"
            )
        return versions[int(version)]

    def __iter__(self) -> Iterator[ModelRuntime]:
        for name in sorted(self.models):
            for version in sorted(self.models[name]):
                yield self.models[name][version]

    def __len__(self) -> int:
        return sum(len(v) for v in self.models.values())


def _short(text: str, limit: int = 64) -> str:
    """Client-supplied text, cut short before it is put into an error message."""
    return text if len(text) <= limit else text[:limit] + "..."


def find_model_files(root: Path) -> list[tuple[str, int, Path]]:
    """``(name, version, path)`` of every model version folder under ``root``, sorted; the file may be missing."""
    if not root.is_dir():
        raise ModelLoadError(root, "the model repository is not a directory")
    found = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = [p for p in model_dir.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)]
        if not versions:
            raise ModelLoadError(
                model_dir, f"no version folder (expected {model_dir}/<n>/{MODEL_FILE}, n >= 1)"
            )
        for version_dir in sorted(versions, key=lambda p: int(p.name)):
            found.append((model_dir.name, int(version_dir.name), version_dir / MODEL_FILE))
    if not found:
        raise ModelLoadError(root, f"the model repository has no models (expected <name>/<n>/{MODEL_FILE})")
    return found


def load_repository(root: Path, intra_op_threads: int = 1) -> ModelRepository:
    """Load every model version under ``root``; the first unusable one raises :class:`ModelLoadError`."""
    repo = ModelRepository(root=root)
    for name, version, path in find_model_files(root):
        repo.models.setdefault(name, {})[version] = load_model(name, version, path, intra_op_threads)
    return repo
