"""The bounded-concurrency executor every job runs its items on.

It owns the outcome record of each item, the in-flight window (sized from the rate and
the measured latency, capped by ``--concurrency``) and the line between an item that
failed (recorded, the job goes on) and a failure that stops the job (resumable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Protocol

import anyio

from .config import Rate
from .errors import (
    AuthError,
    BulkcredError,
    JournalError,
    OutcomeUnknown,
    PermissionDenied,
    SecretSinkError,
    TransportError,
    WaitTooLong,
    ZPAError,
)
from .journal import Journal

__all__ = [
    "DEFAULT_CONCURRENCY_CAP",
    "REJECT_ERROR_ID",
    "ItemResult",
    "JobStopped",
    "Progress",
    "RunSummary",
    "Window",
    "run_items",
]

#: The most requests a job keeps in flight unless ``--concurrency`` says otherwise.
DEFAULT_CONCURRENCY_CAP = 64
#: The error id of an item that was never sent because its input is invalid (an import's
#: bad row): a failed item in the journal, and a rejected one in every count shown.
REJECT_ERROR_ID = "bulkcred.invalid.row"


@dataclass(frozen=True, slots=True)
class ItemResult:
    """What became of one item; the runner writes it to the journal as the outcome."""

    status: str  # "done" | "failed" | "skipped"
    http: int | None = None
    error_id: str | None = None
    reason: str | None = None
    data: dict[str, Any] | None = None


class JobStopped(BulkcredError):
    """A failure that concerns the whole job (auth, permission, network, a long pause).

    The job stops; every item not finished stays pending or uncertain in the journal,
    and running the same command again resumes it.
    """

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(str(cause))


class Progress(Protocol):
    def advance(self, key: str, result: ItemResult) -> None: ...


@dataclass(slots=True)
class RunSummary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[tuple[str, ItemResult]] = field(default_factory=list)
    #: items whose request may or may not have been applied (reconciled on resume)
    uncertain: list[str] = field(default_factory=list)


def is_fatal(exc: BaseException) -> bool:
    """Failures that no other item would escape either: stop the job, don't fail the item."""
    if isinstance(exc, OutcomeUnknown):
        return False  # the job reconciles it item by item
    return isinstance(exc, (AuthError, PermissionDenied, TransportError, WaitTooLong))


def result_for_error(exc: ZPAError) -> ItemResult:
    reason = exc.reason or str(exc)
    return ItemResult("failed", http=exc.status, error_id=exc.error_id, reason=reason)


class Window:
    """A semaphore whose size follows Little's law: rate x latency, plus slack."""

    def __init__(self, cap: int, rate: Rate, latency: Callable[[], float]) -> None:
        self._cap = max(1, cap)
        self._rate = rate
        self._latency = latency
        self._active = 0
        self._cond = anyio.Condition()

    @property
    def size(self) -> int:
        # items in flight needed to keep the limit busy, doubled for jitter, plus one
        # waiting at the limiter so no slot is ever missed
        want = math.ceil(self._rate.per_second * max(self._latency(), 0.0) * 2.0) + 2
        return max(1, min(self._cap, want))

    async def __aenter__(self) -> None:
        async with self._cond:
            while self._active >= self.size:
                await self._cond.wait()
            self._active += 1

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            async with self._cond:
                self._active -= 1
                self._cond.notify_all()


async def run_items(
    keys: Iterable[str],
    work: Callable[[str], Awaitable[ItemResult]],
    *,
    journal: Journal,
    window: Window,
    progress: Progress | None = None,
) -> RunSummary:
    """Run ``work(key)`` for every key within the window; record each outcome.

    ``work`` writes the item's intent itself, just before its request is sent. An
    :class:`~bulkcred.errors.APIError` it raises fails that item (with the server's
    status, id and reason) and the job goes on; a fatal error stops the job with
    :class:`JobStopped`; cancellation leaves unfinished items uncertain, which resume
    reconciles.
    """
    summary = RunSummary()
    pending = list(keys)
    stop: list[BaseException] = []

    async def record(key: str, result: ItemResult) -> None:
        with anyio.CancelScope(shield=True):
            await journal.outcome(
                key,
                result.status,
                http=result.http,
                error_id=result.error_id,
                reason=result.reason,
                data=result.data,
            )
        if result.status == "done":
            summary.done += 1
        elif result.status == "skipped":
            summary.skipped += 1
        else:
            summary.failed += 1
            summary.failures.append((key, result))
        if progress is not None:
            progress.advance(key, result)

    async def one(key: str, tg: anyio.abc.TaskGroup) -> None:
        try:
            try:
                result = await work(key)
            except OutcomeUnknown:
                # no outcome is written: the item stays uncertain and resume reconciles it
                summary.uncertain.append(key)
                return
            except ZPAError as exc:
                if is_fatal(exc):
                    raise
                result = result_for_error(exc)
            await record(key, result)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # noqa: BLE001 - the first fatal error stops the job
            if not stop:
                stop.append(exc)
            tg.cancel_scope.cancel()
        finally:
            await window.__aexit__(None, None, None)

    async with anyio.create_task_group() as tg:
        for key in pending:
            if stop:
                break
            await window.__aenter__()
            if stop:
                await window.__aexit__(None, None, None)
                break
            tg.start_soon(one, key, tg)
    if stop:
        exc = stop[0]
        # a journal or secrets file that cannot be written (disk full) stops the job
        # like a network failure: items already changed are recorded, the rest resume
        if isinstance(exc, (ZPAError, JournalError, SecretSinkError)):
            raise JobStopped(exc) from exc
        raise exc
    return summary
