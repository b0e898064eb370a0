"""What every job shares: listing a scope of the tenant, job headers, options."""

from __future__ import annotations

import logging
import os
import time
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Protocol, Sequence

import anyio

from ..client import MAX_PAGE_SIZE, ZPAClient
from ..errors import BadRequest, NotFound, PermissionDenied, UsageError, WaitTooLong
from ..journal import Journal, JournalState, replay, verify_header
from ..limiter import request_class
from ..models import DEFAULT_MICROTENANT, Credential, Microtenant, normalize_microtenant_id
from ..runner import ItemResult, JobStopped, Progress, RunSummary, Window, run_items

log = logging.getLogger("bulkcred.jobs")

__all__ = [
    "JobContext",
    "JobProgressSink",
    "distinct_files",
    "journal_has_records",
    "planned_state",
    "run_job_items",
    "list_scope",
    "resolve_microtenants",
    "ReadProgress",
    "concurrently",
    "read_tenant",
    "tenant_credentials",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobContext:
    """What a job needs besides its own options: the client and the tenant's identity."""

    client: ZPAClient
    base_url: str
    customer_id: str
    concurrency: int | None = None
    #: called with (class, seconds) when the server pauses a request class
    on_pause: Callable[[str, float], None] | None = None

    def tenant_record(self) -> dict[str, str]:
        return {"baseUrl": self.base_url.rstrip("/"), "customerId": self.customer_id}


class JobProgressSink(Protocol):
    """What a job tells its progress display (``bulkcred.progress.JobProgress``)."""

    def start(self, total: int, already: int, eta: float, *, failed: int = 0,
              rejected: int = 0, skipped: int = 0) -> None: ...
    def advance(self, key: str, result: ItemResult) -> None: ...
    def finish(self) -> None: ...


def distinct_files(named: list[tuple[str, Path]]) -> None:
    """Refuse two options naming one file (say a report over the journal): the second
    writer would destroy what the first keeps."""
    seen: dict[str, str] = {}
    for flag, path in named:
        key = os.path.realpath(path)
        if key in seen:
            raise UsageError(f"{flag} and {seen[key]} name the same file ({path}); give each"
                             " its own path")
        seen[key] = flag


def journal_has_records(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def planned_state(
    path: Path, header: Callable[[JournalState], Mapping[str, Any]] | None = None
) -> JournalState | None:
    """The journal's state if it holds a sealed plan (a resume, or a dry run of one).

    ``header`` builds the header the job would write (given the journal, for jobs
    whose header depends on it); a journal of another job raises JournalMismatch, so
    that a dry run refuses exactly what the real run would.
    """
    if not journal_has_records(path):
        return None
    state = replay(path)
    if header is not None and state.header is not None:
        verify_header(path, state.header, header(state))
    return state if state.planned else None


async def resolve_microtenants(client: ZPAClient, only: str | None) -> list[Microtenant]:
    """The microtenants a job covers: ``only`` (checked to exist), or all of them.

    A tenant without microtenants (or a key that may not list them) is just Default.
    """
    want = normalize_microtenant_id(only) if only is not None else None
    try:
        tenants = [m async for m in client.iter_microtenants()]
    except (NotFound, PermissionDenied):
        if want is not None:
            # a key that lives in one microtenant may not list the others; take the
            # operator's word for the one they named (its listing will tell)
            return [Microtenant(id=want, name="Default" if want == DEFAULT_MICROTENANT
                                else want)]
        tenants = []
    if not any(m.is_default for m in tenants):
        tenants.insert(0, Microtenant(id=DEFAULT_MICROTENANT, name="Default"))
    if want is None:
        return tenants
    for m in tenants:
        if m.id == want:
            return [m]
    known = ", ".join(f"{m.id} ({m.name})" for m in tenants)
    raise UsageError(
        f"microtenant {only!r} does not exist in this tenant; known microtenants: {known}"
    )


#: ZPA's documented filter for what a microtenant defines itself (not inherited)
OWN_ONLY = "ownershipType EQ MICROTENANT_SPECIFIC"


async def list_scope(client: ZPAClient, microtenant: Microtenant) -> AsyncIterator[Credential]:
    """The credentials a microtenant owns (not the ones it inherits from Default).

    A microtenant's listing includes Default's inherited credentials; the ownership
    filter keeps them off the wire (a tenant of many microtenants would otherwise read
    Default once per microtenant). The owner check below stays, so a server that
    ignores the filter still gives the right answer, only slower.
    """
    search = None if microtenant.is_default else OWN_ONLY
    pages = 0
    try:
        async for page in client.iter_credential_pages(microtenant_id=microtenant.id,
                                                       search=search):
            pages += 1
            for cred in page:
                if cred.scope == microtenant.id:
                    yield cred
    except BadRequest:
        if search is None or pages:
            raise
        log.warning("the server refused the ownership filter; listing microtenant %s"
                    " with its inherited credentials", microtenant.id)
        async for page in client.iter_credential_pages(microtenant_id=microtenant.id):
            for cred in page:
                if cred.scope == microtenant.id:
                    yield cred


#: microtenants listed at once when a job reads the tenant
DEFAULT_WALKS = 4


class ReadProgress(Protocol):
    def read(self, microtenant: Microtenant, credentials: int) -> None: ...


async def read_tenant(
    client: ZPAClient,
    microtenants: Sequence[Microtenant],
    consume: Callable[[Microtenant, Credential], None],
    *,
    walks: int = DEFAULT_WALKS,
    progress: ReadProgress | None = None,
) -> None:
    """Hand every credential each microtenant owns to ``consume`` as its page arrives.

    ``walks`` microtenants are listed at once (each reading its own pages concurrently,
    500 a page, without the Default credentials it inherits); the limiter paces them
    all. ``consume`` runs on the event loop between awaits, so it needs no lock.
    """
    gate = anyio.CapacityLimiter(max(1, walks))

    def walk(mt: Microtenant) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            async with gate:
                unreported = 0
                async with aclosing(list_scope(client, mt)) as creds:
                    async for cred in creds:
                        consume(mt, cred)
                        unreported += 1
                        if progress is not None and unreported == MAX_PAGE_SIZE:
                            progress.read(mt, unreported)
                            unreported = 0
                if progress is not None:
                    progress.read(mt, unreported)
        return run

    await concurrently(*(walk(mt) for mt in microtenants))


async def concurrently(*jobs: Callable[[], Awaitable[None]]) -> None:
    """Run ``jobs`` at once; the first failure cancels the others and is raised as
    itself, not inside an ExceptionGroup, so the CLI maps it to its exit code."""
    errors: list[Exception] = []

    async def run(job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the group
            errors.append(exc)
            tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(run, job)
    if errors:
        raise errors[0]


async def tenant_credentials(
    client: ZPAClient, microtenants: Sequence[Microtenant],
    keep: Callable[[Credential], bool] = lambda _: True,
) -> dict[str, Credential]:
    """Every credential the given microtenants own (that ``keep`` keeps), by id."""
    out: dict[str, Credential] = {}

    def consume(_: Microtenant, cred: Credential) -> None:
        if keep(cred):
            out[cred.id] = cred

    await read_tenant(client, microtenants, consume)
    return out


async def run_job_items(
    ctx: JobContext,
    journal: Journal,
    keys: Iterable[str],
    work: Callable[[str], Awaitable[ItemResult]],
    *,
    window: Window,
    progress: Progress | None = None,
) -> RunSummary:
    """:func:`~bulkcred.runner.run_items`, and a server's long pause outlives the process.

    A run stopped because ZPA asked for a pause longer than ``--max-wait`` records when
    the pause ends; a resume holds that class back until then (or, if that is still
    too long, stops again at once) instead of knocking on ZPA's door early.
    """
    for event in reversed(journal.state.events):
        if event.get("name") == "server_pause":
            data = event.get("data") or {}
            left = float(data.get("until", 0)) - time.time()
            if left > 0:
                ctx.client.limiter.pause(str(data.get("class", "write")), left)
            break
    try:
        return await run_items(keys, work, journal=journal, window=window, progress=progress)
    except JobStopped as stopped:
        cause = stopped.cause
        if isinstance(cause, WaitTooLong):
            await journal.event("server_pause", {
                "class": request_class(cause.method or "PUT"),
                "until": round(time.time() + cause.wait, 3),
            })
        raise
