"""Migration: move the selected credentials to another microtenant, one journaled move at a
time; a move whose answer was lost is settled by where the credential is now, never by
sending it again blind; one listing of the target confirms the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .. import __version__
from ..client import ZPAClient
from ..errors import APIError, NotFound, OutcomeUnknown, UsageError
from ..journal import Journal, replay
from ..models import Credential, Microtenant
from ..report import write_report
from ..runner import (
    DEFAULT_CONCURRENCY_CAP,
    ItemResult,
    RunSummary,
    Window,
    is_fatal,
    result_for_error,
    run_items,
)
from .audit import pick_microtenant, read_policy_references, read_tenant, rule_scopes
from .common import JobContext, JobProgressSink, journal_has_records, resolve_microtenants
from .select import Selection

__all__ = ["MigrateOptions", "MigratePlan", "MigrateResult", "migrate", "plan_migration"]

KIND = "migrate"
#: lost answers in a row for one item (each checked: the credential was still at the
#: source) before it is left uncertain for the next run to settle
_MAX_UNKNOWN = 3



@dataclass(frozen=True, slots=True, kw_only=True)
class MigrateOptions:
    journal: Path
    #: the target microtenant id ("0" is Default)
    target: str
    #: the source microtenant id; None: wherever each selected credential is now
    source: str | None = None
    selection: Selection = field(default_factory=Selection)
    retry_failed: bool = False
    report: Path | None = None

    def spec(self) -> dict[str, Any]:
        """The normalised job spec the journal header holds."""
        return {"to": self.target, "from": self.source, "select": self.selection.to_record()}


@dataclass(slots=True)
class MigratePlan:
    target: Microtenant
    sources: list[Microtenant]
    credentials: list[Credential]
    #: credential id -> names of the credential policy rules that inject it: ZPA refuses
    #: to move those until the rules are detached
    blocked: dict[str, list[str]]
    #: why the rules could not be read (then nothing is known to be blocked)
    rules_problem: str | None = None

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for c in self.credentials:
            data: dict[str, Any] = {**c.to_record(), "from": c.scope, "to": self.target.id}
            if c.id in self.blocked:
                data["rules"] = self.blocked[c.id]
            yield c.id, data


@dataclass(slots=True)
class MigrateResult:
    target: Microtenant
    total: int
    done: int
    failed: int
    uncertain: int
    #: moves accepted that the listing of the target does not show
    unconfirmed: list[str]
    #: failed items that credential policy rules inject -> those rules' names
    refused: dict[str, list[str]]
    summary: RunSummary
    journal: Path
    report: Path | None
    resumed: bool

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.uncertain == 0 and not self.unconfirmed


async def plan_migration(ctx: JobContext, opts: MigrateOptions) -> MigratePlan:
    """Check both microtenants exist, list the sources' own credentials (500 a page) and
    read the credential policy rules once. Sends nothing."""
    client = ctx.client
    everyone = await resolve_microtenants(client, None)
    target = pick_microtenant(everyone, opts.target, "--to")
    if opts.source is not None:
        source = pick_microtenant(everyone, opts.source, "--from")
        if source.id == target.id:
            raise UsageError(f"--from and --to are both microtenant {target.id} ({target.name}):"
                             " there is nothing to move")
        sources = [source]
    else:
        sources = [m for m in everyone if m.id != target.id]
    want = opts.selection.ids
    creds: list[Credential] = []

    def consume(_: Microtenant, c: Credential) -> None:
        if (want is None or c.id in want) and opts.selection.matches(c):
            creds.append(c)

    await read_tenant(client, sources, consume)
    creds.sort(key=lambda c: (c.scope, int(c.id) if c.id.isdigit() else 0, c.id))
    refs, problem = await read_policy_references(client, rule_scopes(everyone, sources))
    planned = {c.id for c in creds}
    blocked = {cid: sorted({r.name for r in rules}) for cid, rules in refs.items()
               if cid in planned}
    return MigratePlan(target, sources, creds, blocked, problem)


def _header(ctx: JobContext, opts: MigrateOptions) -> dict[str, Any]:
    return {"kind": KIND, "spec": opts.spec(), "tenant": ctx.tenant_record(),
            "version": __version__}


async def _locate(client: ZPAClient, cid: str, source: str, target: str) -> str | None:
    """Which of ``source`` and ``target`` owns the credential now (None: neither).

    A read in a microtenant also finds what it inherits from Default, so the owner is
    taken from the answer, not from the scope asked.
    """
    for scope in (target, source):
        try:
            cred = await client.get_credential(cid, microtenant_id=scope)
        except NotFound:
            continue
        if cred.scope in (source, target):
            return cred.scope
    return None


def _elsewhere(source: str, target: str) -> ItemResult:
    return ItemResult("failed", error_id="bulkcred.moved.elsewhere",
                      reason=f"the credential is no longer in microtenant {source} nor in"
                             f" {target}; it was moved or deleted by someone else: left alone")


def _refused(exc: APIError, item: Mapping[str, Any]) -> ItemResult:
    """A refusal as the server gave it, plus the rules that block it when it is about them."""
    result = result_for_error(exc)
    rules = list(item.get("rules") or [])
    if not rules and exc.error_id == "credential.in.use":
        rules = [str(p) for p in exc.params]
    if not rules:
        return result
    reason = result.reason or ""
    missing = [r for r in rules if r not in reason]
    if missing:
        reason += f" (credential policy rules that inject it: {', '.join(missing)})"
    return ItemResult("failed", http=result.http, error_id=result.error_id,
                      reason=reason + "; detach it from those rules, then run again with"
                                      " --retry-failed", data={"rules": rules})


async def migrate(
    ctx: JobContext,
    opts: MigrateOptions,
    *,
    progress: JobProgressSink | None = None,
    confirm: Callable[[int, bool, MigratePlan | None], bool] | None = None,
) -> MigrateResult | None:
    """Run (or resume) a migration and return its result (``None`` if ``confirm``
    declined: then nothing was written). ``confirm(count, resumed, plan)`` gets the plan
    on a first run. Raises JobStopped on auth, permission or network failures.
    """
    client = ctx.client
    prior = replay(opts.journal) if journal_has_records(opts.journal) else None
    plan: MigratePlan | None = None
    if prior is None or not prior.planned:
        # planned before the journal exists, so that a declined prompt or a missing
        # target leaves no journal behind to refuse the corrected command
        plan = await plan_migration(ctx, opts)
        target = plan.target
        if confirm is not None and not confirm(len(plan.credentials), False, plan):
            return None
    else:
        # the target must still be there before anything more is sent to it
        target = pick_microtenant(await resolve_microtenants(client, None), opts.target, "--to")
        if confirm is not None:
            left = sum(1 for k in prior.items if prior.status(k) in _todo_statuses(opts))
            if not confirm(left, True, None):
                return None

    async with await Journal.open(opts.journal, header=_header(ctx, opts)) as journal:
        resumed = journal.state.planned
        if not resumed:
            assert plan is not None
            await journal.write_plan(plan.items())
        state = journal.state
        todo = [k for k in state.items if state.status(k) in _todo_statuses(opts)]
        already = sum(1 for k in state.items if state.status(k) == "done")
        if progress is not None:
            progress.start(len(state.items), already, len(todo) / client.write_rate.per_second)

        async def work(key: str) -> ItemResult:
            item = state.items[key]
            st = state.states[key]
            source, dest = str(item["from"]), str(item["to"])
            if st.attempts:
                # a move was sent for it before (its answer lost, or the process died, or
                # it failed): where the credential is now tells whether it landed
                where = await _locate(client, key, source, dest)
                if where == dest:
                    return ItemResult("done", data={"reconciled": "found in the target"})
                if where is None:
                    return _elsewhere(source, dest)
            unknown = 0
            while True:
                await journal.intent(key, "move", attempt=st.attempts + 1,
                                     data={"from": source, "to": dest})
                try:
                    await client.move_credential(key, source_microtenant_id=source,
                                                 target_microtenant_id=dest)
                except OutcomeUnknown:
                    where = await _locate(client, key, source, dest)
                    if where == dest:
                        return ItemResult("done", data={"reconciled": "found in the target"})
                    if where is None:
                        return _elsewhere(source, dest)
                    unknown += 1
                    if unknown >= _MAX_UNKNOWN:
                        raise  # still at the source: left uncertain, the next run settles it
                    continue  # still at the source, so this move was not applied
                except APIError as exc:
                    if is_fatal(exc):
                        raise
                    return _refused(exc, item)
                return ItemResult("done", http=204)

        cap = ctx.concurrency or DEFAULT_CONCURRENCY_CAP
        window = Window(cap, client.write_rate, lambda: client.stats().latency_ewma)
        summary = await run_items(todo, work, journal=journal, window=window,
                                  progress=progress)
        unconfirmed = await _verify(client, journal, target)
        if progress is not None:
            progress.finish()
        counts = state.counts()
        if opts.report is not None:
            write_report(state, opts.report)
        await journal.event("finished", {"counts": counts})
        refused = {k: (state.states[k].last_outcome or {}).get("data", {}).get("rules")
                   for k in state.keys_in("failed")}
        return MigrateResult(
            target=target,
            total=len(state.items),
            done=counts["done"],
            failed=counts["failed"],
            uncertain=counts["uncertain"] + counts["pending"],
            unconfirmed=unconfirmed,
            refused={k: v for k, v in refused.items() if v},
            summary=summary,
            journal=opts.journal,
            report=opts.report,
            resumed=resumed,
        )


def _todo_statuses(opts: MigrateOptions) -> tuple[str, ...]:
    return ("pending", "uncertain") + (("failed",) if opts.retry_failed else ())


async def _verify(client: ZPAClient, journal: Journal, target: Microtenant) -> list[str]:
    """One listing of the target confirms every moved credential is there.

    A 204 says nothing about the result (case 5); the listing costs one GET per 500
    credentials of the target instead of one per item.
    """
    state = journal.state
    verified = {k for e in state.events if e.get("name") == "verified"
                for k in e.get("data", {}).get("keys", [])}
    to_check = [k for k in state.items if state.status(k) == "done" and k not in verified]
    if not to_check:
        return []
    there: set[str] = set()
    await read_tenant(client, [target], lambda _, cred: there.add(cred.id))
    ok = [k for k in to_check if k in there]
    bad = [k for k in to_check if k not in there]
    if ok:
        await journal.event("verified", {"keys": ok})
    for key in bad:
        await journal.outcome(
            key, "failed", error_id="bulkcred.unconfirmed",
            reason=f"the move was accepted but the listing of microtenant {target.id}"
                   f" ({target.name}) does not show the credential; run again with"
                   " --retry-failed")
    return bad
