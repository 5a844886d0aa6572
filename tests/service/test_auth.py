"""The one Authorization parser and decision (service.auth), and that every guarded route, fast path or not,
answers the same to the same headers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import ApiKey, bearer_token
from tests.service.conftest import Repo, settings_for

KEY = "s3cret"


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        ([], None),
        ([(b"authorization", b"Bearer abc")], b"abc"),
        ([(b"authorization", b"bearer abc")], b"abc"),  # the scheme is case-insensitive (RFC 9110)
        ([(b"authorization", b"Bearer  abc ")], b"abc"),
        ([(b"authorization", b"Basic abc")], None),
        ([(b"authorization", b"Bearer")], b""),
        ([(b"authorization", b"Bearer abc"), (b"authorization", b"Bearer abc")], None),  # repeated: refused
        ([(b"x-other", b"1"), (b"authorization", b"Bearer abc")], b"abc"),
    ],
)
def test_bearer_token(headers: list[tuple[bytes, bytes]], token: bytes | None) -> None:
    assert bearer_token(headers) == token


def test_the_decision() -> None:
    assert ApiKey(None).allows([]) and not ApiKey(None).required
    key = ApiKey(KEY)
    assert key.required
    assert key.allows([(b"authorization", f"Bearer {KEY}".encode())])
    for value in (
        b"",
        b"Bearer",
        f"Bearer {KEY}x".encode(),
        KEY.encode(),
        f"Bearer {KEY}\xe9".encode("latin-1"),
    ):
        assert not key.allows([(b"authorization", value)])


@pytest.fixture(scope="module")
def keyed(repo: Repo) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(repo.root, api_key=KEY))) as c:
        yield c


GUARDED = [
    ("GET", "/v2", None),
    ("GET", "/v2/models/digits", None),
    ("GET", "/v1/models/digits", None),
    ("GET", "/v2/models/digits/drift", None),
    ("POST", "/v2/models/digits/infer", b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", '
     b'"data": ' + str([0.5] * 64).encode() + b"}]}"),
    ("POST", "/v1/models/digits:predict", b'{"instances": [' + str([0.5] * 64).encode() + b"]}"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body"), GUARDED)
@pytest.mark.parametrize(
    ("values", "status"),
    [
        ([f"Bearer {KEY}"], 200),
        ([f"bearer {KEY}"], 200),
        (["Bearer wrong", f"Bearer {KEY}"], 401),
        ([f"Bearer {KEY}", "Bearer wrong"], 401),
        ([f"Bearer {KEY}", f"Bearer {KEY}"], 401),
    ],
    ids=["key", "lower-case scheme", "wrong then key", "key then wrong", "key twice"],
)
def test_every_guarded_route_decides_alike(
    keyed: TestClient, method: str, path: str, body: bytes | None, values: list[str], status: int
) -> None:
    headers = [("Authorization", v) for v in values]
    response = keyed.request(method, path, content=body, headers=headers)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
