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
BLOCK_BYTES = 1 << 24
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
    """One feature column as read: ``values`` is float64 with NaN for a missing cell (numeric), or an object
    array of ``str`` / ``None`` (categorical; boolean cells normalised to ``"false"`` / ``"true"``)."""

    name: str
    kind: str
    values: np.ndarray  # (N,)

    @property
    def missing(self) -> np.ndarray:
        """Boolean mask of the missing cells."""
        if self.kind == C.KIND_NUMERIC:
            return np.isnan(self.values)
        return np.equal(self.values, None)


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


def _read_arrow(path: Path, dialect: Dialect, text_columns: Sequence[str]) -> Any:
    """The file as a pyarrow Table, read in blocks; rows with the wrong number of cells are an error block."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    bad_rows: list[tuple[int, int, int]] = []  # (file line, cells, expected)

    def on_bad_row(row: Any) -> str:
        bad_rows.append((row.number or 0, row.actual_columns, row.expected_columns))
        return "skip"

    read = pacsv.ReadOptions(encoding=dialect.encoding, block_size=BLOCK_BYTES, use_threads=False)
    parse = pacsv.ParseOptions(
        delimiter=dialect.delimiter, invalid_row_handler=on_bad_row, newlines_in_values=True
    )
    convert = pacsv.ConvertOptions(
        decimal_point=dialect.decimal,
        null_values=[t for tok in MISSING_TOKENS for t in {tok, tok.upper(), tok.capitalize()}],
        strings_can_be_null=True,
        true_values=[t for tok in TRUE_TOKENS[:1] for t in (tok, tok.upper(), tok.capitalize())],
        false_values=[t for tok in FALSE_TOKENS[:1] for t in (tok, tok.upper(), tok.capitalize())],
        column_types={name: pa.string() for name in text_columns},
    )
    try:
        reader = pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)
        batches = list(reader)
        schema = reader.schema
    except pa.ArrowInvalid as exc:
        message = str(exc).splitlines()[0]
        match = re.search(r"In CSV column #(\d+): CSV conversion error to \w+: invalid value '(.*)'", message)
        if match:
            raise _RetypeColumn(int(match.group(1))) from None
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
    return pa.Table.from_batches(batches, schema=schema)


class _RetypeColumn(Exception):
    """A later block holds text in a column the first block showed as numbers: read it as text."""

    def __init__(self, index: int) -> None:
        self.index = index


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
    text_columns: list[str] = []
    for _ in range(64):  # each retry turns one more column to text
        try:
            arrow = _read_arrow(path, dialect, text_columns)
            break
        except _RetypeColumn as retry:
            header = _header(path, dialect)
            text_columns.append(header[retry.index])
    else:  # pragma: no cover - 64 columns switching type in later blocks
        raise DataError(f"{path}: column types keep changing through the file")
    header = [str(n).strip() for n in arrow.column_names]
    if not header or (len(header) == 1 and not header[0]):
        raise DataError(f"{path}: the file is empty (a header row is required)")
    notices = [f"read {path.name}: {dialect.describe()}, {arrow.num_rows} rows, {len(header)} columns"]
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
    # Column by column, each dropped once read: the arrow table never sits beside all of its copies.
    arrow_columns: list[Any] = list(arrow.columns)
    n = arrow.num_rows
    del arrow
    tcol = arrow_columns[t_idx]
    tvalues: np.ndarray
    if pa.types.is_floating(tcol.type) or pa.types.is_integer(tcol.type):
        tvalues = tcol.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)  # NaN: missing
        missing_target = np.flatnonzero(np.isnan(tvalues)).tolist()
    else:
        tvalues = _text_values(tcol)
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
    for j, name in enumerate(header):
        col, arrow_columns[j] = arrow_columns[j], None
        if j == t_idx or name in drop or (chosen is not None and name not in chosen):
            continue
        asked = chosen is not None  # a column the user named is kept whatever it looks like
        kind: str
        if name in categorical:
            values = _text_values(col.cast(pa.string()))
            kind = C.KIND_CATEGORICAL
        elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_null(col.type):
            values = col.to_numpy(zero_copy_only=False).astype(np.float64, copy=False) if n else np.empty(0)
            if pa.types.is_null(col.type):
                values = np.full(n, np.nan)
            kind = C.KIND_NUMERIC
            if (
                not asked
                and pa.types.is_integer(col.type)
                and (not name or name.lower().startswith("unnamed"))
            ):
                excluded.setdefault("an unnamed index column", []).append(repr(name))
                continue
            if not asked and pa.types.is_integer(col.type) and n >= 20 and _is_identifier_range(values):
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
                values = np.array([np.nan if v is None else _to_number(v, dialect.decimal) for v in values])
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
        present_mask = ~column.missing
        if kind == C.KIND_NUMERIC:
            distinct = len(np.unique(values[present_mask])) if present_mask.any() else 0
        else:
            distinct = len(set(values[present_mask]))
        if distinct <= 1 and not asked:
            excluded.setdefault("constant", []).append(repr(name))
            continue
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
    kinds = Counter(c.kind for c in columns)
    notices.append("features: " + ", ".join(f"{k} {kinds[k]}" for k in C.KINDS if kinds[k]))
    return Table(path, columns, tvalues, target, dialect, notices)


def _header(path: Path, dialect: Dialect) -> list[str]:
    with open(path, encoding=dialect.encoding, newline="") as f:
        return next(csv.reader(f, delimiter=dialect.delimiter))


def _is_identifier_range(values: np.ndarray) -> bool:
    """Integers that are all distinct and fill a contiguous range: a row number or an ID, not a measurement."""
    if np.isnan(values).any():
        return False
    lo, hi = values.min(), values.max()
    return hi - lo == len(values) - 1 and len(np.unique(values)) == len(values)


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
        cls, columns: Sequence[Column], rows: np.ndarray, missing_indicator: bool = False
    ) -> FeatureEncoder:
        """Medians, most frequent categories and category frequencies of the training ``rows``."""
        specs = []
        for col in columns:
            v = col.values[rows]
            miss = col.missing[rows]
            rate = float(miss.mean()) if len(v) else 0.0
            # Only a feature with missing cells in the file is imputed; elsewhere a missing cell stays an
            # error at serving (a client bug, not a property of the data).
            imputed = bool(col.missing.any())
            indicator = missing_indicator and imputed  # numbers only: a category is imputed, or unknown
            if col.kind == C.KIND_NUMERIC:
                present = v[~miss]
                median = float(np.median(present)) if len(present) else 0.0
                specs.append(
                    C.InputSpec(
                        col.name,
                        C.KIND_NUMERIC,
                        impute=median if imputed else None,
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
        """The design matrix (float64, ``(N, D)``) of ``rows``."""
        return self.design(*self.raw_inputs(columns, rows, np.float64))

    def design(self, x: np.ndarray, s: np.ndarray | None) -> np.ndarray:
        """What a client sends (``x`` numbers with NaN for missing, ``s`` strings with "" for missing) ->
        the design matrix, float64 ``(N, D)``; the exported graph's front end computes the same."""
        numeric = [sp for sp in self.inputs if sp.is_numeric]
        x = np.asarray(x, np.float64)
        fill = np.array([np.nan if sp.impute is None else float(sp.impute) for sp in numeric])
        missing = np.isnan(x)
        blocks = [np.where(missing, fill, x) if missing.any() else x]  # (N, n_numeric)
        flagged = [j for j, sp in enumerate(numeric) if sp.missing_indicator]
        if flagged:
            blocks.append(np.isnan(x[:, flagged]).astype(np.float64))
        for j, spec in enumerate(sp for sp in self.inputs if not sp.is_numeric):
            assert s is not None
            blocks.append(one_hot_table(spec)[category_codes(spec, list(s[:, j]))])  # (N, K)
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
        nums = [by_name[s.name].values[rows] for s in self.inputs if s.is_numeric]
        cats = [by_name[s.name].values[rows] for s in self.inputs if not s.is_numeric]
        x = np.stack(nums, axis=1).astype(dtype)
        n = x.shape[0]
        s = np.stack(cats, axis=1) if cats else np.empty((n, 0), dtype=object)
        s = np.where(np.equal(s, None), "", s).astype(object)
        return x, s


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
