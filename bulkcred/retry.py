"""What is retried and how long to wait: :func:`classify` states it in one place.

A server's ``retry-after`` always wins over the backoff formula; 429/503 pauses are not
bounded by a count, only by ``max_wait`` (a single wait) and an optional deadline.
"""

from __future__ import annotations

import enum
import random
import re
import time
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Awaitable, Callable, Final

import anyio
from anyio.lowlevel import checkpoint

from .errors import TransportError, UsageError, WaitTooLong

__all__ = [
    "CONCURRENCY_ERROR_IDS",
    "IDEMPOTENT_METHODS",
    "MAX_RETRY_AFTER",
    "Action",
    "Decision",
    "RetryPolicy",
    "classify",
    "classify_sign_in",
    "parse_retry_after",
]

#: methods whose repetition cannot change the outcome (ZPA's PUT replaces the object)
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

#: error ids that mean "another change was in progress; nothing was applied"
#: (409 documented; the Go SDK also retries them on a 400)
CONCURRENCY_ERROR_IDS: Final = frozenset({"api.concurrent.access.error", "db.simultaneous.request"})

#: a retry-after beyond a day is treated as a day; ``max_wait`` decides what to do with it
MAX_RETRY_AFTER: Final = 86_400.0

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"{_NUM}|(?:{_NUM}\s*(?:ms|h|m|s))+", re.IGNORECASE)
_PART = re.compile(rf"({_NUM})\s*(ms|h|m|s)?", re.IGNORECASE)
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float | None:
    if not _DURATION.fullmatch(text):
        return None
    return sum(float(n) * _UNIT[(u or "s").lower()] for n, u in _PART.findall(text))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``retry-after`` value, or ``None`` if it says nothing usable.

    ZPA writes ``13s``; also accepted: ``13S``, ``13``, ``1.5s``, ``0s``, ``500ms``, Go
    durations like ``1m30s``, and an HTTP date (``now`` is the epoch time to count from).
    Negative values give 0; values above :data:`MAX_RETRY_AFTER` give that.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.startswith("-"):
        return 0.0 if _duration(text[1:].strip()) is not None else None
    seconds = _duration(text)
    if seconds is None:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # an HTTP date is GMT even when it fails to say so
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


class Action(str, enum.Enum):
    RETRY = "retry"                            # back off (at least retry-after), re-send
    PAUSE_AND_RETRY = "pause_and_retry"        # pause the whole class, re-send after it
    REFRESH_AND_RETRY = "refresh_and_retry"    # new token, re-send
    FAIL = "fail"                              # raise the error
    UNKNOWN_OUTCOME = "unknown_outcome"        # raise OutcomeUnknown: the caller reconciles

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    #: the server's wait in seconds (retry-after), None when it gave none
    wait: float | None = None
    #: why, in a few words, for logs and error messages
    why: str = ""


def classify(
    method: str,
    status: int | None,
    error_id: str | None,
    exc: BaseException | None,
    *,
    retry_after: float | None = None,
    can_refresh: bool = True,
) -> Decision:
    """What to do with a failed attempt: an error ``status`` or a transport ``exc``.

    ``retry_after`` is the parsed header; ``can_refresh`` is False once this request has
    already had a fresh token (or the token is static).
    """
    m = method.upper()
    idempotent = m in IDEMPOTENT_METHODS
    if exc is not None:
        if isinstance(exc, TransportError) and not exc.maybe_sent:
            return Decision(Action.RETRY, why="not sent (could not connect)")
        if not isinstance(exc, TransportError):
            return Decision(Action.FAIL, why=f"{type(exc).__name__}")
        if idempotent:
            return Decision(Action.RETRY, why=f"answer lost; {m} is idempotent")
        return Decision(Action.UNKNOWN_OUTCOME, why="sent, answer lost")
    if status is None:
        raise ValueError("classify needs a status or an exception")
    if status == 429:
        # a throttled request was not applied, whatever its method
        return Decision(Action.PAUSE_AND_RETRY, retry_after, "throttled (429)")
    if status == 503 and retry_after is not None:
        return Decision(Action.PAUSE_AND_RETRY, retry_after, "unavailable (503, retry-after)")
    if status == 401:
        if can_refresh:
            return Decision(Action.REFRESH_AND_RETRY, why="token refused (401)")
        return Decision(Action.FAIL, why="401 with a fresh token")
    if status in (400, 409) and error_id in CONCURRENCY_ERROR_IDS:
        return Decision(Action.RETRY, retry_after, f"concurrent change ({error_id})")
    if status == 408 or (status >= 500 and status != 501):
        if idempotent:
            return Decision(Action.RETRY, retry_after, f"server error ({status})")
        return Decision(Action.UNKNOWN_OUTCOME, retry_after, f"server error ({status})")
    return Decision(Action.FAIL, why=f"HTTP {status}")


def classify_sign_in(status: int | None, exc: BaseException | None, *,
                     retry_after: float | None = None) -> Decision:
    """What to do with a failed sign-in: it changes nothing on the server, so any
    transport error, 429 or 5xx is retried; a 4xx is a refusal."""
    if exc is not None:
        if isinstance(exc, TransportError):
            if not exc.maybe_sent:
                return Decision(Action.RETRY, why=str(exc))
            return Decision(Action.RETRY, why=f"sign-in answer lost: {exc}")
        return Decision(Action.FAIL, why=type(exc).__name__)
    if status is None:
        raise ValueError("classify_sign_in needs a status or an exception")
    if status in (408, 429) or (status >= 500 and status != 501):
        return Decision(Action.RETRY, retry_after, f"sign-in got HTTP {status}")
    return Decision(Action.FAIL, why=f"sign-in refused (HTTP {status})")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How long and how often to retry.

    ``max_attempts`` bounds backoff retries (5xx, lost answers, 409 concurrency); pauses
    ordered by a 429/503 are not counted, but one longer than ``max_wait`` seconds (None:
    no limit) raises :class:`WaitTooLong`. ``deadline`` bounds the seconds one request may
    spend retrying. ``waits=False`` (or a ``sleep`` of your own) is the test mode: backoff
    waits are skipped; the limiter's clock still governs server-ordered pauses.
    """

    max_attempts: int = 8
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    #: the fraction of each backoff wait that is random ("equal jitter" at 0.5)
    jitter: float = 0.5
    max_wait: float | None = 900.0
    deadline: float | None = None
    waits: bool = True
    sleep: Callable[[float], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise UsageError("max_attempts must be at least 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise UsageError("jitter is a fraction between 0 and 1")
        if self.max_wait is not None and self.max_wait < 0:
            raise UsageError("max_wait cannot be negative")

    def backoff(self, attempt: int, *, server_wait: float | None = None) -> float:
        """The wait before retry number ``attempt`` (1-based); never below ``server_wait``."""
        base = min(self.backoff_max, self.backoff_base * 2.0 ** max(0, attempt - 1))
        wait = base * (1.0 - self.jitter * random.random())
        return max(wait, server_wait or 0.0)

    def check_wait(self, seconds: float, **context: object) -> None:
        """Raise :class:`WaitTooLong` when a server-requested wait exceeds ``max_wait``."""
        if self.max_wait is not None and seconds > self.max_wait:
            raise WaitTooLong(
                f"the server asked to wait {seconds:.0f} s, longer than the {self.max_wait:g} s"
                " this job accepts (max_wait); stopping so the job can be resumed",
                wait=seconds,
                **context,
            )

    async def wait(self, seconds: float) -> None:
        if not self.waits:
            await checkpoint()
        elif self.sleep is not None:
            await self.sleep(seconds)
        else:
            await anyio.sleep(seconds)
