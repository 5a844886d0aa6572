"""The live set of model versions: loads, verified swaps, unloads, and the repository API's logic.

No HTTP and no asyncio here: plain methods (:meth:`ModelManager.index`, :meth:`~ModelManager.load`,
:meth:`~ModelManager.unload`, :meth:`~ModelManager.poll`) that the REST routes, a gRPC servicer and the poller
(:mod:`service.watcher`) call, from a worker thread because loading a model blocks.

How a version goes live
-----------------------
1. It is loaded and checked as at start-up (:func:`service.runtime.load_model`: the graph against its contract,
   a two-row test run), then **probed**: one row of its training means through :meth:`ModelRuntime.predict`,
   the very method requests call, which must give finite outputs of the promised shapes.
2. ``hooks.prepare`` attaches what follows a served version (the drift monitor), still before any traffic.
3. The new set is **published**: one assignment of a fresh :class:`ModelRepository` (never mutated after),
   so a request sees either the old set or the new one, never a mixture.
4. Versions that left the set are handed to ``hooks.retire``. Requests already running on them hold their
   :class:`ModelRuntime` and finish on it; onnxruntime's session is released when the last one lets go.

A version that fails any step never takes traffic: the versions serving before stay, the index says
UNAVAILABLE with the reason, ``hooks.failed`` counts it (a metric), and one warning line is logged. It is not
tried again until its ``model.onnx`` changes (or an explicit ``load`` asks). The version policy
(:mod:`service.model_config`) chooses among the versions that can be served, so under ``latest 1`` a broken
newest version leaves the previous one serving rather than none.

Versions are immutable, as in Triton: a changed file under a version that is already serving is not reloaded;
a new version is a new folder (``python -m training`` writes one into a temporary folder and renames it into
place, so a half-written model is never seen).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import contract
from service.errors import BadRequest, Conflict, Forbidden, ModelLoadError, NotFound, ServiceError
from service.model_config import ConfigError, read_version_policy
from service.repository import MODEL_FILE, VERSION_FOLDER, ModelRepository
from service.runtime import ModelRuntime, load_model, probe_inputs

log = logging.getLogger("bnserve.lifecycle")

MODES = ("none", "explicit", "poll")
READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

#: ``(mtime_ns, size, inode)`` of a version's ``model.onnx``; ``None`` when it is missing.
Fingerprint = tuple[int, int, int] | None


@dataclass
class VersionStatus:
    """What the index says about one version; ``fingerprint`` is the file a failure was seen on."""

    state: str
    reason: str = ""
    fingerprint: Fingerprint = None


@dataclass
class Hooks:
    """What the service does around a swap; every callable runs on the thread that loads."""

    #: A loaded, probed version about to be published (attach observers here): before any traffic.
    prepare: Callable[[ModelRuntime], None] = lambda runtime: None
    #: A version no longer published (requests already running on it still finish).
    retire: Callable[[ModelRuntime], None] = lambda runtime: None
    #: A new set was published (refresh what describes the set: metrics, OpenAPI examples).
    published: Callable[[ModelRepository], None] = lambda repository: None
    #: ``(name, version, reason)`` of a version that failed to load or to pass its checks (version ``None``:
    #: the model's config.pbtxt could not be read).
    failed: Callable[[str, int | None, str], None] = lambda name, version, reason: None


def fingerprint(path: Path) -> Fingerprint:
    """Identity of a file's content as the file system sees it, without reading it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def scan(root: Path) -> dict[str, dict[int, Path]]:
    """Every ``<name>/<version>/`` folder under ``root`` as ``{name: {version: model.onnx path}}``.

    Hidden folders (``.tmp-...``, where a writer prepares a version before renaming it) are not looked at.
    """
    found: dict[str, dict[int, Path]] = {}
    try:
        model_dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return found
    for model_dir in model_dirs:
        try:
            versions = [p for p in model_dir.iterdir() if p.is_dir() and VERSION_FOLDER.fullmatch(p.name)]
        except OSError:
            continue
        found[model_dir.name] = {int(p.name): p / MODEL_FILE for p in versions}
    return found


def probe(runtime: ModelRuntime) -> None:
    """One row of the training means (and most frequent categories) through ``predict``: finite outputs of the
    promised shapes, or ValueError."""
    feed = probe_inputs(runtime.contract)
    x = feed[contract.INPUT_NAME][:1]  # (1, F)
    categorical = feed[contract.INPUT_CATEGORICAL][:1] if contract.INPUT_CATEGORICAL in feed else None
    try:
        outputs = runtime.predict(x, (), categorical)
    except ServiceError as exc:
        raise ValueError(f"the probe inference failed: {exc.message}") from None
    for spec in runtime.output_specs:
        value = outputs[spec.name]
        expected = (1, *spec.shape[1:])
        if value.shape != expected:
            raise ValueError(
                f"probe output {spec.name!r} has shape {list(value.shape)}, expected {list(expected)}"
            )
        if value.dtype.kind == "f" and not math.isfinite(float(np.abs(value).max(initial=0.0))):
            raise ValueError(f"probe output {spec.name!r} is not finite")


@dataclass
class ModelManager:
    """Which versions are served, and the one place that changes it.

    ``mode`` is the model control mode: ``none`` (what start-up loads stays), ``explicit`` (only
    :meth:`load` and :meth:`unload` change the set) or ``poll`` (:meth:`poll` re-reads the repository;
    :meth:`load` re-reads one model at once). Readers take :attr:`repository`, an immutable snapshot.
    """

    root: Path
    mode: str = "poll"
    intra_op_threads: int = 1
    hooks: Hooks = field(default_factory=Hooks)
    #: The published set; replaced whole, never mutated.
    repository: ModelRepository = field(init=False)
    _status: dict[str, dict[int, VersionStatus]] = field(default_factory=dict, init=False)
    _config_errors: dict[str, str] = field(default_factory=dict, init=False)  # reported once, by model
    _swap: threading.Lock = field(default_factory=threading.Lock, init=False)  # one change at a time
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)  # guards _status

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown model control mode {self.mode!r}; expected one of {list(MODES)}")
        self.repository = ModelRepository(root=self.root)

    # ---- start-up ---------------------------------------------------------------------------------------
    def start(self) -> ModelRepository:
        """Load every model as its policy says; the first version that cannot be served raises ModelLoadError.

        Strict, as the service always was: a repository that cannot be served as a whole refuses to start.
        """
        if not self.root.is_dir():
            raise ModelLoadError(self.root, "the model repository is not a directory")
        on_disk = scan(self.root)
        if not any(on_disk.values()):
            raise ModelLoadError(
                self.root, f"the model repository has no models (expected <name>/<n>/{MODEL_FILE})"
            )
        with self._swap:
            models: dict[str, dict[int, ModelRuntime]] = {}
            for name in sorted(on_disk):
                model_dir = self.root / name
                if not on_disk[name]:
                    raise ModelLoadError(
                        model_dir, f"no version folder (expected {model_dir}/<n>/{MODEL_FILE}, n >= 1)"
                    )
                try:
                    policy = read_version_policy(model_dir)
                except ConfigError as exc:
                    raise ModelLoadError(model_dir, str(exc)) from None
                chosen = policy.select(on_disk[name])
                if not chosen:
                    raise ModelLoadError(
                        model_dir,
                        f"version_policy {policy.describe()} selects none of {sorted(on_disk[name])}",
                    )
                for version in sorted(chosen):
                    runtime = self._load_checked(name, version, on_disk[name][version])
                    self.hooks.prepare(runtime)
                    models.setdefault(name, {})[version] = runtime
                    self._set(name, version, VersionStatus(READY))
            self._publish(models, retired=[])
            return self.repository

    # ---- the repository API -----------------------------------------------------------------------------
    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: every model and version on disk or loaded, with state and reason."""
        self._api_on()
        on_disk = scan(self.root)
        with self._lock:
            status = {name: dict(versions) for name, versions in self._status.items()}
        entries = []
        for name in sorted(set(on_disk) | set(status)):
            versions = sorted(set(on_disk.get(name, {})) | set(status.get(name, {})))
            if not versions:
                entries.append({"name": name, "state": UNAVAILABLE, "reason": "no version folder"})
            for version in versions:
                st = status.get(name, {}).get(version)
                if st is None:
                    st = VersionStatus(UNAVAILABLE, "not loaded")
                if ready_only and st.state != READY:
                    continue
                entries.append(
                    {"name": name, "version": str(version), "state": st.state, "reason": st.reason}
                )
        return entries

    def load(self, name: str) -> None:
        """Read model ``name`` from the repository again and serve what its policy selects (Triton's load).

        Versions that failed before are tried again. Raises :class:`NotFound` for a model the repository does
        not hold, :class:`BadRequest` naming the failure when a version the policy chose cannot be served (the
        versions serving before stay).
        """
        self._api_on()
        if not _NAME.fullmatch(name):
            raise NotFound(f"no model {name[:64]!r} in the repository")
        with self._swap:
            failures = self._reconcile(name, scan(self.root).get(name), retry_failed=True, must_exist=True)
        if failures:
            raise BadRequest(
                f"failed to load {name!r}: "
                + "; ".join(failures)
                + f"; {_stays(self.repository.models.get(name))}"
            )

    def unload(self, name: str) -> None:
        """Stop serving every version of ``name`` (Triton's unload); requests already running finish."""
        self._api_on()
        if self.mode == "poll":  # the folders decide: an unload conflicts with them (409)
            raise Conflict(
                "unload is not allowed in poll mode: remove the model's folder from the repository"
            )
        with self._swap:
            known = name in self.repository.models or name in self._status
            if not known and name not in scan(self.root):
                raise NotFound(f"no model {name[:64]!r} in the repository")
            self._retire(name, set(self.repository.models.get(name, {})), reason="unloaded")

    # ---- poll mode ----------------------------------------------------------------------------------------
    def poll(self) -> None:
        """Bring the served set in line with the repository on disk (one pass; called by the poller)."""
        if self.mode != "poll":
            return
        with self._swap:
            on_disk = scan(self.root)
            for name in sorted(set(on_disk) | set(self.repository.models)):
                self._reconcile(name, on_disk.get(name), retry_failed=False, must_exist=False)

    # ---- the one path that changes the set ----------------------------------------------------------------
    def _reconcile(
        self, name: str, on_disk: dict[int, Path] | None, *, retry_failed: bool, must_exist: bool
    ) -> list[str]:
        """Load what the policy selects for ``name``, publish, retire the rest; the failures, one line each."""
        model_dir = self.root / name
        serving = dict(self.repository.models.get(name, {}))
        if on_disk is None:
            if must_exist:
                raise NotFound(f"no model {name[:64]!r} in the repository ({self.root})")
            self._retire(name, set(serving), reason="removed from the repository", forget=True)
            return []
        try:
            policy = read_version_policy(model_dir)
        except ConfigError as exc:
            # A config being rewritten, or a typo: keep serving what serves, and say why nothing changes.
            self._fail_model(name, str(exc), set(on_disk), serving, report=retry_failed)
            return [str(exc)]
        self._config_errors.pop(name, None)
        failures: list[str] = []
        started = time.perf_counter()
        failed = set() if retry_failed else self._known_failures(name, on_disk)
        ready = {v: rt for v, rt in serving.items() if v in on_disk}
        while True:
            target = policy.select(set(on_disk) - failed)
            missing = sorted(target - set(ready), reverse=True)  # the newest first: it is the one wanted
            if not missing:
                break
            for version in missing:
                self._set(name, version, VersionStatus(LOADING))
                try:
                    ready[version] = self._load_checked(name, version, on_disk[version])
                except ModelLoadError as exc:
                    failed.add(version)
                    failures.append(f"version {version}: {exc.problem}")
                    self._record_failure(name, version, exc, on_disk[version], serving)
        target = policy.select(set(on_disk) - failed)
        keep = {v: rt for v, rt in ready.items() if v in target}
        added = [rt for v, rt in keep.items() if v not in serving]
        for runtime in added:
            self.hooks.prepare(runtime)
        models = dict(self.repository.models)
        if keep:
            models[name] = keep
        else:
            models.pop(name, None)
        left = [rt for v, rt in serving.items() if v not in keep]
        extra = [
            rt for v, rt in ready.items() if v not in keep and v not in serving
        ]  # loaded, then out-ranked
        if added or left:
            self._publish(models, retired=left)
        for version in keep:
            self._set(name, version, VersionStatus(READY))
        for runtime in left + extra:
            gone = runtime.version not in on_disk
            reason = (
                "removed from the repository" if gone else f"unloaded (version_policy {policy.describe()})"
            )
            if gone:
                self._forget(name, runtime.version)
            else:
                self._set(name, runtime.version, VersionStatus(UNAVAILABLE, reason))
        for version in list(self._status.get(name, {})):
            if version not in on_disk and version not in keep:
                self._forget(name, version)
        if added:
            was = ", ".join(str(v) for v in sorted(serving))
            log.info(
                "serving %s version %s%s; loaded, checked and swapped in %.0f ms",
                name,
                ", ".join(str(v) for v in sorted(keep)),
                f" (was {was})" if serving else "",
                (time.perf_counter() - started) * 1e3,
            )
        return failures

    def _load_checked(self, name: str, version: int, path: Path) -> ModelRuntime:
        """Load with the start-up checks, then probe; ModelLoadError naming the file and the problem."""
        runtime = load_model(name, version, path, self.intra_op_threads)
        try:
            probe(runtime)
        except ValueError as exc:
            raise ModelLoadError(path, str(exc)) from None
        return runtime

    def _record_failure(
        self, name: str, version: int, exc: ModelLoadError, path: Path, serving: dict[int, ModelRuntime]
    ) -> None:
        self._set(
            name, version, VersionStatus(UNAVAILABLE, f"failed to load: {exc.problem}", fingerprint(path))
        )
        log.warning("model %s version %d was not loaded (%s): %s", name, version, _stays(serving), exc)
        self.hooks.failed(name, version, exc.problem)

    def _fail_model(
        self, name: str, reason: str, versions: set[int], serving: dict[int, ModelRuntime], report: bool
    ) -> None:
        """A model whose config.pbtxt cannot be read: what serves stays; said once per distinct reason."""
        for version in versions - set(serving):
            self._set(name, version, VersionStatus(UNAVAILABLE, reason))
        if not report and self._config_errors.get(name) == reason:
            return
        self._config_errors[name] = reason
        log.warning(
            "model %s was not re-read (%s): %s",
            name,
            "its versions stay" if serving else "nothing served",
            reason,
        )
        self.hooks.failed(name, None, reason)

    def _known_failures(self, name: str, on_disk: dict[int, Path]) -> set[int]:
        """Versions that failed on exactly the file that is there now (a changed file is tried again)."""
        with self._lock:
            status = dict(self._status.get(name, {}))
        return {
            v
            for v, st in status.items()
            if v in on_disk
            and st.state == UNAVAILABLE
            and st.reason.startswith("failed")
            and st.fingerprint == fingerprint(on_disk[v])
        }

    def _retire(self, name: str, versions: set[int], reason: str, forget: bool = False) -> None:
        serving = self.repository.models.get(name, {})
        left = [serving[v] for v in sorted(versions) if v in serving]
        if left:
            models = dict(self.repository.models)
            rest = {v: rt for v, rt in serving.items() if v not in versions}
            if rest:
                models[name] = rest
            else:
                models.pop(name, None)
            self._publish(models, retired=left)
            log.info(
                "stopped serving %s version %s (%s)", name, ", ".join(str(rt.version) for rt in left), reason
            )
        for version in versions:
            if forget:
                self._forget(name, version)
            else:
                self._set(name, version, VersionStatus(UNAVAILABLE, reason))
        if forget:
            with self._lock:
                if not self._status.get(name):
                    self._status.pop(name, None)

    def _publish(self, models: dict[str, dict[int, ModelRuntime]], retired: list[ModelRuntime]) -> None:
        """Swap in the new set (one assignment), then let go of the versions that left it."""
        for runtime in retired:
            self._set(runtime.name, runtime.version, VersionStatus(UNLOADING))
        self.repository = ModelRepository(root=self.root, models=models)
        self.hooks.published(self.repository)
        for runtime in retired:
            self.hooks.retire(runtime)

    def _set(self, name: str, version: int, status: VersionStatus) -> None:
        with self._lock:
            self._status.setdefault(name, {})[version] = status

    def _forget(self, name: str, version: int) -> None:
        with self._lock:
            self._status.get(name, {}).pop(version, None)

    def _api_on(self) -> None:
        if self.mode == "none":
            raise Forbidden(
                "the repository API is off in model control mode 'none' (set BNSERVE_MODEL_CONTROL_MODE)"
            )


def _stays(serving: dict[int, ModelRuntime] | None) -> str:
    """``version 2 stays`` / ``versions 1, 2 stay`` / ``nothing is served``: what a failure leaves serving."""
    if not serving:
        return "nothing is served"
    if len(serving) == 1:
        return f"version {next(iter(serving))} stays"
    return f"versions {', '.join(map(str, sorted(serving)))} stay"
