"""Data loading: the bundled digits, CSV round trips, every bad-data case, splits and statistics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contract import N_BINS
from featurestats import input_statistics
from training.data import DataError, Standardizer, load_csv, load_digits, split

ROOT = Path(__file__).resolve().parents[2]


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.write_text("\n".join(",".join(str(c) for c in r) for r in [header, *rows]) + "\n")
    return path


def test_digits_is_bundled():
    ds = load_digits()
    assert ds.X.shape == (1797, 64) and ds.X.min() == 0 and ds.X.max() == 16
    assert np.bincount(ds.y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert ds.feature_names[9] == "pixel_1_1" and ds.class_labels == list(range(10))


def test_csv_round_trip_string_labels(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 3)).round(6)
    labels = np.array(["cat", "dog", "emu"])[rng.integers(0, 3, 30)]
    p = write_csv(
        tmp_path / "pets.csv",
        ["a", "species", "b", "c"],
        [[x[0], lab, x[1], x[2]] for x, lab in zip(X, labels)],
    )
    ds = load_csv(p, "species")
    assert ds.task == "classification" and ds.task_inferred
    assert ds.feature_names == ["a", "b", "c"]
    assert np.allclose(ds.X, X)
    assert ds.class_labels == ["cat", "dog", "emu"]
    assert [ds.class_labels[i] for i in ds.y] == labels.tolist()


def test_csv_numeric_targets_infer_the_task(tmp_path):
    rows = [[(7 * i) % 11, i % 3] for i in range(20)]
    ds = load_csv(write_csv(tmp_path / "c.csv", ["x", "y"], rows), "y")
    assert ds.task == "classification" and ds.class_labels == [0, 1, 2]
    rows = [[(7 * i) % 11, i * 0.37] for i in range(20)]
    ds = load_csv(write_csv(tmp_path / "r.csv", ["x", "y"], rows), "y")
    assert ds.task == "regression" and ds.y.shape == (20, 1) and ds.target_names == ["y"]
    ds = load_csv(tmp_path / "c.csv", "y", task="regression")
    assert ds.task == "regression" and not ds.task_inferred


@pytest.mark.parametrize(
    ("header", "rows", "target", "message"),
    [
        (["a", "y"], [[1, 0]] * 20, "label", "no column named 'label'"),
        (
            ["a", "y"],
            [[1, 0]] * 5 + [["x1", 1]] + [[1, 1]] * 14,
            "y",
            r"row 5 \(line 7\), column 'a' is not a finite number",
        ),
        (
            ["a", "y"],
            [[i % 4, i % 2] for i in range(3)] + [[1, ""]] + [[i % 4, 1] for i in range(16)],
            "y",
            r"row 3 \(line 5\), target column 'y' is empty or NaN",
        ),
        (["a", "y"], [[i % 3, "k"] for i in range(20)], "y", "single class"),
        (
            ["a", "y"],
            [[1, i % 2] for i in range(20)],
            "y",
            r"no feature columns left .*\(excluded 'a': constant\)",
        ),
        (["a", "y"], [[1, 0], [2, 1]] * 2, "y", "4 data rows, at least 10"),
        (["a", "y"], [[1, 0, 3]] + [[1, 1]] * 19, "y", r"row 0 \(line 2\) has 3 cells"),
        (["a", "a", "y"], [[1, 1, 0]] * 20, "y", "duplicate column names"),
        (["y"], [[0]] * 20, "y", "no feature columns"),
    ],
)
def test_bad_csv_gets_one_clear_line(tmp_path, header, rows, target, message):
    p = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(DataError, match=message) as info:
        load_csv(p, target)
    assert "\n" not in str(info.value) and "bad.csv" in str(info.value)


def test_csv_rows_count_from_zero_and_lines_count_the_file(tmp_path):
    """Row = index among the data rows (as the service counts a batch); line = where the editor finds it,
    after a blank line and a quoted cell spanning two lines."""
    text = "a,b,y\n" + "1,2,0\n" * 3 + "\n" + '1,"2\n",1\n' + "1,2,1\n" * 5 + "oops,2,0\n" + "1,2,0\n" * 3
    p = tmp_path / "lines.csv"
    p.write_text(text)
    # header on line 1; data rows 0..2 on lines 2..4; blank line 5; row 3 on lines 6-7; rows 4..8 on 8..12
    with pytest.raises(DataError, match=r"row 9 \(line 13\), column 'a' is not a finite number"):
        load_csv(p, "y")


def test_empty_and_nan_cells_are_imputed_with_the_training_median(tmp_path):
    rows = [[float(i % 5), "" if i == 5 else i % 7, i % 2] for i in range(20)]
    rows[3][0] = "nan"
    ds = load_csv(write_csv(tmp_path / "m.csv", ["a", "b", "y"], rows), "y")
    a, b = ds.encoder.inputs
    assert a.impute == float(np.median([i % 5 for i in range(20) if i != 3])) and a.missing_rate == 0.05
    assert b.impute == float(np.median([i % 7 for i in range(20) if i != 5]))
    assert ds.X[3, 0] == a.impute and ds.X[5, 1] == b.impute and not np.isnan(ds.X).any()
    fitted = ds.fitted(np.arange(10))  # refitted on "training" rows only
    assert fitted.encoder.inputs[0].impute == float(np.median([i % 5 for i in range(10) if i != 3]))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_csv(tmp_path / "nope.csv", "y")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_csv(tmp_path / "empty.csv", "y")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="cannot be read"):
        load_csv(tmp_path / "bin.csv", "y")


def test_regression_with_text_target_is_refused(tmp_path):
    p = write_csv(tmp_path / "t.csv", ["a", "y"], [[i % 6, "x" if i == 4 else i] for i in range(20)])
    with pytest.raises(DataError, match=r"row 4 \(line 6\), target column 'y' is not a number"):
        load_csv(p, "y", task="regression")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--csv", "{d}/missing.csv", "--target", "y"], "missing.csv: no such file"),
        (["--csv", "{d}/bad.csv", "--target", "y"], "row 1 (line 3), column 'a' is not a finite number"),
        (["--csv", "{d}/bad.csv"], "--csv needs --target"),
    ],
)
def test_command_line_bad_data_exits_2_without_traceback(tmp_path, args, message):
    write_csv(tmp_path / "bad.csv", ["a", "y"], [[1, 0], ["oops", 1]] + [[1, 1]] * 18)
    argv = [a.format(d=tmp_path) for a in args]
    r = subprocess.run(
        [sys.executable, "-m", "training", "--quiet", "--repository", str(tmp_path / "m"), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_stratified_split_is_seeded_and_disjoint():
    ds = load_digits()
    a = split(ds, np.random.default_rng(0))
    b = split(ds, np.random.default_rng(0))
    assert all(np.array_equal(x, y) for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test)))
    allidx = np.concatenate([a.train, a.val, a.test])
    assert len(np.unique(allidx)) == len(ds.X) == len(allidx)
    # every class is split in the same proportions (within one row of rounding)
    for c in range(10):
        n = (ds.y == c).sum()
        assert abs((ds.y[a.test] == c).sum() - 0.15 * n) <= 1


def test_standardizer_and_input_statistics():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(3, 2, 1000), np.zeros(1000), rng.integers(0, 3, 1000)])
    s = Standardizer.fit(X)
    Z = s(X)
    assert np.allclose(Z[:, 0].mean(), 0) and np.allclose(Z[:, 0].std(), 1)
    assert s.std[1] == 1.0 and np.all(Z[:, 1] == 0)  # a constant feature is centred, not divided by 0
    st = input_statistics(X)
    assert len(st.decile_edges[0]) == N_BINS - 1 and np.allclose(st.decile_freqs[0], 0.1, atol=0.002)
    assert st.decile_freqs[1][-1] == pytest.approx(
        1.0
    )  # all zeros: every edge is 0, side="right" -> last bin
    assert all(abs(sum(f) - 1) < 1e-12 for f in st.decile_freqs)
    assert st.rows == 1000 and st.std[1] == 0.0
