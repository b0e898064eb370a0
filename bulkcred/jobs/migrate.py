"""Migration: move the selected credentials to another microtenant, one journaled move at a
time; a move whose answer was lost is settled by where the credential is now, never by
sending it again blind; one listing of the target confirms the result.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

from .. import __version__
from ..client import ZPAClient
from ..errors import APIError, NotFound, OutcomeUnknown, UsageError
from ..journal import Journal, JournalState, replay, verify_header
from ..models import Credential, Microtenant, normalize_name
from ..report import write_report
from ..runner import (
    DEFAULT_CONCURRENCY_CAP,
    ItemResult,
    RunSummary,
    Window,
    is_fatal,
    result_for_error,
)
from .audit import pick_microtenant, read_policy_references, read_tenant, rule_scopes
from .common import (
    JobContext,
    JobProgressSink,
    distinct_files,
    journal_has_records,
    resolve_microtenants,
    run_job_items,
)
from .select import Selection

__all__ = ["MigrateOptions", "MigratePlan", "MigrateResult", "NameClash", "job_header", "migrate",
           "plan_migration"]

KIND = "migrate"
#: ZPA's refusal of a move into a microtenant that already has a credential of that name
NAME_TAKEN = "resource.already.exist"
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


class NameClash(NamedTuple):
    """A credential to move whose name the target already has (compared as ZPA compares
    names): ZPA refuses that move."""

    #: the name of the credential to move, as the portal shows it
    name: str
    #: the id of the target's credential of that name (None: not known)
    other: str | None


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
    #: credential id -> the target's credential of the same name. Still planned and
    #: sent, like the blocked ones: renaming either side first lets it through
    clashes: dict[str, NameClash] = field(default_factory=dict)

    @property
    def refusals(self) -> int:
        """The credentials ZPA is expected to refuse, for either reason."""
        return len(self.blocked.keys() | self.clashes.keys())

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for c in self.credentials:
            data: dict[str, Any] = {**c.to_record(), "from": c.scope, "to": self.target.id}
            if c.id in self.blocked:
                data["rules"] = self.blocked[c.id]
            if c.id in self.clashes:
                data["clashesWith"] = self.clashes[c.id].other
            yield c.id, data


@dataclass(slots=True)
class MigrateResult:
    target: Microtenant
    total: int
    done: int
    failed: int
    uncertain: int
    #: credentials the journal records as moved (in this run or an earlier one) that the
    #: final listing of the target does not show -> where they are now: their source
    #: microtenant, or None when that listing does not show them either
    unconfirmed: dict[str, Microtenant | None]
    #: failed items that credential policy rules inject -> those rules' names
    refused: dict[str, list[str]]
    #: failed items refused because the target has a credential of the same name
    clashes: dict[str, NameClash]
    summary: RunSummary
    journal: Path
    report: Path | None
    resumed: bool

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.uncertain == 0 and not self.unconfirmed


async def plan_migration(ctx: JobContext, opts: MigrateOptions) -> MigratePlan:
    """Check both microtenants exist, list the sources' and the target's own credentials
    (500 a page) and read the credential policy rules once. Sends nothing."""
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
    #: the target's own credentials by name: ZPA refuses a move whose name is taken there
    taken: dict[str, Credential] = {}

    def consume(mt: Microtenant, c: Credential) -> None:
        if mt.id == target.id:
            taken.setdefault(normalize_name(c.name), c)
        elif (want is None or c.id in want) and opts.selection.matches(c):
            creds.append(c)

    # the target is read in the same walk as the sources, so it costs no wall time
    await read_tenant(client, [*sources, target], consume)
    creds.sort(key=lambda c: (c.scope, int(c.id) if c.id.isdigit() else 0, c.id))
    clashes = {c.id: NameClash(c.display_name, other.id) for c in creds
               if (other := taken.get(normalize_name(c.name))) is not None}
    refs, problem = await read_policy_references(client, rule_scopes(everyone, sources))
    planned = {c.id for c in creds}
    blocked = {cid: sorted({r.name for r in rules}) for cid, rules in refs.items()
               if cid in planned}
    return MigratePlan(target, sources, creds, blocked, problem, clashes)


def job_header(ctx: JobContext, opts: MigrateOptions) -> dict[str, Any]:
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
    """A refusal as the server gave it, plus what to do about it when it is one the plan
    can foresee: the target's credential of the same name, or the rules that inject it."""
    result = result_for_error(exc)
    if exc.error_id == NAME_TAKEN:
        other = item.get("clashesWith")
        which = f"credential {other}" if other else "the credential"
        return ItemResult("failed", http=result.http, error_id=result.error_id,
                          reason=f"{result.reason}; rename it or {which} of the same name in"
                                 f" microtenant {item['to']}, then run again with"
                                 " --retry-failed", data={"clashesWith": other})
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
    distinct_files([(flag, path) for flag, path in (
        ("--journal", opts.journal),
        ("--report", opts.report),
    ) if path is not None])
    client = ctx.client
    prior = replay(opts.journal) if journal_has_records(opts.journal) else None
    header = job_header(ctx, opts)
    if prior is not None and prior.header is not None:
        # refuse another job's journal before reading the tenant, not after
        verify_header(opts.journal, prior.header, header)
    plan: MigratePlan | None = None
    if prior is None or not prior.planned:
        # planned before the journal exists, so that a declined prompt or a missing
        # target leaves no journal behind to refuse the corrected command
        plan = await plan_migration(ctx, opts)
        target, known = plan.target, plan.sources
        if confirm is not None and not confirm(len(plan.credentials), False, plan):
            return None
    else:
        known = await resolve_microtenants(client, None)
        # the target must still be there before anything more is sent to it
        target = pick_microtenant(known, opts.target, "--to")
        if confirm is not None:
            left = sum(1 for k in prior.items if prior.status(k) in _todo_statuses(opts))
            if not confirm(left, True, None):
                return None

    async with await Journal.open(opts.journal, header=header) as journal:
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
        summary = await run_job_items(ctx, journal, todo, work, window=window,
                                      progress=progress)
        unconfirmed = await _verify(client, journal, target, known)
        if progress is not None:
            progress.finish()
        counts = state.counts()
        if opts.report is not None:
            write_report(state, opts.report)
        await journal.event("finished", {"counts": counts})
        failed = {k: state.states[k].last_outcome or {} for k in state.keys_in("failed")}
        refused = {k: o.get("data", {}).get("rules") for k, o in failed.items()}
        clashes = {k: NameClash(html.unescape(str(state.items[k].get("name", ""))),
                                o.get("data", {}).get("clashesWith"))
                   for k, o in failed.items() if o.get("errorId") == NAME_TAKEN}
        return MigrateResult(
            target=target,
            total=len(state.items),
            done=counts["done"],
            failed=counts["failed"],
            uncertain=counts["uncertain"] + counts["pending"],
            unconfirmed=unconfirmed,
            refused={k: v for k, v in refused.items() if v},
            clashes=clashes,
            summary=summary,
            journal=opts.journal,
            report=opts.report,
            resumed=resumed,
        )


def _todo_statuses(opts: MigrateOptions) -> tuple[str, ...]:
    return ("pending", "uncertain") + (("failed",) if opts.retry_failed else ())


async def _verify(client: ZPAClient, journal: Journal, target: Microtenant,
                  known: Sequence[Microtenant]) -> dict[str, Microtenant | None]:
    """One listing of the target confirms that every credential the journal calls moved
    is there; the ones it does not show are marked failed, with where they are now.

    Every done item is checked, not only this run's: a credential moved by an earlier
    run may have been moved back since, and a 204 says nothing about the result anyway
    (case 5). The listing costs one GET per 500 credentials of the target instead of one
    per item; what is missing is looked for the same way, in the sources it left.
    """
    state = journal.state
    to_check = [k for k in state.items if state.status(k) == "done"]
    if not to_check:
        return {}
    there: set[str] = set()
    await read_tenant(client, [target], lambda _, cred: there.add(cred.id))
    ok = [k for k in to_check if k in there]
    if ok:
        await journal.event("verified", {"keys": ok})
    missing = [k for k in to_check if k not in there]
    if not missing:
        return {}
    found = await _find_in_sources(client, state, missing, known)
    names = {m.id: m.name for m in known}
    for key in missing:
        source = str(state.items[key]["from"])
        scope = f"microtenant {source} ({names.get(source, '?')})"
        if key in found:
            now = (f": it is in {scope} again, where it was moved from (moved back since?);"
                   " run again with --retry-failed to move it again")
        else:
            now = (f", nor does the listing of {scope} it was moved from (moved elsewhere or"
                   " deleted since?); run again with --retry-failed to look for it again")
        await journal.outcome(
            key, "failed", error_id="bulkcred.unconfirmed",
            reason=f"the journal records this move as done, but the final listing of"
                   f" microtenant {target.id} ({target.name}) does not show the credential"
                   + now)
    return {k: found.get(k) for k in missing}


async def _find_in_sources(client: ZPAClient, state: JournalState, keys: Sequence[str],
                           known: Sequence[Microtenant]) -> dict[str, Microtenant]:
    """Which of ``keys`` their source microtenant owns, by one listing of each source
    (as planning read them), not a GET per credential."""
    wanted = set(keys)
    sources = {str(state.items[k]["from"]) for k in keys}
    found: dict[str, Microtenant] = {}

    def consume(mt: Microtenant, cred: Credential) -> None:
        if cred.id in wanted:
            found[cred.id] = mt

    await read_tenant(client, [m for m in known if m.id in sources], consume)
    return found
