"""Settings: defaults, environment and command line, one-line refusals of bad values, the help text."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from service.__main__ import BLAS_THREADS, main, one_blas_thread
from service.settings import ENV_PREFIX, Settings, SettingsError, build_parser, load_settings


def test_settings_defaults_env_and_command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(ENV_PREFIX + name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    settings = load_settings([])
    assert (settings.host, settings.port, settings.intra_op_threads, settings.api_key) == (
        "127.0.0.1",
        8000,
        1,
        None,
    )
    monkeypatch.setenv("BNSERVE_PORT", "9001")
    monkeypatch.setenv("BNSERVE_HOST", "0.0.0.0")
    assert (load_settings([]).port, load_settings([]).host) == (9001, "0.0.0.0")
    assert load_settings(["--port", "9002"]).port == 9002


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--port", "70000"],
            "invalid setting --port / BNSERVE_PORT: Input should be less than or equal to 65535",
        ),
        (["--intra-op-threads", "0"], "invalid setting --intra-op-threads / BNSERVE_INTRA_OP_THREADS"),
        (["--model-repository", "/no/such/dir"], "/no/such/dir is not a directory"),
        (["--api-key", "  "], "--api-key / BNSERVE_API_KEY: must not be blank"),
    ],
)
def test_bad_setting_is_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(argv)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_setting_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    before = signal.getsignal(signal.SIGINT)
    try:
        assert main(["--port", "nope"]) == 2
    finally:  # main installs the start-up SIGINT handler: the rest of this process keeps Python's
        signal.signal(signal.SIGINT, before)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bnserve: invalid setting --port")


def test_help_lists_every_setting() -> None:
    text = build_parser().format_help()
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in text
        assert ENV_PREFIX + name.upper() in text.replace("\n", "").replace(" ", "")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (" s3cret", "must not start or end with whitespace"),
        ("s3cret\n", "must not start or end with whitespace"),
        ("s3cr\tet", "must be printable ASCII"),
        ("s3crét", "must be printable ASCII"),
        ("s3cret\x1b[0m", "must be printable ASCII"),
    ],
)
def test_an_api_key_a_client_cannot_send_exactly_is_refused(key: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(["--api-key", key])
    text = str(info.value)
    assert f"invalid setting --api-key / BNSERVE_API_KEY: {message}" in text
    assert key.strip() not in text and "\n" not in text  # the key is never echoed


def test_a_printable_key_is_kept_as_given() -> None:
    settings = load_settings(["--api-key", "a-Key_with.symbols~!"])
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "a-Key_with.symbols~!"


def test_model_control_modes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(ENV_PREFIX + name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    settings = load_settings([])
    assert (
        settings.model_control_mode,
        settings.repository_poll_seconds,
        settings.repository_file_events,
    ) == (
        "poll",
        2.0,
        True,
    )
    # explicit: one worker by default (a load or unload call reaches one process), more is refused
    assert load_settings(["--model-control-mode", "explicit"]).workers == 1
    monkeypatch.setenv("BNSERVE_MODEL_CONTROL_MODE", "explicit")
    assert load_settings([]).workers == 1
    with pytest.raises(
        SettingsError, match=r"^invalid setting: --model-control-mode explicit needs --workers 1"
    ):
        load_settings(["--workers", "2"])
    with pytest.raises(
        SettingsError, match=r"--model-control-mode / BNSERVE_MODEL_CONTROL_MODE: Input should be"
    ):
        load_settings(["--model-control-mode", "sometimes"])
    with pytest.raises(SettingsError, match=r"--repository-poll-seconds .*greater than 0"):
        load_settings(["--repository-poll-seconds", "0"])


def test_the_service_runs_one_blas_thread_unless_told() -> None:
    """numpy's BLAS threads spin beside a worker per core: python -m service asks for one, before numpy loads,
    and an operator's own choice stands."""
    environ = {"OMP_NUM_THREADS": "4"}
    one_blas_thread(environ)
    assert environ == {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "1"}


def test_a_served_process_has_one_blas_thread() -> None:
    """The real effect, read from the BLAS library itself (threadpoolctl, which scikit-learn brings) in a fresh
    process that sets the threads as python -m service does, then imports numpy."""
    code = (
        "import os; from service.__main__ import one_blas_thread; one_blas_thread(os.environ); import numpy; "
        "import threadpoolctl; print([p['num_threads'] for p in threadpoolctl.threadpool_info() "
        "if p['user_api'] == 'blas'])"
    )
    env = {k: v for k, v in os.environ.items() if k not in BLAS_THREADS}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1]"


def test_the_sigterm_handler_leaves_readiness_to_the_loop_and_never_waits_for_a_lock() -> None:
    """The handler runs between two bytecodes of the main thread, maybe inside the metrics' lock: taking that
    lock there deadlocked a worker for good. It must return at once and let the loop turn readiness off."""
    import asyncio
    import threading

    from service.server import _draining_first

    lock = threading.Lock()  # as prometheus-client's value lock: not reentrant
    events: list[str] = []

    def begin_shutdown() -> None:
        if not lock.acquire(timeout=1.0):
            events.append("deadlock")
            return
        lock.release()
        events.append("readiness off")

    handle = _draining_first(begin_shutdown, lambda sig, frame: events.append("uvicorn's handler"))

    async def main() -> None:
        with lock:  # the main thread is inside the lock when the signal arrives
            handle(signal.SIGTERM, None)
            assert events == ["uvicorn's handler"]
        await asyncio.sleep(0)  # the loop's next iteration
        await asyncio.sleep(0)

    asyncio.run(main())
    assert events == ["uvicorn's handler", "readiness off"]
