"""Models with categorical, boolean or imputed features: what clients send, as the graph's two inputs.

The contract (``bnserve.inputs``, :class:`contract.InputSpec`) describes every feature. The graph takes the
numeric ones in ``input`` (float32 ``[N, n_numeric]``, NaN for a missing cell of an imputed feature) and the
categorical and boolean ones in ``categorical`` (strings ``[N, n_categorical]``, ``""`` for a missing cell),
each in feature order. A :class:`Tabular` is built once per such model; models whose features are all
numeric and never imputed have none and keep the plain float path (:mod:`service.decoding`) untouched.

What each protocol accepts (the README's "Categorical features" says the same to users):

- V1 rows are objects keyed by feature name, or lists in ``feature_names`` order: a number for a numeric
  feature, a string for a categorical one, ``true``/``false`` (or the strings ``"true"``/``"false"``) for a
  boolean one. ``null``, a missing key or ``""`` is a missing cell: imputed when the feature has an imputed
  value, else ``400`` naming the feature and the row.
- V2 (REST and gRPC) takes two tensors by name, ``input`` (FP32, or any numeric datatype) and ``categorical``
  (``BYTES``: JSON strings; binary and gRPC raw contents in Triton's layout, per element a 4-byte
  little-endian length then its UTF-8 bytes; gRPC typed ``bytes_contents``). A missing number is NaN in binary
  data and ``null`` in JSON, a missing category ``""``: both only for imputed features.
- A category the contract does not list is not an error: the graph maps it to its "unknown" bucket (the
  training frequencies) and the service counts it (:class:`CellCounter`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import contract
from service.decoding import (
    FLOAT32_MAX,
    describe,
    not_named_error,
    to_float32_rows,
    unknown_features_error,
    width_error,
)
from service.errors import BadRequest

#: JSON true/false of a boolean feature, as the graph's ``categorical`` input spells them.
_BOOLEAN_TEXT = {True: contract.BOOLEAN_CATEGORIES[1], False: contract.BOOLEAN_CATEGORIES[0]}


@dataclass
class Tabular:
    """A model's features as the service reads them: kinds, which may be missing, the known categories."""

    specs: list[contract.InputSpec]
    numeric: list[contract.InputSpec] = field(init=False)
    categorical: list[contract.InputSpec] = field(init=False)
    #: Per numeric column (bool ``(n_numeric,)``): imputed, so NaN is a missing cell rather than an error.
    nan_columns: np.ndarray = field(init=False)
    #: Per categorical column (bool ``(n_categorical,)``): imputed, so ``""`` is a missing cell.
    empty_columns: np.ndarray = field(init=False)
    #: Per categorical column, the categories the graph knows (``""``, a missing cell, is counted apart).
    known: list[frozenset[str]] = field(init=False)
    #: Per numeric column, the value a missing cell gets (NaN where none: such a cell never gets this far).
    fill: np.ndarray = field(init=False)
    #: Where the numeric and the categorical features are among all of them (contract order).
    numeric_index: list[int] = field(init=False)
    categorical_index: list[int] = field(init=False)
    #: Every feature's name, in contract order, and the same as a set (computed once, not per request).
    names: list[str] = field(init=False)
    name_set: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.names = [s.name for s in self.specs]
        self.name_set = frozenset(self.names)
        self.numeric = [s for s in self.specs if s.is_numeric]
        self.categorical = [s for s in self.specs if not s.is_numeric]
        self.nan_columns = np.array([s.impute is not None for s in self.numeric], dtype=bool)
        self.empty_columns = np.array([s.impute is not None for s in self.categorical], dtype=bool)
        self.known = [frozenset(s.categories) for s in self.categorical]
        self.numeric_index = [j for j, s in enumerate(self.specs) if s.is_numeric]
        self.categorical_index = [j for j, s in enumerate(self.specs) if not s.is_numeric]
        self.fill = np.array(
            [math.nan if s.impute is None else float(s.impute) for s in self.numeric], dtype=np.float64
        )

    @classmethod
    def of(cls, mc: contract.ModelContract) -> Tabular | None:
        """The model's :class:`Tabular`, or None when every feature is numeric and none is imputed."""
        if any(not s.is_numeric or s.impute is not None for s in mc.inputs):
            return cls(list(mc.inputs))
        return None

    @property
    def has_categorical(self) -> bool:
        return bool(self.categorical)

    def imputed_numbers(self, x: np.ndarray) -> np.ndarray:
        """Rows ``x`` (N, n_numeric) with each NaN replaced by its feature's imputed value, as the graph does
        (the training ``input_stats`` describe the numbers after imputation)."""
        missing = np.isnan(x)
        return np.where(missing, self.fill, x).astype(x.dtype, copy=False) if missing.any() else x

    # ---- checks shared by every protocol ------------------------------------------------------------------

    def check_numbers(self, x: np.ndarray, limit: float = FLOAT32_MAX) -> np.ndarray:
        """Numeric rows of any real dtype -> float32 within the model's input ``limit``; NaN only in imputed
        columns (:class:`BadRequest`)."""
        try:
            return to_float32_rows(x, limit, self.nan_columns)
        except BadRequest as exc:
            raise BadRequest(self.name_column(str(exc), self.numeric)) from None

    def check_strings(self, s: np.ndarray) -> np.ndarray:
        """Categorical rows (N, n_categorical) of str: ``""`` (missing) only in imputed columns."""
        for j in np.flatnonzero(~self.empty_columns):
            empty = s[:, j] == ""
            if empty.any():
                r = int(np.argmax(empty))
                raise BadRequest(self._missing(self.categorical[j], r))
        return s

    @staticmethod
    def _missing(spec: contract.InputSpec, row: int) -> str:
        return (
            f"feature {spec.name!r} is missing (row {row}) and the model has no imputed value for it "
            "(it had no missing cells in training)"
        )

    @staticmethod
    def name_column(message: str, specs: Sequence[contract.InputSpec]) -> str:
        """``... column 3 ...`` -> ``... column 3 (feature 'x') ...`` when the message names a column of the
        numeric rows ``specs``."""
        head, sep, rest = message.partition(", column ")
        digits = rest.split(" ", 1)[0]
        if sep and digits.isdigit() and int(digits) < len(specs):
            name = specs[int(digits)].name
            return f"{head}{sep}{digits} (feature {name!r}){rest[len(digits) :]}"
        return message

    # ---- V1 ---------------------------------------------------------------------------------------------

    def v1_rows(
        self, instances: list[Any], limit: float = FLOAT32_MAX
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """V1 instances (objects by feature name, or lists in feature order) -> ``input`` and ``categorical``;
        numbers within the model's input ``limit``."""
        names, wanted = self.names, self.name_set
        by_name = isinstance(instances[0], dict)
        n_num, n_cat = len(self.numeric), len(self.categorical)
        numbers: list[float] = []
        strings: list[str] = []
        for i, instance in enumerate(instances):
            if by_name:
                if not isinstance(instance, dict):
                    raise not_named_error(instance, i)
                if not instance.keys() <= wanted:
                    raise unknown_features_error([k for k in instance if k not in wanted], i)
                values = [instance.get(n) for n in names]  # a missing key is a missing cell
            else:
                if not isinstance(instance, list):
                    raise BadRequest(
                        f"row {i} is {describe(instance)}; expected a list of {len(names)} values in feature "
                        f"order {names[:8]} or an object of named features"
                    )
                if len(instance) != len(names):
                    raise width_error(len(names), len(instance), i)
                values = instance
            for spec, value in zip(self.specs, values):
                if spec.is_numeric:
                    numbers.append(self._v1_number(spec, value, i))
                else:
                    strings.append(self._v1_string(spec, value, i))
        n = len(instances)
        x = self.check_numbers(np.array(numbers, dtype=np.float64).reshape(n, n_num), limit)  # (N, n_numeric)
        if not n_cat:
            return x, None
        s = np.array(strings, dtype=object).reshape(n, n_cat)  # (N, n_categorical)
        return x, s

    def _v1_number(self, spec: contract.InputSpec, value: Any, row: int) -> float:
        if type(value) in (int, float):
            return float(value)  # the float32 range is checked on the whole array
        if value is None:
            if spec.impute is None:
                raise BadRequest(self._missing(spec, row))
            return math.nan
        raise BadRequest(f"feature {spec.name!r} is {describe(value)} (row {row}); expected a number")

    def _v1_string(self, spec: contract.InputSpec, value: Any, row: int) -> str:
        if spec.kind == contract.KIND_BOOLEAN:
            if isinstance(value, bool):
                return _BOOLEAN_TEXT[value]
            if value is None or value == "" or value in contract.BOOLEAN_CATEGORIES:
                return self._v1_present(spec, value or "", row)
            raise BadRequest(
                f"feature {spec.name!r} is {_shown(value)} (row {row}); expected true or false (a boolean)"
            )
        if isinstance(value, str):
            return self._v1_present(spec, value, row)
        if value is None:
            return self._v1_present(spec, "", row)
        examples = ", ".join(repr(c) for c in spec.categories[:3])
        raise BadRequest(
            f"feature {spec.name!r} is {_shown(value)} (row {row}); expected a string, one of its "
            f"categories ({examples}{', ...' if len(spec.categories) > 3 else ''})"
        )

    def _v1_present(self, spec: contract.InputSpec, text: str, row: int) -> str:
        if text == "" and spec.impute is None:
            raise BadRequest(self._missing(spec, row))
        return text

    # ---- V2 ---------------------------------------------------------------------------------------------

    def json_numbers(self, flat: list[Any], n_cols: int) -> list[Any]:
        """A V2 JSON ``input``'s flat values with each ``null`` made NaN: only in an imputed column."""
        if None not in flat:  # a C-level scan; the usual case
            return flat
        out = list(flat)
        for k, v in enumerate(flat):
            if v is None:
                r, c = divmod(k, n_cols)
                if not self.nan_columns[c]:
                    raise BadRequest(self._missing(self.numeric[c], r))
                out[k] = math.nan
        return out

    def json_strings(self, data: Any, n_rows: int) -> np.ndarray:
        """A V2 JSON ``categorical`` tensor's ``data`` (flat or nested strings) -> checked rows ``(N, K)``."""
        n_cols = len(self.categorical)
        if not isinstance(data, list):
            raise BadRequest(f"input 'categorical' needs 'data' (a list of strings), got {describe(data)}")
        if data and isinstance(data[0], list):
            if len(data) != n_rows:
                raise BadRequest(
                    f"input 'categorical' has {n_rows} rows in its shape but 'data' has {len(data)}"
                )
            for i, row in enumerate(data):
                if not isinstance(row, list) or len(row) != n_cols:
                    got = len(row) if isinstance(row, list) else describe(row)
                    raise BadRequest(
                        f"input 'categorical': expected {n_cols} strings per row, got {got} (row {i})"
                    )
            flat = [v for row in data for v in row]
        else:
            flat = data
        if len(flat) != n_rows * n_cols:
            raise BadRequest(
                f"input 'categorical' shape [{n_rows}, {n_cols}] needs {n_rows * n_cols} strings but 'data' "
                f"has {len(flat)}"
            )
        if set(map(type, flat)) - {str}:
            k = next(k for k, v in enumerate(flat) if type(v) is not str)
            r, c = divmod(k, n_cols)
            raise BadRequest(
                f"input 'categorical': value at row {r}, column {c} (feature {self.categorical[c].name!r}) is "
                f"{_shown(flat[k])}; expected a string (BYTES)"
            )
        return self.check_strings(np.array(flat, dtype=object).reshape(n_rows, n_cols))

    def byte_strings(self, raw: bytes | memoryview, n_rows: int, what: str) -> np.ndarray:
        """Triton's BYTES layout (per element: uint32 little-endian length, then its bytes) -> rows ``(N, K)``."""
        n_cols = len(self.categorical)
        count = n_rows * n_cols
        view = memoryview(raw)
        size = len(view)
        out: list[str] = []
        pos = 0
        unpack = _LENGTH.unpack_from
        for k in range(count):
            if pos + 4 > size:
                raise BadRequest(
                    f"{what}: the BYTES data ends at element {k} of {count} (each element is a 4-byte "
                    "little-endian length, then its bytes)"
                )
            (length,) = unpack(view, pos)
            pos += 4
            if pos + length > size:
                raise BadRequest(f"{what}: element {k} announces {length} bytes but only {size - pos} remain")
            out.append(self._utf8(view[pos : pos + length], k, what))
            pos += length
        if pos != size:
            raise BadRequest(f"{what}: {size - pos} bytes remain after the {count} elements of the shape")
        return self.check_strings(np.array(out, dtype=object).reshape(n_rows, n_cols))

    def bytes_contents(self, values: Sequence[bytes], n_rows: int, what: str) -> np.ndarray:
        """gRPC's typed ``bytes_contents`` (one ``bytes`` per element) -> rows ``(N, K)``."""
        n_cols = len(self.categorical)
        if len(values) != n_rows * n_cols:
            raise BadRequest(
                f"{what}: shape [{n_rows}, {n_cols}] needs {n_rows * n_cols} values but contents.bytes_contents "
                f"has {len(values)}"
            )
        out = [self._utf8(v, k, what) for k, v in enumerate(values)]
        return self.check_strings(np.array(out, dtype=object).reshape(n_rows, n_cols))

    def _utf8(self, data: bytes | memoryview, k: int, what: str) -> str:
        try:
            return str(data, "utf-8")
        except UnicodeDecodeError:
            r, c = divmod(k, len(self.categorical))
            raise BadRequest(
                f"{what}: value at row {r}, column {c} (feature {self.categorical[c].name!r}) is not UTF-8 text"
            ) from None

    def check_categorical_header(self, datatype: Any, shape: Any, n_rows: int) -> None:
        """The ``categorical`` tensor's datatype and shape, against the ``input`` tensor's ``n_rows``."""
        if datatype != "BYTES":
            shown = repr(datatype[:16]) if isinstance(datatype, str) else describe(datatype)
            raise BadRequest(f"input 'categorical' has datatype {shown}; expected BYTES (strings)")
        n_cols = len(self.categorical)
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise BadRequest("input 'categorical': 'shape' must be a list of non-negative integers")
        if shape != [n_rows, n_cols]:
            raise BadRequest(
                f"input 'categorical' must have shape [{n_rows}, {n_cols}] (the rows of 'input', one column "
                f"per categorical feature {[s.name for s in self.categorical][:8]}), got {shape[:8]}"
            )


_LENGTH = struct.Struct("<I")


def _shown(value: Any) -> str:
    """A client's value for an error message: a short string quoted, anything else described."""
    if isinstance(value, str):
        return repr(value[:32])
    return "a number" if type(value) in (int, float) else describe(value)
