"""The API key: one parser of the ``Authorization`` header and one decision, for every guarded route.

Whichever way a request is served (the fast path or FastAPI's routing), it is authorized by
:meth:`ApiKey.allows` on its raw ASGI headers: exactly one ``Authorization`` header, scheme ``Bearer`` in any
case, the credentials compared in constant time. The key itself is printable ASCII without surrounding
whitespace (:mod:`service.settings` refuses anything else at start-up), so it compares as bytes.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from service.errors import Unauthorized

CHALLENGE = "missing or wrong API key: send 'Authorization: Bearer <key>'"


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The credentials of the one ``Authorization: Bearer <credentials>`` header; None when there is no such
    header, more than one, or another scheme."""
    found = None
    for name, value in headers:
        if name == b"authorization":  # ASGI servers lower-case header names
            if found is not None:  # two keys, two answers: refuse rather than pick one
                return None
            found = value
    if found is None:
        return None
    scheme, _, credentials = found.partition(b" ")
    return credentials.strip(b" \t") if scheme.lower() == b"bearer" else None


class ApiKey:
    """The configured key, or None when authentication is off."""

    def __init__(self, key: str | None) -> None:
        self._key = key.encode("ascii") if key is not None else None

    @property
    def required(self) -> bool:
        return self._key is not None

    def allows(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether a request with these raw headers may use a guarded route."""
        if self._key is None:
            return True
        offered = bearer_token(headers)
        return offered is not None and hmac.compare_digest(offered, self._key)

    def check(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """:class:`Unauthorized` unless :meth:`allows`."""
        if not self.allows(headers):
            raise Unauthorized(CHALLENGE)
