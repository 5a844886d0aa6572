"""A model's ``config.pbtxt`` (Triton's model configuration) and the version policy it states.

Only ``version_policy`` changes what bnserve serves; the rest of the file (inputs, outputs, platform) is
Triton's business, and the contract inside ``model.onnx`` stays the one source of truth for the service. The
file is protobuf's text format; :func:`parse_text_proto` reads its grammar (fields with or without a colon,
nested ``{ }`` or ``< >`` messages, ``[ ]`` lists, repeated fields, quoted strings, ``#`` comments, optional
``,`` / ``;`` separators) into plain dicts, without needing Triton's ``model_config.proto``.

The policies mean what they mean to Triton:

* ``latest { num_versions: N }``: the N highest versions (the default, with N = 1);
* ``all { }``: every version;
* ``specific { versions: [1, 3] }``: exactly those.

bnserve applies the policy to the versions that *can be served* (:meth:`VersionPolicy.select`): a version
that failed to load is left out before the policy chooses, so under ``latest 1`` a broken version 3 leaves
version 2 serving instead of nothing (Triton would leave the model without a servable version).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

CONFIG_FILE = "config.pbtxt"

#: A parsed text-format message: field name -> every value it was given, in order (fields may repeat).
Message = dict[str, list["Value"]]
Value = Union[str, int, float, bool, "Message"]

_TOKEN = re.compile(
    r"""
    (?P<space>[\s,;]+|\#[^\n]*)                         # separators and comments: skipped
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[fF]?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}\[\]<>:])
    """,
    re.VERBOSE,
)
_CLOSE = {"{": "}", "<": ">"}


class ConfigError(ValueError):
    """A ``config.pbtxt`` that cannot be read or states an impossible policy; the message says where."""


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """``(kind, text, line)`` of every token; :class:`ConfigError` at the first character that is none."""
    out = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            line = text.count("\n", 0, pos) + 1
            raise ConfigError(f"line {line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind != "space":
            out.append((kind, m.group(), text.count("\n", 0, pos) + 1))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent over the tokens: message := field*, field := name [':'] value."""

    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def _peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def _next(self, what: str) -> tuple[str, str, int]:
        tok = self._peek()
        if tok is None:
            raise ConfigError(f"unexpected end of file, expected {what}")
        self.i += 1
        return tok

    def message(self, close: str | None) -> Message:
        fields: Message = {}
        while True:
            tok = self._peek()
            if tok is None:
                if close is not None:
                    raise ConfigError(f"unexpected end of file, expected {close!r}")
                return fields
            kind, text, line = tok
            if close is not None and text == close and kind == "punct":
                self.i += 1
                return fields
            if kind != "ident":
                raise ConfigError(f"line {line}: expected a field name, got {text!r}")
            self.i += 1
            colon = self._peek()
            has_colon = colon is not None and colon[1] == ":"
            if has_colon:
                self.i += 1
            fields.setdefault(text, []).extend(self._values(text, has_colon))

    def _values(self, field: str, has_colon: bool) -> list[Value]:
        kind, text, line = self._next(f"a value for {field!r}")
        if text in _CLOSE and kind == "punct":
            return [self.message(_CLOSE[text])]
        if text == "[" and kind == "punct":
            values: list[Value] = []
            while True:
                tok = self._peek()
                if tok is not None and tok[1] == "]":
                    self.i += 1
                    return values
                values.extend(self._values(field, True))
        if not has_colon:
            raise ConfigError(f"line {line}: expected ':' or '{{' after {field!r}, got {text!r}")
        return [_scalar(kind, text, line)]


def _scalar(kind: str, text: str, line: int) -> Value:
    if kind == "string":
        return bytes(text[1:-1], "utf-8").decode("unicode_escape")
    if kind == "number":
        body = text.rstrip("fF") if not text.lower().startswith(("0x", "-0x", "+0x")) else text
        try:
            return int(body, 0)
        except ValueError:
            return float(body)
    if kind == "ident":
        return {"true": True, "True": True, "false": False, "False": False}.get(text, text)
    raise ConfigError(f"line {line}: expected a value, got {text!r}")


def parse_text_proto(text: str) -> Message:
    """A protobuf text-format document as ``{field: [values...]}``, messages nested the same way."""
    return _Parser(text).message(None)


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve: ``kind`` is ``latest``, ``all`` or ``specific``."""

    kind: str = "latest"
    num_versions: int = 1  # latest only
    versions: tuple[int, ...] = ()  # specific only

    def select(self, available: Iterable[int]) -> set[int]:
        """The versions to serve among ``available`` (the ones that exist and can be loaded)."""
        have = sorted(set(available))
        if self.kind == "all":
            return set(have)
        if self.kind == "specific":
            return set(have) & set(self.versions)
        return set(have[-self.num_versions :])

    def describe(self) -> str:
        """The policy in Triton's own syntax, for logs and errors."""
        if self.kind == "all":
            return "all { }"
        if self.kind == "specific":
            return f"specific {{ versions: {list(self.versions)} }}"
        return f"latest {{ num_versions: {self.num_versions} }}"


DEFAULT_POLICY = VersionPolicy()


def version_policy(config: Message) -> VersionPolicy:
    """The ``version_policy`` of a parsed config (``latest 1`` when absent); :class:`ConfigError` if invalid."""
    policies = config.get("version_policy", [])
    if not policies:
        return DEFAULT_POLICY
    if len(policies) > 1 or not isinstance(policies[-1], dict):
        raise ConfigError("version_policy must be one message")
    policy = policies[-1]
    if len(policy) != 1:
        raise ConfigError(
            f"version_policy must hold exactly one of latest, all, specific; got {sorted(policy)}"
        )
    ((kind, values),) = policy.items()
    body = values[-1]
    if not isinstance(body, dict) or len(values) != 1:
        raise ConfigError(f"version_policy.{kind} must be one message")
    if kind == "all":
        return VersionPolicy("all")
    if kind == "latest":
        n = body.get("num_versions", [1])
        if len(n) != 1 or not _positive_int(n[0]):
            raise ConfigError(f"version_policy.latest.num_versions must be one integer >= 1, got {n}")
        return VersionPolicy("latest", num_versions=int(n[0]))  # type: ignore[arg-type]
    if kind == "specific":
        versions = body.get("versions", [])
        if not versions or not all(_positive_int(v) for v in versions):
            raise ConfigError(f"version_policy.specific.versions must list integers >= 1, got {versions}")
        return VersionPolicy("specific", versions=tuple(sorted({int(v) for v in versions})))  # type: ignore[arg-type]
    raise ConfigError(f"unknown version_policy {kind!r}; expected latest, all or specific")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def read_version_policy(model_dir: Path) -> VersionPolicy:
    """The policy of ``model_dir/config.pbtxt`` (``latest 1`` without one); :class:`ConfigError` names the file."""
    path = model_dir / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return DEFAULT_POLICY
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    try:
        return version_policy(parse_text_proto(text))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
