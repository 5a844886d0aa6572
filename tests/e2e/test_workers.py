"""``python -m service --workers 2``: metrics add up across workers, drift gauges are per replica, cleanup.

Starts the real server (the committed ``models/`` repository) on a free 127.0.0.1 port; every wait is bounded.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness import MODELS, LiveServer
from service.server import bind_socket

pytestmark = pytest.mark.slow


def _metrics_dirs(tmp: Path) -> set[str]:
    return {p.name for p in tmp.glob("bnserve-metrics-*")}


def _scrape(srv: LiveServer) -> str:
    with urllib.request.urlopen(srv.url("/metrics"), timeout=10) as r:
        return r.read().decode()


def _wait_for_every_worker(srv: LiveServer, timeout: float = 60.0) -> None:
    """``bnserve_ready`` is the minimum over live workers: 1 once the slower worker has loaded too."""
    deadline = time.monotonic() + timeout
    while not re.search(r"^bnserve_ready 1\.0$", _scrape(srv), re.M):
        assert time.monotonic() < deadline, "the second worker never became ready"
        time.sleep(0.1)


def test_request_counts_add_up_whichever_worker_answers(tmp_path: Path) -> None:
    # A temporary directory of this test's own: other servers on the machine make metrics directories too.
    before = _metrics_dirs(tmp_path)
    srv = LiveServer(
        "--model-repository",
        str(MODELS),
        "--workers",
        "2",
        "--log-level",
        "info",
        "--access-log",
        "false",
        env={"TMPDIR": str(tmp_path)},
    )
    n = 40
    try:
        srv.wait_ready()  # one worker is
        _wait_for_every_worker(srv)
        assert len(_metrics_dirs(tmp_path) - before) == 1  # a fresh metrics directory for this start
        x = np.random.default_rng(0).integers(0, 17, size=(1, 64)).astype(np.float32)
        body = json.dumps({"instances": x.tolist()}).encode()
        answered_by = set()
        for _ in range(n):  # a new connection each time: the kernel spreads them over the workers
            request = urllib.request.Request(srv.url("/v1/models/digits:predict"), data=body, method="POST")
            with urllib.request.urlopen(request, timeout=10) as r:
                assert r.status == 200
                answered_by.add(r.headers["X-Request-ID"][:16])  # the per-process id prefix
        time.sleep(0.2)  # each worker's drift feeder takes its rows within ~5 ms
        for _ in range(4):  # every scrape, whichever worker serves it, reports the total
            text = _scrape(srv)
            count = re.search(
                r'^bnserve_requests_total\{model="digits",protocol="v1",status="200"\} (\S+)$', text, re.M
            )
            assert count is not None and float(count.group(1)) == n
            rows = re.search(
                r'^bnserve_request_rows_count\{model="digits",protocol="v1"\} (\S+)$', text, re.M
            )
            assert rows is not None and float(rows.group(1)) == n
            assert re.search(r"^bnserve_ready 1\.0$", text, re.M)
            # One drift estimate per model, from the file every worker maps: no replica label.
            assert re.search(r'^bnserve_drift_rows_seen\{model="digits",version="1"\} 40\.0$', text, re.M)
            assert "replica=" not in text.split("bnserve_drift")[1]
        assert 1 <= len(answered_by) <= 2
        reporters = set()
        for _ in range(6):  # a new connection each time: either worker may answer, with every worker's rows
            with urllib.request.urlopen(srv.url("/v2/models/digits/drift"), timeout=10) as r:
                assert json.loads(r.read())["rows_seen"] == n
                reporters.add(r.headers["X-Request-ID"][:16])
        # --access-log false holds in the workers too: neither the service's line nor uvicorn's
        assert not [line for line in srv.received() if ":predict" in line]
    finally:
        assert srv.stop() == 0
    assert _metrics_dirs(tmp_path) <= before  # removed on exit


def test_the_shared_socket_gives_accepted_connections_tcp_nodelay() -> None:
    with bind_socket("127.0.0.1", 0) as listener:
        listener.listen(1)
        with socket.create_connection(listener.getsockname(), timeout=5):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.proto == socket.IPPROTO_TCP
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
