"""The whole command on the quick budget: files appear, numbers are finite, the report re-renders identically
and keeps its hand-written discussion."""

from __future__ import annotations

import json
import math

from experiments.cli import main
from experiments.report import DISCUSSION_END, DISCUSSION_START, _kept_discussion
from experiments.runs import QUICK


def test_quick_run_writes_report_plots_and_finite_numbers(tmp_path):
    assert main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    report = (tmp_path / "report.md").read_text()
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) == 4 * len(QUICK.datasets)
    for name in pngs:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"]({name})" in report  # every plot is embedded in the report
    assert "python -m experiments --quick" in report
    for claim in ("stabilises", "higher learning rates", "speeds up", "regularises", "test time"):
        assert claim in report
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["verdicts"]) and all(
        v["verdict"] in {"supported", "partly supported", "not supported"}
        for v in summary["verdicts"].values()
    )
    # The plots and the report are re-rendered from results.json alone, identically.
    (tmp_path / "report.md").unlink()
    assert main(["--replot", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == report
    payload = json.loads((tmp_path / "results.json").read_text())
    runs = payload["runs"]
    assert len(runs) == len(QUICK.datasets) * len(QUICK.activations) * 2 * len(QUICK.lrs) * len(QUICK.seeds)
    for r in runs:
        if r["diverged_at"] is None:
            assert all(math.isfinite(v) for v in r["final"].values())
            assert all(math.isfinite(a) and 0.0 <= a <= 1.0 for a in r["test_accuracy"])
            assert math.isfinite(r["shift_index"]) and math.isfinite(r["scale_drift"])
        for mode in r["test_time"].values():
            assert all(0.0 <= a <= 1.0 for a in mode.values())


def test_replot_without_results_is_a_clear_error(tmp_path, capsys):
    assert main(["--replot", "--out", str(tmp_path)]) == 2
    assert "results.json" in capsys.readouterr().err


def test_hand_written_discussion_survives_regeneration(tmp_path):
    report = tmp_path / "report.md"
    assert "No discussion" in _kept_discussion(report)  # no report yet: a stub
    report.write_text(
        f"# old\n{DISCUSSION_START}\nBN helps sigmoids.\n\nNot ReLUs.\n{DISCUSSION_END}\nold tables\n"
    )
    assert _kept_discussion(report) == "BN helps sigmoids.\n\nNot ReLUs."
