"""The one exception tree of bulkcred, rooted at :class:`BulkcredError`.

::

    BulkcredError
    ├── UsageError                 bad input or configuration; nothing was sent (exit 2)
    │   └── InputError             a bad row or field in a user's file (names file, line, column)
    ├── JournalError               the checkpoint journal cannot be used
    │   ├── JournalLocked          another process holds the journal
    │   ├── JournalMismatch        the journal was written by another command or selection
    │   └── JournalCorrupt         a record other than the last one is unreadable
    ├── SecretSinkError            the secrets file cannot be written or is unsafe
    ├── Interrupted                SIGINT/SIGTERM: the journal is flushed (exit 130)
    └── ZPAError                   anything that went wrong talking to the tenant
        ├── TransportError         no answer (reset, timeout); it may have arrived (exit 3)
        │   ├── ConnectError       refused, DNS, TLS, connect timeout: nothing was sent
        │   └── OutcomeUnknown     a non-idempotent request was sent but its answer was lost
        ├── WaitTooLong            the server asked for a pause longer than --max-wait (exit 3)
        └── APIError               the server answered with an error status
            ├── BadRequest         400 (other than a not-found)
            ├── AuthError          401 after a fresh token, or a refused sign-in (exit 3)
            ├── PermissionDenied   403 (exit 3)
            ├── NotFound           404, or 400 ``resource.not.found``
            ├── Conflict           409 (``api.concurrent.access.error`` and friends)
            ├── RateLimited        429 that retrying did not get past
            └── ServerError        5xx

Every :class:`ZPAError` carries the request context: method, the URL path (never a
query secret; ZPA puts none there), the HTTP status and the server's error ``id``,
``reason`` and ``params``. No exception message ever holds a secret.
"""

from __future__ import annotations

from typing import Any, Iterable

import orjson

__all__ = [
    "APIError",
    "AuthError",
    "BadRequest",
    "BulkcredError",
    "Conflict",
    "ConnectError",
    "InputError",
    "Interrupted",
    "JournalCorrupt",
    "JournalError",
    "JournalLocked",
    "JournalMismatch",
    "NotFound",
    "OutcomeUnknown",
    "PermissionDenied",
    "RateLimited",
    "SecretSinkError",
    "ServerError",
    "TransportError",
    "UsageError",
    "WaitTooLong",
    "ZPAError",
    "api_error_for",
    "parse_error_body",
]


class BulkcredError(Exception):
    """Root of every error bulkcred raises on purpose."""


class UsageError(BulkcredError):
    """Bad arguments, configuration or input: nothing was sent to the tenant."""


class InputError(UsageError):
    """A bad row or field in a user-supplied file."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.column = column
        where = []
        if file:
            where.append(file)
        if line is not None:
            where.append(f"line {line}")
        if column:
            where.append(f"column {column!r}")
        self.message = message
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class JournalError(BulkcredError):
    """The checkpoint journal cannot be used as asked."""


class JournalLocked(JournalError):
    """Another process is running this journal."""


class JournalMismatch(JournalError):
    """The journal belongs to a different job than the one asked for."""


class JournalCorrupt(JournalError):
    """A record before the last one is unreadable: the file was edited or damaged."""


class SecretSinkError(BulkcredError):
    """The secrets file cannot be created, locked, written or is unsafe."""


class Interrupted(BulkcredError):
    """The job was stopped by a signal; the journal is flushed and the job resumable."""


class ZPAError(BulkcredError):
    """Something went wrong while talking to the tenant."""

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
        error_id: str | None = None,
        reason: str | None = None,
        params: list[object] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.error_id = error_id
        self.reason = reason
        self.params = list(params or [])
        super().__init__(message)

    def __str__(self) -> str:
        base = super().__str__()
        ctx = []
        if self.method and self.path:
            ctx.append(f"{self.method} {self.path}")
        if self.status is not None:
            ctx.append(f"HTTP {self.status}")
        if self.error_id:
            ctx.append(f"id={self.error_id}")
        return f"{base} ({', '.join(ctx)})" if ctx else base


class TransportError(ZPAError):
    """The request did not get an HTTP answer (connection, TLS, DNS, timeout)."""

    #: whether the server may have received (and applied) the request
    maybe_sent: bool = True


class ConnectError(TransportError):
    """No connection could be made: not a byte of the request reached the server."""

    maybe_sent = False


class OutcomeUnknown(TransportError):
    """A non-idempotent request may or may not have been applied by the server."""


class WaitTooLong(ZPAError):
    """The server asked for a pause longer than the job accepts (``--max-wait``)."""

    def __init__(self, message: str, *, wait: float, **kw: object) -> None:
        self.wait = wait
        super().__init__(message, **kw)  # type: ignore[arg-type]


class APIError(ZPAError):
    """The server answered with an error status."""


class BadRequest(APIError):
    """400: ZPA refused the request as invalid."""


class AuthError(APIError):
    """401 even with a fresh token, or the sign-in itself was refused."""


class PermissionDenied(APIError):
    """403: the API key lacks the role, scope or SKU (or the tenant is read-only)."""


class NotFound(APIError):
    """404, or a 400 whose id is ``resource.not.found``."""


class Conflict(APIError):
    """409: a concurrent change; retried before it is raised."""


class RateLimited(APIError):
    """429 that retrying within the job's limits did not get past."""


class ServerError(APIError):
    """5xx that retrying did not get past."""


def api_error_for(
    status: int,
    error_id: str | None,
) -> type[APIError]:
    """The exception class for an HTTP error status and ZPA error id."""
    if error_id == "resource.not.found" or status == 404:
        return NotFound
    if status == 400:
        return BadRequest
    if status == 401:
        return AuthError
    if status == 403:
        return PermissionDenied
    if status == 409:
        return Conflict
    if status == 429:
        return RateLimited
    if status >= 500:
        return ServerError
    return APIError


def _first_text(d: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        v = d.get(key)
        if isinstance(v, (str, int)) and not isinstance(v, bool) and str(v).strip():
            return str(v).strip()
    return None


def parse_error_body(
    body: bytes, *, redact: Iterable[str] = ()
) -> tuple[str | None, str | None, list[object]]:
    """``(error_id, reason, params)`` from an error body, whatever its shape.

    ZPA sends ``{id, reason, params}``, the OneAPI gateway ``{title, detail}``, OAuth
    ``{error, error_description}``; a body that is not JSON becomes the reason (cut
    short). Every string in ``redact`` is masked, in case a server echoes a secret.
    """
    secrets = [s for s in redact if s]

    def clean(text: str) -> str:
        for s in secrets:
            text = text.replace(s, "********")
        return text

    try:
        data = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return None, (clean(text[:300]) or None), []
    if not isinstance(data, dict):
        return None, None, []
    error_id = _first_text(data, ("id", "code", "error", "title"))
    reason = _first_text(data, ("reason", "message", "error_description", "detail"))
    raw = data.get("params")
    params: list[object] = list(raw) if isinstance(raw, list) else []
    params = [clean(p) if isinstance(p, str) else p for p in params]
    return (
        clean(error_id) if error_id else None,
        clean(reason) if reason else None,
        params,
    )
