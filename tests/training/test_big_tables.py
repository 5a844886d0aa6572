"""Big numeric files: the streaming reader writes numeric columns straight into one float32 matrix (the
design matrix itself, no copy), retypes a column that changes type after the sampled head, grows past a
short-row estimate, keeps large integers and decimal labels exact, and loads within twice its final arrays;
the chunked standardization equals the float64 closed form."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import contract as C
from training import data, tables
from training.data import DataError, Standardizer, load_csv
from training.tables import numeric_matrix, read_table


def write_matrix(path, X: np.ndarray, y: np.ndarray, names=None, fmt="%.6g"):
    """A CSV of ``X`` and the target column ``y`` (written by numpy: the truth is parsed back below)."""
    names = names or [f"x{j}" for j in range(X.shape[1])]
    body = np.column_stack([X, y])
    np.savetxt(
        path,
        body,
        delimiter=",",
        fmt=[fmt] * X.shape[1] + ["%d"],
        header=",".join([*names, "y"]),
        comments="",
    )
    return path


def parsed(path) -> np.ndarray:
    """The file's cells as Python floats: an independent reading of the numbers."""
    rows = path.read_text().splitlines()[1:]
    return np.array([[float(c) for c in r.split(",")] for r in rows])


@pytest.fixture
def small_blocks(monkeypatch):
    """Types from the first ~300 bytes and 256-byte blocks: a small file behaves like a big one."""
    monkeypatch.setattr(tables, "TYPE_BYTES", 300)
    monkeypatch.setattr(tables, "BLOCK_BYTES", 256)


def test_numeric_columns_are_one_float32_matrix_and_the_design_itself(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 4)) * [1, 10, 1000, 1e5] + [0, -5, 300, 2e6]
    path = write_matrix(tmp_path / "n.csv", X, (X[:, 0] > 0).astype(int))
    ds = load_csv(path, "y")
    truth = parsed(path)
    assert ds.X.dtype == np.float32 and ds.X.shape == (500, 4)
    np.testing.assert_array_equal(ds.X, truth[:, :4].astype(np.float32))  # float32 of each cell
    assert all(np.shares_memory(ds.X, c.values) for c in ds.columns)  # no copy of the columns
    np.testing.assert_array_equal(ds.y, truth[:, 4].astype(int))


def test_retyped_columns_after_the_sampled_head(tmp_path, small_blocks):
    # 'a' is integers in the head and decimals later; 'b' integers, then a word: a bad cell, named.
    lines = ["a,b,y"] + [f"{i % 7},{i % 5},{i % 2}" for i in range(200)]
    lines[180] = "2.25,3,1"
    path = tmp_path / "r.csv"
    path.write_text("\n".join(lines) + "\n")
    t = read_table(path, "y")
    assert [c.kind for c in t.columns] == [C.KIND_NUMERIC, C.KIND_NUMERIC]
    assert t.columns[0].values[179] == 2.25 and t.columns[0].values[0] == 0
    lines[150] = "1,oops,0"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"row 149 \(line 151\), column 'b' is not a finite number: 'oops'"):
        read_table(path, "y")


def test_rows_shorter_than_the_head_grow_the_matrix(tmp_path, small_blocks):
    long = [f"{1000000.5 + i:.1f},{-2000000.25 - i:.2f},{i % 2}" for i in range(20)]
    short = [f"{i % 9},{i % 4},{i % 2}" for i in range(3000)]  # far more rows than the head predicts
    path = tmp_path / "g.csv"
    path.write_text("\n".join(["a,b,y", *long, *short]) + "\n")
    ds = load_csv(path, "y")
    truth = parsed(path)
    assert ds.X.shape == (3020, 2)
    np.testing.assert_array_equal(ds.X, truth[:, :2].astype(np.float32))
    np.testing.assert_array_equal(ds.y, truth[:, 2].astype(int))


def test_large_integer_ids_and_decimal_labels_stay_exact(tmp_path):
    n = 50
    rng = np.random.default_rng(1)
    ids = 10**12 + rng.permutation(n)  # a contiguous range far beyond float32's exact integers
    near = 10**12 + np.arange(n) * 2 // 2  # the same range with duplicates: float32 could not tell
    near[7] = near[8]
    near[-1] = 10**12 + n - 1
    labels = ["0.1", "0.2", "0.3"]
    lines = ["id,near,x,y"] + [f"{ids[i]},{near[i]},{rng.normal():.4f},{labels[i % 3]}" for i in range(n)]
    path = tmp_path / "ids.csv"
    path.write_text("\n".join(lines) + "\n")
    ds = load_csv(path, "y", task="classification")
    assert ds.feature_names == ["near", "x"]
    assert any("'id': unique per row" in note for note in ds.notices)
    assert ds.class_labels == [0.1, 0.2, 0.3]  # not float32's 0.10000000149...


def test_loading_holds_no_full_size_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "TYPE_BYTES", 1 << 16)  # the sampled head, scaled down with the file
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40_000, 10)) * 100
    path = write_matrix(tmp_path / "m.csv", X, (X[:, 0] > 0).astype(int))
    tracemalloc.start()
    try:
        ds = load_csv(path, "y")
        _, peak = tracemalloc.get_traced_memory()  # numpy's buffers and Python objects (not arrow's)
    finally:
        tracemalloc.stop()
    final = ds.X.nbytes + ds.y.nbytes  # float32 features, int64 labels
    assert ds.X.nbytes == 40_000 * 10 * 4
    # tracemalloc counts the matrix's reserved rows (a third more than the head predicts), which the OS
    # maps only when written; any full-size float64 copy of the features would add 2 x final here.
    assert peak <= 2.5 * final, (peak, final)


def test_numeric_matrix_is_a_view_of_adjacent_columns_else_a_copy():
    M = np.arange(24, dtype=np.float32).reshape(6, 4)
    view = numeric_matrix([M[:, 1], M[:, 2]])
    assert np.shares_memory(view, M) and not view.flags.writeable
    np.testing.assert_array_equal(view, M[:, 1:3])
    rows = np.array([4, 0])
    np.testing.assert_array_equal(numeric_matrix([M[:, 1], M[:, 2]], rows), M[rows, 1:3])
    apart = numeric_matrix([M[:, 2], M[:, 0]])  # not adjacent in this order
    assert not np.shares_memory(apart, M)
    np.testing.assert_array_equal(apart, M[:, [2, 0]])
    as64 = numeric_matrix([M[:, 0].astype(np.float64), M[:, 1]], dtype=np.float64)
    assert as64.dtype == np.float64 and not np.shares_memory(as64, M)


def test_chunked_standardization_matches_float64(monkeypatch):
    monkeypatch.setattr(data, "CHUNK_ROWS", 64)
    rng = np.random.default_rng(3)
    X = (rng.normal(size=(1000, 3)) * [1, 1e-3, 50] + [1e6, 0, -7]).astype(np.float32)
    X[:, 1] = 0.5  # constant: centred, not scaled
    rows = rng.permutation(1000)[:700]
    std = Standardizer.fit(X, rows)
    truth = X[rows].astype(np.float64)
    np.testing.assert_allclose(std.mean, truth.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(std.std[[0, 2]], truth.std(axis=0)[[0, 2]], rtol=1e-12)
    assert std.std[1] == 1.0
    out = std.apply(X, rows)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ((truth - std.mean) / std.std).astype(np.float32))


def test_a_column_empty_in_the_head_takes_its_type_from_later_blocks(tmp_path, small_blocks):
    lines = ["a,late,word,y"] + [f"{i % 7},,,{i % 2}" for i in range(200)]
    for i in range(150, 200):
        lines[1 + i] = f"{i % 7},{i * 0.5},{'red' if i % 2 else 'blue'},{i % 2}"
    path = tmp_path / "late.csv"
    path.write_text("\n".join(lines) + "\n")
    t = read_table(path, "y")
    late, word = t.columns[1], t.columns[2]
    assert late.kind == C.KIND_NUMERIC and word.kind == C.KIND_CATEGORICAL
    assert np.isnan(late.values[:150]).all() and late.values[160] == 80.0 and late.n_missing == 150
    assert word.values[151] == "red" and word.values[0] is None
