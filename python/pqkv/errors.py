"""Errors raised by pqkv: one class per gRPC status code, all subclasses of `Error`.

Every failed call raises the subclass of the status the server (or the SDK) returned,
with the server's message:

    try:
        client.get_session("gone")
    except pqkv.NotFound as e:
        print(e.code, e.message)   # StatusCode.NOT_FOUND, "session gone not found"

A few also derive from the built-in exception a Python caller would expect:
`InvalidArgument` is a `ValueError`, `DeadlineExceeded` a `TimeoutError`.
"""

from __future__ import annotations

import enum
from typing import Dict, Type


class StatusCode(enum.IntEnum):
    """gRPC (and Abseil) status codes, with their canonical numbers."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class Error(Exception):
    """A pqkv call failed. `code` is the status code, `message` the server's words."""

    code: StatusCode = StatusCode.UNKNOWN

    def __init__(self, message: str, code: StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class Cancelled(Error):
    code = StatusCode.CANCELLED


class Unknown(Error):
    code = StatusCode.UNKNOWN


class InvalidArgument(Error, ValueError):
    """The request was malformed (wrong shape, k out of range, ...)."""

    code = StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(Error, TimeoutError):
    code = StatusCode.DEADLINE_EXCEEDED


class NotFound(Error):
    """No such session (never created, closed, or expired by TTL)."""

    code = StatusCode.NOT_FOUND


class AlreadyExists(Error):
    code = StatusCode.ALREADY_EXISTS


class PermissionDenied(Error):
    code = StatusCode.PERMISSION_DENIED


class ResourceExhausted(Error):
    """A budget was hit (server memory, response size): retry later or ask for less."""

    code = StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(Error):
    """The state must change first (e.g. UCX asked for but not open)."""

    code = StatusCode.FAILED_PRECONDITION


class Aborted(Error):
    code = StatusCode.ABORTED


class OutOfRange(Error):
    code = StatusCode.OUT_OF_RANGE


class Unimplemented(Error):
    code = StatusCode.UNIMPLEMENTED


class Internal(Error):
    code = StatusCode.INTERNAL


class Unavailable(Error):
    """The server cannot be reached or the stream broke: retry."""

    code = StatusCode.UNAVAILABLE


class DataLoss(Error):
    code = StatusCode.DATA_LOSS


class Unauthenticated(Error):
    """No token, or one the server does not know."""

    code = StatusCode.UNAUTHENTICATED


_BY_CODE: Dict[StatusCode, Type[Error]] = {
    cls.code: cls
    for cls in (Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
                PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
                Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated)
}


def error_from_status(code: int, message: str) -> Error:
    """The exception for a failed status (used by the native extension)."""
    try:
        status = StatusCode(code)
    except ValueError:
        return Unknown(f"{message} (status code {code})")
    return _BY_CODE.get(status, Unknown)(message, status)
