"""From request bytes to a float32 batch: JSON parsing and number checks shared by the V1 and V2 codecs.

The numbers of a V2 request never become Python objects when :func:`loads_tensors` can help it: simdjson
parses the body and copies each input's ``data`` array straight into a float64 buffer (refusing anything
but numbers), a quarter of the cost of ``orjson`` building one Python float per number (BENCHMARKS.md).
Whatever it cannot vouch for (a non-number, a ragged nesting, anything unusual) goes the exact way: ``orjson``,
a type check over the flat list (C-level ``set(map(type, ...))``) and one ``np.array`` conversion, where only
the error path looks at individual elements. Messages name the row and column, never echo the payload.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import orjson
import simdjson

from service.errors import BadRequest

FLOAT32_MAX = float(np.finfo(np.float32).max)
_NUMBER_TYPES = {int, float}


def loads(body: bytes | memoryview) -> Any:
    """Parse a JSON body with orjson; :class:`BadRequest` explains what is wrong and where."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        token = exc.doc[exc.pos : exc.pos + 9].lstrip("-") if isinstance(exc.doc, str) else ""
        if token.startswith(("NaN", "Infinity")):
            raise BadRequest(
                f"malformed JSON: {token.split(',')[0].split(']')[0]} at char {exc.pos} is not a JSON number; "
                "send finite numbers"
            ) from None
        raise BadRequest(f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None


@dataclass(frozen=True)
class Numbers:
    """A JSON array of numbers, already in float64: flat, or ``len(widths)`` rows of ``widths[i]`` numbers."""

    values: np.ndarray  # (count,) float64, row after row
    widths: tuple[int, ...] | None  # None: flat

    def __len__(self) -> int:
        """As the JSON list's length: rows when nested, numbers when flat."""
        return len(self.values) if self.widths is None else len(self.widths)


def loads_tensors(body: bytes | memoryview) -> Any:
    """The JSON object ``body`` as :func:`loads` gives it, but with each ``inputs[i].data`` array of numbers
    as :class:`Numbers`; None when that cannot be vouched for (then :func:`loads` and the exact checks)."""
    try:
        return _loads_tensors(body)
    except Exception:  # not JSON, a number beyond 64 bits, a key simdjson cannot look up...: the exact path
        return None  # decides, and says what is wrong


def _loads_tensors(body: bytes | memoryview) -> Any:
    raw = body if isinstance(body, bytes) else bytes(body)
    doc = simdjson.Parser().parse(raw)
    if not isinstance(doc, simdjson.Object):
        return None
    request: dict[str, Any] = {}
    arrays = 0  # arrays seen, to check against the body's "[" count: nothing hid inside a data array
    keys = list(doc.keys())
    if len(set(keys)) != len(keys):  # a repeated key: orjson keeps the last, simdjson finds the first
        return None
    for key in keys:
        value = doc[key]
        if key == "inputs" and isinstance(value, simdjson.Array):
            inputs: list[Any] = []
            arrays += 1
            for tensor in value:
                if not isinstance(tensor, simdjson.Object):
                    return None
                converted: dict[str, Any] = {}
                names = list(tensor.keys())
                if len(set(names)) != len(names):
                    return None
                for name in names:
                    field = tensor[name]
                    if name == "data" and isinstance(field, simdjson.Array):
                        numbers = _numbers(field)
                        if numbers is None:
                            return None
                        converted[name] = numbers
                        arrays += 1 + (0 if numbers.widths is None else len(numbers.widths))
                    else:
                        converted[name] = _plain(field)
                        arrays += _count_lists(converted[name])
                inputs.append(converted)
            request[key] = inputs
        else:
            request[key] = _plain(value)
            arrays += _count_lists(request[key])
    return request if raw.count(b"[") == arrays else None  # e.g. a "[" in a string: the exact path


def _numbers(array_: Any) -> Numbers | None:
    """A simdjson array of numbers (flat) or of arrays of numbers (rows) as :class:`Numbers`, else None."""
    n = len(array_)
    widths: tuple[int, ...] | None = None
    if n and isinstance(array_[0], simdjson.Array):
        rows = list(array_)
        if not all(isinstance(row, simdjson.Array) for row in rows):
            return None
        widths = tuple(len(row) for row in rows)
    values = np.frombuffer(
        array_.as_buffer(of_type="d"), dtype=np.float64
    )  # (count,); TypeError: not numbers
    expected = n if widths is None else sum(widths)
    return Numbers(values, widths) if len(values) == expected else None


def _plain(value: Any) -> Any:
    """A simdjson value as Python objects (lists, dicts, str, int, float, bool, None)."""
    if isinstance(value, simdjson.Array):
        return value.as_list()
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    return value


def _count_lists(value: Any) -> int:
    if isinstance(value, list):
        return 1 + sum(_count_lists(v) for v in value)
    if isinstance(value, dict):
        return sum(_count_lists(v) for v in value.values())
    return 0


def describe(value: Any) -> str:
    """What a JSON value is, for an error message, without echoing long content."""
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def has_literals(body: bytes | memoryview) -> bool:
    """Whether a JSON text may hold ``true`` or ``false`` (a C-level scan; strings may cause false alarms)."""
    raw = body if isinstance(body, bytes) else bytes(body)
    return b"true" in raw or b"false" in raw


def numbers_to_rows(
    flat: list[Any],
    n_rows: int,
    n_cols: int,
    integral: bool = False,
    *,
    booleans_possible: bool = True,
    bounds: tuple[float, float] | None = None,
    limit: float = FLOAT32_MAX,
    nan_columns: np.ndarray | None = None,
) -> np.ndarray:
    """A flat list of ``n_rows * n_cols`` JSON numbers -> finite float32 (n_rows, n_cols).

    Strings, booleans, nulls and nested lists are refused (numpy would quietly turn ``"1"`` or ``true`` into
    1.0); with ``integral`` the values must be whole numbers (an INT datatype was declared); with ``bounds``
    they must lie within them (the declared datatype's range); ``limit`` is the model's input limit and
    ``nan_columns`` the columns where NaN is a missing cell (the caller turned a null into NaN where it may
    stand) (:func:`to_float32_rows`). ``booleans_possible=False`` (the body holds
    no ``true``/``false``: :func:`has_literals`) allows the fast conversion: ``array('d', ...)`` refuses every
    other non-number by itself, in one C loop, where a type check of each element cost as much again.
    """
    values: np.ndarray | None = None
    if not booleans_possible:
        try:
            values = np.frombuffer(array("d", flat), dtype=np.float64)  # (N * F,)
        except OverflowError:  # a JSON integer beyond the float64 range
            raise BadRequest(
                "a value is far outside the float32 range; expected a finite float32 number"
            ) from None
        except TypeError:
            values = None  # a non-number somewhere: the exact check below names it
    if values is None:
        types = set(map(type, flat))
        if not types <= _NUMBER_TYPES:
            i = next(i for i, v in enumerate(flat) if type(v) not in _NUMBER_TYPES)
            r, c = divmod(i, n_cols)
            raise BadRequest(f"value at row {r}, column {c} is {describe(flat[i])}; expected a number")
        try:
            values = np.array(flat, dtype=np.float64)
        except OverflowError:  # a JSON integer beyond the float64 range
            raise BadRequest(
                "a value is far outside the float32 range; expected a finite float32 number"
            ) from None
    return checked_rows(values.reshape(n_rows, n_cols), integral, bounds, limit, nan_columns)


def checked_rows(
    values: np.ndarray,
    integral: bool = False,
    bounds: tuple[float, float] | None = None,
    limit: float = FLOAT32_MAX,
    nan_columns: np.ndarray | None = None,
) -> np.ndarray:
    """Float64 rows (N, F) of numbers -> finite float32 within ``limit``, checked as :func:`numbers_to_rows`
    does."""
    checked = values  # missing cells (NaN where nan_columns allows) are no values for the datatype checks
    if nan_columns is not None and (integral or bounds is not None):
        checked = np.nan_to_num(values, nan=0.0)
    if integral:
        whole = np.floor(checked) == checked
        if not whole.all():
            r, c = (int(i) for i in np.argwhere(~whole)[0])
            raise BadRequest(
                f"value at row {r}, column {c} is not an integer, but an INT datatype was declared"
            )
    if bounds is not None:
        check_bounds(checked, bounds)
    return to_float32_rows(values, limit, nan_columns)


def check_bounds(values: np.ndarray, bounds: tuple[float, float]) -> None:
    """Every value of the rows (N, F) within the declared datatype's ``bounds``; :class:`BadRequest` naming the
    first one outside."""
    low, high = bounds
    if not (values.min(initial=low) >= low and values.max(initial=high) <= high):
        ok = (values >= low) & (values <= high)
        r, c = (int(i) for i in np.argwhere(~ok)[0])
        raise BadRequest(
            f"value at row {r}, column {c} is {float(values[r, c]):g}, outside the declared datatype's "
            f"range [{low:g}, {high:g}]"
        )


def nested_rows(data: list[Any], n_cols: int) -> list[Any]:
    """Rows given as a list of lists -> their flat concatenation; each row must have ``n_cols`` entries."""
    for i, row in enumerate(data):
        if not isinstance(row, list):
            raise BadRequest(f"row {i} is {describe(row)}; expected a list of {n_cols} numbers")
        if len(row) != n_cols:
            raise width_error(n_cols, len(row), i)
    return list(chain.from_iterable(data))


def check_widths(widths: Sequence[int], n_cols: int) -> None:
    """Every row ``n_cols`` wide (the widths of rows already known to be lists of numbers)."""
    for i, width in enumerate(widths):
        if width != n_cols:
            raise width_error(n_cols, width, i)


def width_error(n_cols: int, width: int, row: int) -> BadRequest:
    """A row of ``width`` values where the model takes ``n_cols`` (V1 lists, V2 nested rows)."""
    return BadRequest(f"expected {n_cols} features per row, got {width} (row {row})")


def not_named_error(instance: Any, row: int) -> BadRequest:
    """A V1 row that is not an object when row 0 was one."""
    return BadRequest(f"row {row} is {describe(instance)}; expected an object of named features like row 0")


def unknown_features_error(unknown: Sequence[str], row: int) -> BadRequest:
    """A V1 object with keys that name no feature: the first (cut to 64 characters) and how many more."""
    more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
    return BadRequest(f"unknown feature {unknown[0][:64]!r}{more} (row {row})")


def to_float32_rows(
    values: np.ndarray, limit: float = FLOAT32_MAX, nan_columns: np.ndarray | None = None
) -> np.ndarray:
    """Real-valued rows (N, F) of any numeric dtype -> float32; :class:`BadRequest` names the first bad cell.

    NaN, infinities and finite values beyond the float32 range are refused rather than silently turned into
    ``inf`` by the cast, and so are values beyond the model's input ``limit`` (``ModelRuntime.input_limit``:
    past it the model's outputs may overflow). NaN only where ``nan_columns`` (bool ``(F,)``: the imputed
    features) allows it, as a missing cell the graph imputes.
    """
    if values.dtype.kind == "f" or (values.dtype.kind in "iu" and np.iinfo(values.dtype).max > limit):
        # One reduction on the common path (NaN propagates through max); the masks only to name the cell.
        # (An integer dtype is checked only under a limit below its range, a model's choice: float64 there,
        # where abs(int64 min) would overflow.)
        wide = values if values.dtype.kind == "f" else values.astype(np.float64)
        largest = float(np.abs(wide).max(initial=0.0))
        if not largest <= limit:  # also true for NaN and both infinities
            # float64: an FP16 array cannot hold the limit; False for NaN
            ok = np.abs(wide.astype(np.float64)) <= limit
            if nan_columns is not None:
                ok |= np.isnan(wide) & nan_columns
                if ok.all():
                    return values.astype(np.float32, copy=False)
            r, c = (int(i) for i in np.argwhere(~ok)[0])
            v = float(values[r, c])
            if not abs(v) <= FLOAT32_MAX:  # NaN, infinite, or beyond float32
                what = f"{v:g}, outside the float32 range" if math.isfinite(v) else "infinite"
                what = "NaN" if math.isnan(v) else what
                raise BadRequest(f"value at row {r}, column {c} is {what}; expected a finite float32 number")
            raise BadRequest(
                f"value at row {r}, column {c} is {v:g}, outside the model's input range [{-limit:g}, {limit:g}] "
                "(beyond it its outputs may overflow)"
            )
    elif values.dtype.kind not in "iu":
        raise BadRequest(f"expected numbers, got {values.dtype}")
    # Every int64/uint64 fits in the float32 range (|x| < 2**64 < 3.4e38).
    return values.astype(np.float32, copy=False)
