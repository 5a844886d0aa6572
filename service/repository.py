"""The served models by name and version: one immutable snapshot, which a swap replaces whole.

Layout (Triton's): ``<root>/<name>/<version>/model.onnx`` with ``<version>`` a positive integer folder. Other
files beside the model (``config.pbtxt``, ``history.json``) and non-numeric folders are ignored. Finding,
loading and swapping versions is :mod:`service.lifecycle`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import NotFound
from service.runtime import ModelRuntime

MODEL_FILE = "model.onnx"
VERSION_FOLDER = re.compile(r"[1-9][0-9]{0,8}")


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
        if not VERSION_FOLDER.fullmatch(version) or int(version) not in versions:
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
