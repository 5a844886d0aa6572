"""Typed errors that carry their HTTP status; the app turns each into ``{"error": "..."}``.

Nothing here knows about FastAPI: the runtime and the protocol codecs raise these, ``app.py`` maps them.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: an error whose message is safe to send to the client."""

    status_code: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    """The request is malformed or does not fit the model (400)."""

    status_code = 400


class Unauthorized(ServiceError):
    """Authentication is on and the request lacks a valid bearer key (401)."""

    status_code = 401


class Forbidden(ServiceError):
    """The operation is switched off in this configuration, such as the repository API in mode ``none`` (403)."""

    status_code = 403


class NotFound(ServiceError):
    """Unknown model or version (404)."""

    status_code = 404


class Conflict(ServiceError):
    """The request conflicts with the server's state, e.g. an unload of a model its repository folder serves (409)."""

    status_code = 409


class PayloadTooLarge(ServiceError):
    """Too many bytes or rows in one request (413)."""

    status_code = 413


class NotReady(ServiceError):
    """The service is starting or shutting down (503)."""

    status_code = 503


class ModelLoadError(Exception):
    """A model of the repository cannot be served; the message names the file and the problem."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
