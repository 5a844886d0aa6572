"""Reading the CSV a user actually has: dialect, encoding, column types, missing cells, and the encoding of
categorical features, fitted on the training rows only.

The file is read with pyarrow's streaming CSV reader (columnar, in blocks), so a numeric file costs little
more than its final arrays. :func:`read_table` decides each column's kind:

- ``numeric``: numbers (``1.5``, ``2,5`` with a decimal comma); empty or ``NA``-like cells are missing;
- ``categorical``: text, or integers the user names with ``categorical=``;
- ``boolean``: ``true``/``false`` (any case); encoded like a categorical column with two categories;
- ISO dates are not used as features (one notice says so: derive numeric columns if they matter);
- columns that cannot carry signal are excluded with a notice: constant columns, an unnamed index column
  (pandas' ``to_csv`` writes one with an empty header), and identifiers (unique per row: every text value
  distinct, or integers that are a permutation of a contiguous range).

:class:`FeatureEncoder` turns the raw columns into the network's design matrix exactly as the exported graph
does: missing numbers get the training median (plus an optional 0/1 missing indicator), categories are
one-hot encoded, and a category never seen in training (or rarer than the kept ones) is encoded as the
training frequencies of the known ones, i.e. the "average" category, which standardization maps to zero.
Problems are :class:`~training.data.DataError` with one line, or one short block naming the first few bad
cells and how many there are.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import contract as C

#: Cells read as missing (compared case-insensitively, after stripping spaces).
MISSING_TOKENS = ("", "na", "n/a", "nan", "null", "none", "?", "-", "#n/a")
DELIMITERS = (",", ";", "\t", "|")
TRUE_TOKENS = ("true", "yes", "y", "t")
FALSE_TOKENS = ("false", "no", "n", "f")
#: A text column whose non-missing cells are numbers at least this often is numeric with bad cells (a column
#: of categories written as numbers and words alike is rare; --categorical says so).
NUMERIC_SHARE = 0.5
#: Most categories kept per column (the most frequent); the others share the unknown bucket.
MAX_CATEGORIES = 100
#: Bad cells named in an error block (the rest are counted).
SHOWN_PROBLEMS = 5
SNIFF_BYTES = 1 << 16
#: Column types are inferred from the file's first TYPE_BYTES; it is then streamed in blocks of BLOCK_BYTES
#: (pyarrow reads a few blocks ahead: small blocks keep that buffer small, and are no slower).
TYPE_BYTES = 1 << 22
BLOCK_BYTES = 1 << 20
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+([eE][+-]?\d+)?$")
_DECIMAL_POINT = re.compile(r"^[+-]?\d*\.\d+([eE][+-]?\d+)?$")


class DataError(ValueError):
    """Bad input data: one line naming the file, row and column, or one short block (the first problems and
    their count)."""


def row_label(index: int, line: int) -> str:
    """``row 5 (line 7)``: rows count from 0 over the data rows, as the service counts a batch's rows; the
    file line (1-based, the header is line 1) is for the editor."""
    return f"row {index} (line {line})"


@dataclass(frozen=True)
class Dialect:
    """How a file is written: delimiter, decimal mark and text encoding."""

    delimiter: str
    decimal: str
    encoding: str

    def describe(self) -> str:
        names = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
        encoding = "utf-8" if self.encoding == "utf-8-sig" else self.encoding  # the BOM is skipped either way
        decimal = "comma" if self.decimal == "," else "point"
        return f"{names[self.delimiter]}-separated, decimal {decimal}, {encoding}"


@dataclass
class Column:
    """One feature column as read: ``values`` is float32 with NaN for a missing cell (numeric), or an object
    array of ``str`` / ``None`` (categorical; boolean cells normalised to ``"false"`` / ``"true"``)."""

    name: str
    kind: str
    values: np.ndarray  # (N,)
    #: How many cells are missing, when the reader counted them as it went (None: count when asked).
    n_missing: int | None = None

    @property
    def missing(self) -> np.ndarray:
        """Boolean mask of the missing cells."""
        if self.kind == C.KIND_NUMERIC:
            return np.isnan(self.values)
        return np.equal(self.values, None)

    @property
    def has_missing(self) -> bool:
        """Whether any cell is missing."""
        return bool(self.missing.any()) if self.n_missing is None else self.n_missing > 0


@dataclass
class Table:
    """The feature columns kept, the raw target column, and what was decided on the way."""

    path: Path
    columns: list[Column]
    target: np.ndarray  # (N,) float64 for a numeric target column, else object (str)
    target_name: str
    dialect: Dialect
    notices: list[str] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return len(self.target)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def row_label(self, index: int) -> str:
        """``row i (line l)`` of data row ``index`` (the file is scanned again: error paths only)."""
        return row_label(index, _lines(self.path, self.dialect, [index])[0])


# --------------------------------------------------------------------------------------------- dialect


def _decode_sample(path: Path, encoding: str) -> str:
    with open(path, "rb") as f:
        raw = f.read(SNIFF_BYTES)
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        text = decoder.decode(raw, final=len(raw) < SNIFF_BYTES)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: cannot be read as {encoding} text (invalid byte at {exc.start}); pass --encoding, "
            "e.g. --encoding latin-1"
        ) from None
    return text.lstrip("\ufeff")


def sniff(path: Path, encoding: str | None = None, delimiter: str | None = None) -> Dialect:
    """The file's delimiter (``,`` ``;`` tab ``|``) and decimal mark, guessed from its first 64 KiB.

    The delimiter is the candidate that splits the first lines into the same number (> 1) of fields most
    often, the most fields winning ties; a decimal comma is assumed when the delimiter is not a comma and
    numbers are written ``2,5`` but never ``2.5``.
    """
    enc = codecs.lookup(encoding or "utf-8").name
    if enc == "utf-8":
        enc = "utf-8-sig"  # a byte-order mark is not part of the first column's name
    text = _decode_sample(path, enc)
    lines = text.splitlines()
    if len(text) >= SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut in the middle
    lines = [ln for ln in lines[:200] if ln.strip()]
    if not lines:
        raise DataError(f"{path}: the file is empty (a header row is required)")
    if delimiter is None:
        best: tuple[float, int, str] | None = None
        for cand in DELIMITERS:
            widths = [len(r) for r in csv.reader(io.StringIO("\n".join(lines)), delimiter=cand)]
            width = Counter(widths).most_common(1)[0][0]
            if width < 2:
                continue
            score = (sum(w == width for w in widths) / len(widths), width, cand)
            if best is None or score[:2] > best[:2]:
                best = score
        delimiter = best[2] if best else ","
    decimal = "."
    if delimiter != ",":
        cells = [
            c.strip() for r in csv.reader(io.StringIO("\n".join(lines[1:])), delimiter=delimiter) for c in r
        ]
        if any(_DECIMAL_COMMA.match(c) for c in cells) and not any(_DECIMAL_POINT.match(c) for c in cells):
            decimal = ","
    return Dialect(delimiter, decimal, enc)


# --------------------------------------------------------------------------------------------- reading


def _problem_block(path: Path, what: str, problems: list[str], count: int, hint: str = "") -> DataError:
    """One line for one problem; else a headline, the first few problems and how many more."""
    if count == 1:
        return DataError(f"{path}: {problems[0]}" + (f" ({hint})" if hint else ""))
    shown = "\n".join(f"  {p}" for p in problems[:SHOWN_PROBLEMS])
    more = f"\n  ... and {count - SHOWN_PROBLEMS} more" if count > SHOWN_PROBLEMS else ""
    return DataError(f"{path}: {count} {what}" + (f" ({hint})" if hint else "") + f":\n{shown}{more}")


def _lines(path: Path, dialect: Dialect, rows: Sequence[int]) -> list[int]:
    """The file line each data row (0-based, blank lines skipped as the reader skips them) starts on."""
    wanted = set(rows)
    found: dict[int, int] = {}
    with open(path, encoding=dialect.encoding, newline="") as f:
        reader = csv.reader(f, delimiter=dialect.delimiter)
        end, index = 0, -1  # index -1: the header
        for cells in reader:
            start, end = end + 1, reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if index in wanted:
                found[index] = start
                if len(found) == len(wanted):
                    break
            index += 1
    return [found.get(r, r + 2) for r in rows]


@dataclass
class _Columns:
    """The file as read, column by column: numeric columns (integer, float, or empty in the first block)
    straight into one float32 matrix, the others as pyarrow arrays (converted in :func:`read_table`)."""

    names: list[str]
    n_rows: int
    types: list[Any]  # per column, its pyarrow type
    numbers: np.ndarray  # (N, k) float32, NaN for a missing cell: the numeric columns in file order
    slot: dict[int, int]  # column index -> its column of ``numbers``
    target: np.ndarray | None  # (N,) float64: a numeric target column, kept exact
    others: dict[int, Any]  # column index -> pyarrow ChunkedArray (text, boolean, dates)
    #: numeric column index -> [min, max, missing cells]: exact (Python ints for an integer column), NaN
    #: ignored; min and max are None while no cell is present.
    ranges: dict[int, list[Any]]


def _read_columns(path: Path, dialect: Dialect, column_types: dict[str, Any], target: str) -> _Columns:
    """Stream the file block by block: each numeric column is written into a preallocated float32 matrix as
    its block arrives, so loading costs about the final arrays (no table of float64 columns, no per-cell
    Python); a numeric ``target`` column goes to its own float64 array (labels such as 0.1 stay exact).
    Column types come from the first ``TYPE_BYTES`` (``column_types`` overrides them); a later block that
    does not fit raises :class:`_RetypeColumn`. Rows with the wrong number of cells are one error block."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    bad_rows: list[tuple[int, int, int]] = []  # (file line, cells, expected)

    def on_bad_row(row: Any) -> str:
        bad_rows.append((row.number or 0, row.actual_columns, row.expected_columns))
        return "skip"

    def options(block: int, types: dict[str, Any]) -> dict[str, Any]:
        return {
            "read_options": pacsv.ReadOptions(
                encoding=_arrow_encoding(dialect), block_size=block, use_threads=False
            ),
            "parse_options": pacsv.ParseOptions(
                delimiter=dialect.delimiter, invalid_row_handler=on_bad_row, newlines_in_values=True
            ),
            "convert_options": pacsv.ConvertOptions(
                decimal_point=dialect.decimal,
                null_values=[t for tok in MISSING_TOKENS for t in {tok, tok.upper(), tok.capitalize()}],
                strings_can_be_null=True,
                true_values=[t for tok in TRUE_TOKENS[:1] for t in (tok, tok.upper(), tok.capitalize())],
                false_values=[t for tok in FALSE_TOKENS[:1] for t in (tok, tok.upper(), tok.capitalize())],
                column_types=types,
            ),
        }

    def is_numeric(t: Any) -> bool:
        return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t))

    try:
        # Types from the file's head, read as one block (a streaming reader would read many blocks ahead).
        with open(path, "rb") as f:
            head = f.read(TYPE_BYTES)
        lines = head.count(b"\n")
        if len(head) < TYPE_BYTES:  # the whole file: a bound on its rows (a quoted cell may hold a newline)
            bound = lines + 1
        else:  # rows a third shorter than the head's on average still fit; the loop grows it if not
            bound = int(path.stat().st_size * lines / len(head) * 4 / 3) + 1
            if lines:
                head = head[: head.rindex(b"\n") + 1]
        try:
            sample = pacsv.read_csv(pa.BufferReader(head), **options(2 * TYPE_BYTES, column_types))
            if len(set(sample.column_names)) == len(sample.column_names):  # (duplicates: refused later)
                column_types = dict(zip(sample.column_names, sample.schema.types))
            del sample
        except (pa.ArrowInvalid, UnicodeDecodeError):
            pass  # the head cut a quoted cell in two: types from the stream's first block
        bad_rows.clear()
        del head
        pa.default_memory_pool().release_unused()
        reader = pacsv.open_csv(path, **options(BLOCK_BYTES, column_types))
        schema = reader.schema
        types = list(schema.types)
        t_idx = next((j for j, name in enumerate(schema.names) if name.strip() == target), -1)
        numeric = [j for j, t in enumerate(types) if is_numeric(t) and j != t_idx]
        slot = {j: k for k, j in enumerate(numeric)}
        # Pages of the matrix that no row reaches are never touched, so the bound costs no memory.
        numbers = np.empty((bound, len(numeric)), np.float32)  # (rows bound, k)
        target64 = np.empty(bound) if t_idx >= 0 and is_numeric(types[t_idx]) else None
        others: dict[int, list[Any]] = {
            j: [] for j in range(len(types)) if j not in slot and not (j == t_idx and target64 is not None)
        }
        ranges: dict[int, list[Any]] = {j: [None, None, 0] for j in slot}
        n = 0
        for batch in reader:
            m = batch.num_rows
            if n + m > len(numbers):  # shorter rows than the head's: grow by half (one copy)
                more = max(n // 2, 2 * m)
                numbers = np.concatenate([numbers[:n], np.empty((more, len(numeric)), np.float32)])
                if target64 is not None:
                    target64 = np.concatenate([target64[:n], np.empty(more)])
            if target64 is not None:
                tcol = batch.column(t_idx)
                target64[n : n + m] = np.nan if pa.types.is_null(tcol.type) else tcol.to_numpy(False)
            for j, k in slot.items():
                col = batch.column(j)
                stats = ranges[j]
                if pa.types.is_null(col.type):
                    numbers[n : n + m, k] = np.nan
                    stats[2] += m
                    continue
                # Range and missing cells counted here, on the block's contiguous column, spare read_table
                # passes over the matrix's strided columns (constant and ID columns, imputation).
                chunk = col.to_numpy(zero_copy_only=False)  # (m,): int64, or float64 with NaN for nulls
                numbers[n : n + m, k] = chunk
                present = chunk
                if chunk.dtype.kind == "f":
                    nan = np.isnan(chunk)
                    if nan.any():
                        stats[2] += int(nan.sum())
                        present = chunk[~nan]
                if len(present):
                    lo, hi = present.min().item(), present.max().item()
                    stats[0] = lo if stats[0] is None else min(stats[0], lo)
                    stats[1] = hi if stats[1] is None else max(stats[1], hi)
            for j, chunks in others.items():
                chunks.append(batch.column(j))
            n += m
    except pa.ArrowInvalid as exc:
        message = str(exc).splitlines()[0]
        match = re.search(
            r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to \w+: invalid value '(.*)'", message
        )
        if match:
            raise _RetypeColumn(int(match.group(1)), match.group(2)) from None
        raise DataError(f"{path}: cannot be read as CSV ({message})") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: cannot be read as {dialect.encoding} text ({exc.reason}); pass --encoding, "
            "e.g. --encoding latin-1"
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    if bad_rows:
        problems = []
        for line, cells, expected in bad_rows[:SHOWN_PROBLEMS]:
            index = _row_at_line(path, dialect, line)
            problems.append(f"{row_label(index, line)} has {cells} cells, the header has {expected}")
        raise _problem_block(path, "rows have the wrong number of cells", problems, len(bad_rows))
    return _Columns(
        names=list(schema.names),
        n_rows=n,
        types=types,
        numbers=numbers[:n],
        slot=slot,
        target=None if target64 is None else target64[:n],
        others={j: pa.chunked_array(chunks, type=types[j]) for j, chunks in others.items()},
        ranges=ranges,
    )


class _RetypeColumn(Exception):
    """A later block holds a value the type inferred from the first block cannot take (text in a number
    column, a decimal in an integer column): read the file again with that column retyped."""

    def __init__(self, index: int, value: str) -> None:
        self.index = index
        self.value = value


def _row_at_line(path: Path, dialect: Dialect, line: int) -> int:
    """The data row index (0-based, blank lines skipped) of the row that starts on file ``line``."""
    with open(path, encoding=dialect.encoding, newline="") as f:
        reader = csv.reader(f, delimiter=dialect.delimiter)
        end, index = 0, -1
        for cells in reader:
            start, end = end + 1, reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if start >= line:
                return index
            index += 1
    return max(line - 2, 0)


def _to_number(text: str, decimal: str) -> float | None:
    t = text.strip()
    if decimal == ",":
        t = t.replace(",", ".")
    try:
        v = float(t)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _text_values(col: Any) -> np.ndarray:
    """A pyarrow column -> object array of stripped ``str`` or ``None`` (missing tokens are None)."""
    out = np.array(col.to_pylist(), dtype=object)
    missing = set(MISSING_TOKENS)
    for i, v in enumerate(out):
        if v is not None:
            s = str(v).strip()
            out[i] = None if s.lower() in missing else s
    return out


def read_table(
    path: str | Path,
    target: str,
    *,
    encoding: str | None = None,
    delimiter: str | None = None,
    features: Sequence[str] | None = None,
    drop: Sequence[str] = (),
    categorical: Sequence[str] = (),
) -> Table:
    """Read ``path``, type its columns and keep the useful features; :class:`DataError` on bad data."""
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    dialect = sniff(path, encoding, delimiter)
    column_types: dict[str, Any] = {name: pa.string() for name in categorical}
    for _ in range(64):  # each retry retypes one more column
        try:
            raw = _read_columns(path, dialect, column_types, target)
            break
        except _RetypeColumn as retry:
            name = _header(path, dialect)[retry.index]
            # A number the first block's integers cannot hold: the column is decimal; anything else is text.
            number = _to_number(retry.value, dialect.decimal) is not None
            was = column_types.get(name)
            column_types[name] = pa.float64() if number and was is None else pa.string()
    else:  # pragma: no cover - 64 columns switching type in later blocks
        raise DataError(f"{path}: column types keep changing through the file")
    header = [str(h).strip() for h in raw.names]
    if not header or (len(header) == 1 and not header[0]):
        raise DataError(f"{path}: the file is empty (a header row is required)")
    n = raw.n_rows
    notices = [f"read {path.name}: {dialect.describe()}, {n} rows, {len(header)} columns"]
    named = [h for h in header if h]
    if len(set(named)) != len(named):
        dup = sorted({h for h in named if named.count(h) > 1})
        raise DataError(f"{path}: duplicate column names {dup}")
    if target not in header:
        raise DataError(f"{path}: no column named {target!r} (columns: {', '.join(header)})")
    for option, names in (("--features", features or ()), ("--drop", drop), ("--categorical", categorical)):
        unknown = [n for n in names if n not in header]
        if unknown:
            raise DataError(f"{path}: {option} names no column {unknown[0]!r} (columns: {', '.join(header)})")
    if target in (features or ()) or target in drop:
        raise DataError(f"{path}: the target {target!r} cannot also be a feature or dropped")

    t_idx = header.index(target)
    tvalues: np.ndarray
    if raw.target is not None:  # a numeric target stays in numpy, float64 (labels and regression metrics)
        tvalues = raw.target
        missing_target = np.flatnonzero(np.isnan(tvalues)).tolist()
    else:
        tvalues = _text_values(raw.others[t_idx])
        missing_target = np.flatnonzero(np.equal(tvalues, None)).tolist()
    if missing_target:
        shown = missing_target[:SHOWN_PROBLEMS]
        problems = [
            f"{row_label(i, line)}, target column {target!r} is empty or NaN"
            for i, line in zip(shown, _lines(path, dialect, shown))
        ]
        raise _problem_block(path, f"rows have no target {target!r}", problems, len(missing_target))

    columns: list[Column] = []
    excluded: dict[str, list[str]] = {}
    bad_cells: list[tuple[int, str, str]] = []  # (row, column, cell) of the first few
    n_problems = 0
    chosen = set(features) if features else None
    kept: list[tuple[int, Column]] = []  # the numeric columns read into raw.numbers that stay, in order
    for j, name in enumerate(header):
        col = raw.others.pop(j, None)  # each text column dropped once converted
        if j == t_idx or name in drop or (chosen is not None and name not in chosen):
            continue
        asked = chosen is not None  # a column the user named is kept whatever it looks like
        kind: str
        slot = raw.slot.get(j)
        if slot is not None:
            values = raw.numbers[:, slot]  # a view: numeric columns are never copied
            kind = C.KIND_NUMERIC
            lo, hi, n_missing = raw.ranges[j]
            integer = pa.types.is_integer(raw.types[j])
            if not asked and integer and (not name or name.lower().startswith("unnamed")):
                excluded.setdefault("an unnamed index column", []).append(repr(name))
                continue
            if not asked and integer and n >= 20 and _is_identifier(path, dialect, raw, j):
                excluded.setdefault("unique per row, like an ID", []).append(repr(name))
                continue
        elif pa.types.is_boolean(col.type):
            values = np.array(
                [None if v is None else ("true" if v else "false") for v in col.to_pylist()], dtype=object
            )
            kind = C.KIND_BOOLEAN
        elif pa.types.is_date(col.type) or pa.types.is_timestamp(col.type):
            if not asked:
                excluded.setdefault(
                    "dates (not used as features: derive numeric columns if they matter)", []
                ).append(repr(name))
                continue
            raise DataError(f"{path}: column {name!r} holds dates, which cannot be features yet")
        elif name in categorical:
            values = _text_values(col.cast(pa.string()))
            kind = C.KIND_CATEGORICAL
        else:
            values = _text_values(col.cast(pa.string()))
            present = [v for v in values if v is not None]
            numbers = [_to_number(v, dialect.decimal) for v in present]
            n_numeric = sum(v is not None for v in numbers)
            lowered = {v.lower() for v in present}
            if (
                present
                and lowered <= set(TRUE_TOKENS + FALSE_TOKENS)
                and len(lowered) <= 2
                and len({v in TRUE_TOKENS for v in lowered}) == len(lowered)
            ):
                values = np.array(
                    [
                        None if v is None else ("true" if v.lower() in TRUE_TOKENS else "false")
                        for v in values
                    ],
                    dtype=object,
                )
                kind = C.KIND_BOOLEAN
            elif present and n_numeric == len(present):
                values = np.array(
                    [np.nan if v is None else _to_number(v, dialect.decimal) for v in values], np.float32
                )
                kind = C.KIND_NUMERIC
            elif present and n_numeric >= NUMERIC_SHARE * len(present):
                bad = [
                    i
                    for i, v in enumerate(values)
                    if v is not None and _to_number(v, dialect.decimal) is None
                ]
                n_problems += len(bad)
                room = max(SHOWN_PROBLEMS - len(bad_cells), 0)
                bad_cells += [(i, name, str(values[i])) for i in bad[:room]]
                continue
            else:
                kind = C.KIND_CATEGORICAL
                if not asked and n >= 20 and len(present) == n and len(set(present)) == n:
                    excluded.setdefault("unique per row, like an ID", []).append(repr(name))
                    continue
        column = Column(name or f"column_{j + 1}", kind, values)
        if slot is not None:
            column.n_missing = n_missing
            constant = lo is None or lo == hi
        else:
            constant = _is_constant(column)
        if not asked and constant:
            excluded.setdefault("constant", []).append(repr(name))
            continue
        if slot is not None:
            kept.append((slot, column))
        columns.append(column)
    if n_problems:
        bad_cells.sort()
        lines = _lines(path, dialect, [i for i, _, _ in bad_cells])
        problems = [
            f"{row_label(i, line)}, column {name!r} is not a finite number: {cell[:40]!r}"
            for (i, name, cell), line in zip(bad_cells, lines)
        ]
        hint = "leave missing cells empty or write NA; --categorical COLUMN makes a column categorical"
        raise _problem_block(path, "cells are not numbers", problems, n_problems, hint)
    for why, names in excluded.items():
        notices.append(f"excluded {', '.join(names)}: {why} (name them in --features to keep them)")
    if not columns:
        why = "; ".join(f"excluded {', '.join(names)}: {reason}" for reason, names in excluded.items())
        raise DataError(
            f"{path}: no feature columns left besides the target {target!r}" + (f" ({why})" if why else "")
        )
    if not any(c.kind == C.KIND_NUMERIC for c in columns):
        raise DataError(f"{path}: at least one numeric feature column is needed")
    _compact(raw.numbers, kept)
    kinds = Counter(c.kind for c in columns)
    notices.append("features: " + ", ".join(f"{k} {kinds[k]}" for k in C.KINDS if kinds[k]))
    return Table(path, columns, tvalues, target, dialect, notices)


def _compact(numbers: np.ndarray, kept: list[tuple[int, Column]]) -> None:
    """Move the kept columns of ``numbers`` to its front, in place (each moves left, after the one before
    it), and point their :class:`Column` at the new places: together they are then ``numbers[:, :k]``, which
    :func:`numeric_matrix` hands out without a copy."""
    for new, (old, column) in enumerate(kept):
        if new != old:
            numbers[:, new] = numbers[:, old]
        column.values = numbers[:, new]


def _beyond_float32(lo: int, hi: int) -> bool:
    """Whether integers in ``[lo, hi]`` may not be exact in float32 (beyond 2**24)."""
    return max(abs(lo), abs(hi)) > 2**24


def _exact_column(path: Path, dialect: Dialect, name: str, dtype: Any) -> np.ndarray:
    """One column read again on its own, as float64 (an integer column: int64 first, then float64)."""
    import pyarrow.csv as pacsv

    read = pacsv.ReadOptions(encoding=_arrow_encoding(dialect), block_size=BLOCK_BYTES, use_threads=False)
    parse = pacsv.ParseOptions(delimiter=dialect.delimiter, newlines_in_values=True)
    convert = pacsv.ConvertOptions(
        decimal_point=dialect.decimal,
        null_values=[t for tok in MISSING_TOKENS for t in {tok, tok.upper(), tok.capitalize()}],
        include_columns=[name],
        column_types={name: dtype},
    )
    table = pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)
    return table.column(0).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _is_identifier(path: Path, dialect: Dialect, raw: _Columns, j: int) -> bool:
    """Integers that are all distinct and fill a contiguous range: a row number or an ID, not a measurement.

    The range is known exactly from the stream; only a column that fills it is checked for duplicates, on the
    float32 values when they are exact, else on the column read again as integers.
    """
    lo, hi, missing = raw.ranges[j]
    if missing or lo is None or hi - lo != raw.n_rows - 1:
        return False
    if _beyond_float32(lo, hi):
        values = _exact_column(path, dialect, raw.names[j], raw.types[j])
    else:
        values = raw.numbers[:, raw.slot[j]]
    return len(np.unique(values)) == raw.n_rows


def _is_constant(column: Column) -> bool:
    """At most one distinct value among the present cells (numbers: min == max, no sort of the column)."""
    if column.kind == C.KIND_NUMERIC:
        present = column.values[~np.isnan(column.values)]
        return len(present) == 0 or bool(present.min() == present.max())
    return len({v for v in column.values if v is not None}) <= 1


def _arrow_encoding(dialect: Dialect) -> str:
    """The encoding to give pyarrow: its own UTF-8 decoder (which skips a byte-order mark) for UTF-8, rather
    than a transcoding pass through Python's codec."""
    return "utf8" if dialect.encoding in ("utf-8", "utf-8-sig") else dialect.encoding


def _header(path: Path, dialect: Dialect) -> list[str]:
    with open(path, encoding=dialect.encoding, newline="") as f:
        return next(csv.reader(f, delimiter=dialect.delimiter))


# --------------------------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class FeatureEncoder:
    """Raw columns -> the float64 design matrix, as the exported graph computes it.

    Design columns, in order: every numeric feature (missing cells imputed), then one 0/1 missing indicator
    per feature that has one, then each categorical or boolean feature's one-hot block.
    """

    inputs: list[C.InputSpec]

    @classmethod
    def fit(
        cls, columns: Sequence[Column], rows: np.ndarray | slice, missing_indicator: bool = False
    ) -> FeatureEncoder:
        """Medians, most frequent categories and category frequencies of the training ``rows``."""
        specs = []
        for col in columns:
            # Only a feature with missing cells in the file is imputed; elsewhere a missing cell stays an
            # error at serving (a client bug, not a property of the data).
            imputed = col.has_missing
            if col.kind == C.KIND_NUMERIC and not imputed:  # nothing to learn from a full numeric column
                specs.append(C.InputSpec(col.name, C.KIND_NUMERIC, missing_rate=0.0))
                continue
            v = col.values[rows]
            miss = col.missing[rows]
            rate = float(miss.mean()) if len(v) else 0.0
            indicator = missing_indicator and imputed  # numbers only: a category is imputed, or unknown
            if col.kind == C.KIND_NUMERIC:
                median = float(np.median(v[~miss])) if not miss.all() else 0.0
                specs.append(
                    C.InputSpec(
                        col.name,
                        C.KIND_NUMERIC,
                        impute=median,
                        missing_indicator=indicator,
                        missing_rate=rate,
                    )
                )
                continue
            counts = Counter(x for x in v if x is not None)
            if col.kind == C.KIND_BOOLEAN:
                cats = list(C.BOOLEAN_CATEGORIES)
            else:
                kept = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_CATEGORIES]
                cats = sorted(k for k, _ in kept)
            if not cats:
                cats = ["?"]
            total = max(sum(counts[c] for c in cats), 1)
            freqs = [counts[c] / total for c in cats]
            mode = min(cats, key=lambda c: (-counts[c], c))
            specs.append(
                C.InputSpec(
                    col.name,
                    col.kind,
                    cats,
                    freqs,
                    impute=mode if imputed else None,
                    missing_rate=rate,
                )
            )
        return cls(specs)

    @property
    def design_names(self) -> list[str]:
        """A name per design column: ``feature``, ``feature=missing``, ``feature=category``."""
        names = [s.name for s in self.inputs if s.is_numeric]
        names += [f"{s.name}=missing" for s in self.inputs if s.missing_indicator]
        names += [f"{s.name}={c}" for s in self.inputs if not s.is_numeric for c in s.categories]
        return names

    def transform(self, columns: Sequence[Column], rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """The design matrix (float32, ``(N, D)``, what the served graph computes) of ``rows``; for numeric
        columns without missing cells, read by :func:`read_table`, it is their matrix itself (no copy)."""
        return self.design(*self.raw_inputs(columns, rows))

    def design(self, x: np.ndarray, s: np.ndarray | None) -> np.ndarray:
        """What a client sends (``x`` numbers with NaN for missing, ``s`` strings with "" for missing) ->
        the design matrix ``(N, D)`` in ``x``'s float type (float64 for other types); the exported graph's
        front end computes the same."""
        numeric = [sp for sp in self.inputs if sp.is_numeric]
        x = np.asarray(x)
        if x.dtype.kind != "f":
            x = x.astype(np.float64)
        fill = np.array([np.nan if sp.impute is None else float(sp.impute) for sp in numeric], x.dtype)
        missing = np.isnan(x)
        blocks = [np.where(missing, fill, x) if missing.any() else x]  # (N, n_numeric)
        flagged = [j for j, sp in enumerate(numeric) if sp.missing_indicator]
        if flagged:
            blocks.append(np.isnan(x[:, flagged]).astype(x.dtype))
        for j, spec in enumerate(sp for sp in self.inputs if not sp.is_numeric):
            assert s is not None
            table = one_hot_table(spec).astype(x.dtype)
            blocks.append(table[category_codes(spec, list(s[:, j]))])  # (N, K)
        return np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]

    def unknown_counts(self, s: np.ndarray) -> dict[str, int]:
        """Per categorical feature, how many cells of ``s`` fall in the unknown bucket."""
        out = {}
        for j, spec in enumerate(sp for sp in self.inputs if not sp.is_numeric):
            codes = category_codes(spec, list(s[:, j]))
            out[spec.name] = int((codes == len(spec.categories)).sum())
        return out

    def n_design(self) -> int:
        return len(self.design_names)

    def raw_inputs(
        self, columns: Sequence[Column], rows: np.ndarray | slice = slice(None), dtype: type = np.float32
    ) -> tuple[np.ndarray, np.ndarray]:
        """What a client sends for ``rows``: numbers (NaN: missing) and strings ("": missing)."""
        by_name = {c.name: c for c in columns}
        x = numeric_matrix([by_name[s.name].values for s in self.inputs if s.is_numeric], rows, dtype)
        cats = [by_name[s.name].values[rows] for s in self.inputs if not s.is_numeric]
        n = x.shape[0]
        s = np.stack(cats, axis=1) if cats else np.empty((n, 0), dtype=object)
        s = np.where(np.equal(s, None), "", s).astype(object)
        return x, s


def numeric_matrix(
    columns: Sequence[np.ndarray], rows: np.ndarray | slice = slice(None), dtype: type = np.float32
) -> np.ndarray:
    """The ``rows`` of ``columns`` side by side, ``(N, k)`` in ``dtype``: a view when the columns already are
    consecutive columns of one matrix of that type (how :func:`read_table` stores numeric columns) and all
    rows are asked for, else one copy (no stacked intermediate)."""
    first = columns[0]
    step = first.itemsize
    whole = np.lib.stride_tricks.as_strided(
        first, (len(first), len(columns)), (first.strides[0], step), writeable=False
    )
    adjacent = all(
        c.dtype == dtype
        and c.strides == first.strides
        and len(c) == len(first)
        and c.__array_interface__["data"][0] == whole[:, k].__array_interface__["data"][0]
        for k, c in enumerate(columns)
    )
    if adjacent:
        # Every column of ``whole`` is one of ``columns``, so the strided view reads only their memory.
        return whole if isinstance(rows, slice) and rows == slice(None) else whole[rows]
    n = len(range(len(first))[rows]) if isinstance(rows, slice) else len(rows)
    out = np.empty((n, len(columns)), dtype)
    for k, c in enumerate(columns):
        out[:, k] = c[rows]
    return out


def category_codes(spec: C.InputSpec, values: Sequence[str | None]) -> np.ndarray:
    """Index of each value among ``spec.categories``; a missing cell (None or "") is the imputed category
    when there is one; anything else unknown is ``len(categories)``."""
    index = {c: k for k, c in enumerate(spec.categories)}
    unknown = len(spec.categories)
    missing = index.get(spec.impute, unknown) if isinstance(spec.impute, str) else unknown
    return np.array(
        [missing if (v is None or v == "") else index.get(v, unknown) for v in values], dtype=np.int64
    )


def one_hot_table(spec: C.InputSpec) -> np.ndarray:
    """``(K + 1, K)``: the one-hot row of each category, then the unknown bucket's row (the frequencies)."""
    return np.vstack([np.eye(len(spec.categories)), np.asarray(spec.frequencies, np.float64)])
