"""Rotation: plan the selected credentials, write each new secret down, PUT it, verify.

For every credential the secret ZPA holds is the last one the secrets file recorded:
the secret is appended to the sink and fsynced before its intent is journaled and
before the PUT; a resumed job re-sends exactly that secret for an item left uncertain.
"""

from __future__ import annotations

import secrets as _stdlib_secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..csvio import read_csv
from ..errors import (
    APIError,
    AuthError,
    InputError,
    NotFound,
    OutcomeUnknown,
    PermissionDenied,
    ServerError,
    UsageError,
)
from ..journal import Journal, replay, verify_header
from ..models import Credential, CredentialSecret, CredentialType, Secret
from ..report import write_report
from ..runner import DEFAULT_CONCURRENCY_CAP, ItemResult, RunSummary, Window
from ..secrets import (
    Redactor,
    SecretSink,
    agenerate_ssh_key,
    check_sink_path,
    generate_password,
    validate_private_key,
)
from .common import (
    JobContext,
    JobProgressSink,
    distinct_files,
    journal_has_records,
    resolve_microtenants,
    run_job_items,
    tenant_credentials,
)
from .select import Selection

__all__ = ["RotateOptions", "RotatePlan", "RotateResult", "job_header", "plan_rotation", "rotate"]

KIND = "rotate"
_GUARD_MIN = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class RotateOptions:
    journal: Path
    secrets_out: Path
    selection: Selection = field(default_factory=Selection)
    microtenant: str | None = None
    from_file: Path | None = None
    retry_failed: bool = False
    report: Path | None = None

    def spec(self) -> dict[str, Any]:
        """The normalised job spec the journal header holds (never a secret)."""
        return {
            "select": self.selection.to_record(),
            "microtenant": self.microtenant,
            "fromFile": str(self.from_file.resolve()) if self.from_file else None,
            "secretsOut": str(self.secrets_out.resolve()),
        }


@dataclass(slots=True)
class RotatePlan:
    credentials: list[Credential]
    #: secrets given by --from-file, by credential id
    given: dict[str, CredentialSecret] = field(default_factory=dict)


@dataclass(slots=True)
class RotateResult:
    total: int
    done: int
    failed: int
    uncertain: int
    unconfirmed: list[str]
    summary: RunSummary
    journal: Path
    secrets_out: Path
    report: Path | None
    resumed: bool

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.uncertain == 0 and not self.unconfirmed


_FROM_FILE_COLUMNS = frozenset(
    {"id", "name", "microtenantId", "password", "privateKey", "privateKeyFile", "passphrase"}
)


def _read_from_file(path: Path, creds: list[Credential]) -> dict[str, CredentialSecret]:
    """Secrets for ``rotate --from-file``: each row names a credential and its new secret."""
    by_id = {c.id: c for c in creds}
    by_name: dict[tuple[str, str], Credential] = {(c.display_name, c.scope): c for c in creds}
    _, rows = read_csv(
        path,
        allowed=_FROM_FILE_COLUMNS,
        required_any=(frozenset({"id", "name"}), frozenset({"password", "privateKey",
                                                           "privateKeyFile"})),
    )
    out: dict[str, CredentialSecret] = {}
    name = str(path)
    for row in rows:
        v = row.values
        if "id" in v:
            cred = by_id.get(v["id"].strip())
            if cred is None:
                raise InputError(
                    f"no selected credential has id {v['id']!r}; check --select and"
                    " --microtenant", file=name, line=row.line, column="id")
        else:
            if "name" not in v:
                raise InputError("the row needs an id, or a name (with microtenantId)",
                                 file=name, line=row.line, column="id")
            mt = v.get("microtenantId", "0").strip() or "0"
            cred = by_name.get((v["name"], mt))
            if cred is None:
                raise InputError(
                    f"no selected credential is named {v['name']!r} in microtenant {mt}",
                    file=name, line=row.line, column="name")
        if cred.id in out:
            raise InputError(f"credential {cred.id} ({cred.display_name}) is named twice",
                             file=name, line=row.line)
        given = [c for c in ("password", "privateKey", "privateKeyFile") if c in v]
        if len(given) != 1:
            raise InputError("give exactly one of password, privateKey, privateKeyFile",
                             file=name, line=row.line)
        col = given[0]
        if cred.credential_type is CredentialType.SSH_KEY:
            if col == "password":
                raise InputError(f"{cred.display_name} is an SSH_KEY credential: give"
                                 " privateKey or privateKeyFile", file=name, line=row.line,
                                 column="password")
            if col == "privateKeyFile":
                key_path = (path.parent / v["privateKeyFile"]).resolve()
                try:
                    pem = key_path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    raise InputError(f"cannot read the key file {str(key_path)!r}",
                                     file=name, line=row.line, column="privateKeyFile") from None
            else:
                pem = v["privateKey"]
            passphrase = v.get("passphrase")
            problem = validate_private_key(pem, passphrase)
            if problem:
                raise InputError(f"the private key is not one ZPA accepts: {problem}",
                                 file=name, line=row.line, column=col)
            out[cred.id] = CredentialSecret(
                private_key=Secret(pem),
                passphrase=Secret(passphrase) if passphrase else None,
            )
        else:
            if col != "password":
                raise InputError(f"{cred.display_name} is a {cred.credential_type.value}"
                                 " credential: give a password", file=name, line=row.line,
                                 column=col)
            pw = v["password"]
            if any(ord(ch) < 32 for ch in pw):
                raise InputError("the password holds a control character",
                                 file=name, line=row.line, column="password")
            out[cred.id] = CredentialSecret(password=Secret(pw))
    return out


async def plan_rotation(ctx: JobContext, opts: RotateOptions) -> RotatePlan:
    """List the scope (500 a page), apply the selection, read --from-file."""
    mts = await resolve_microtenants(ctx.client, opts.microtenant)
    want_ids = opts.selection.ids
    listed = await tenant_credentials(
        ctx.client, mts, keep=lambda c: want_ids is None or c.id in want_ids)
    creds = [c for c in listed.values() if opts.selection.matches(c)]
    if want_ids is not None:
        missing = sorted(want_ids - listed.keys(), key=lambda i: int(i))
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more"
                                               if len(missing) > 10 else "")
            raise UsageError(
                f"--select names ids that are not in the scope: {shown}. Check --microtenant,"
                " or remove them from the list (deleted credentials?); nothing was sent")
    creds.sort(key=lambda c: (c.scope, int(c.id) if c.id.isdigit() else 0, c.id))
    plan = RotatePlan(creds)
    if opts.from_file is not None:
        plan.given = _read_from_file(opts.from_file, creds)
        plan.credentials = [c for c in creds if c.id in plan.given]
    return plan


def _check_paths(opts: RotateOptions) -> None:
    """The journal, the secrets file and the report are three different files: a report
    written over the secrets file would lose the passwords the job just set."""
    named = [("--journal", opts.journal), ("--secrets-out", opts.secrets_out)]
    if opts.report is not None:
        named.append(("--report", opts.report))
    distinct_files(named)


def job_header(ctx: JobContext, opts: RotateOptions) -> dict[str, Any]:
    return {
        "kind": KIND,
        "spec": opts.spec(),
        "tenant": ctx.tenant_record(),
        "version": __version__,
        "jobId": _stdlib_secrets.token_hex(8),
    }


class _Ewma:
    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self.value = 0.0

    def add(self, x: float) -> None:
        self.value = x if self.value == 0.0 else self.value + self.alpha * (x - self.value)


async def rotate(
    ctx: JobContext,
    opts: RotateOptions,
    *,
    progress: JobProgressSink | None = None,
    redactor: Redactor | None = None,
    confirm: Callable[[int, bool], bool] | None = None,
) -> RotateResult | None:
    """Run (or resume) a rotation job and return its result (``None`` if ``confirm``
    declined: then nothing was written). Raises JobStopped on auth, permission or
    network failures; cancellation propagates. The journal stays consistent either way.
    """
    client = ctx.client
    _check_paths(opts)
    check_sink_path(opts.secrets_out)  # before signing in, and before any journal exists
    prior = replay(opts.journal) if journal_has_records(opts.journal) else None
    header = job_header(ctx, opts)
    if prior is not None and prior.header is not None:
        # refuse another job's journal before reading the tenant, not after
        verify_header(opts.journal, prior.header, header)
    plan: RotatePlan | None = None
    if prior is None or not prior.planned:
        # plan before the journal exists, so that a declined prompt leaves no journal
        # behind to refuse a corrected command
        plan = await plan_rotation(ctx, opts)
        if not plan.credentials:
            # nothing selected: no journal or secrets file to leave behind
            return RotateResult(total=0, done=0, failed=0, uncertain=0, unconfirmed=[],
                                summary=RunSummary(), journal=opts.journal,
                                secrets_out=opts.secrets_out, report=None, resumed=False)
        if confirm is not None and not confirm(len(plan.credentials), False):
            return None
    elif confirm is not None:
        left = sum(1 for k in prior.items if prior.status(k) in
                   ("pending", "uncertain") + (("failed",) if opts.retry_failed else ()))
        if not confirm(left, True):
            return None
    redactor = redactor if redactor is not None else Redactor()
    # the journal refuses any record holding a secret this job knows (defence in depth);
    # short user-given secrets are left out of that check so that a password like
    # "test" cannot make an innocent record (a name "test-1") unwritable
    guard = Redactor()

    def learn(secret: CredentialSecret) -> None:
        redactor.add(secret)
        guard.add(*(v for v in secret.values() if len(v) >= _GUARD_MIN))

    # the sink first: a secrets file it refuses must not leave a journal behind
    async with await SecretSink.open(opts.secrets_out, redactor=redactor) as sink, \
            await Journal.open(opts.journal, header=header,
                               forbidden=guard.found_in) as journal:
        job_id = str((journal.state.header or {}).get("jobId", ""))
        resumed = journal.state.planned
        given: dict[str, CredentialSecret] = {}
        if not resumed:
            assert plan is not None
            given = plan.given
            current = {c.id: c for c in plan.credentials}
            await journal.write_plan([(c.id, c.to_record()) for c in plan.credentials])
        else:
            # which planned credentials still exist, and where (each PUT still reads
            # its credential first, see work())
            mts = await resolve_microtenants(client, opts.microtenant)
            current = await tenant_credentials(client, mts,
                                               keep=lambda c: c.id in journal.state.items)
            if opts.from_file is not None:
                given = _read_from_file(opts.from_file, list(current.values()))

        state = journal.state
        # the secret this job last wrote down for each item (re-sent if the item is
        # uncertain, or if the process died between the sink write and the intent)
        recorded = {
            k: s for k, (jid, s) in sink.last_records().items() if jid == job_id
        }
        for s in list(recorded.values()) + list(given.values()):
            learn(s)

        statuses = ["pending", "uncertain"] + (["failed"] if opts.retry_failed else [])
        todo = [k for k in state.items if state.status(k) in statuses]
        failed_before = 0 if opts.retry_failed else len(state.keys_in("failed"))
        if progress is not None:
            progress.start(len(state.items), len(state.items) - len(todo),
                           len(todo) / client.write_rate.per_second, failed=failed_before)

        prep = _Ewma()

        async def secret_for(key: str, cred: Credential) -> CredentialSecret:
            if key in recorded:
                return recorded[key]
            public_key = None
            if key in given:
                secret = given[key]
            elif cred.credential_type is CredentialType.SSH_KEY:
                pem, public_key = await agenerate_ssh_key()
                secret = CredentialSecret(private_key=pem)
            else:
                secret = CredentialSecret(password=generate_password())
            learn(secret)
            await sink.append(sink_record(cred), secret, public_key=public_key)
            recorded[key] = secret
            return secret

        def sink_record(cred: Credential) -> dict[str, Any]:
            return {"id": cred.id, "name": cred.display_name, "microtenantId": cred.scope,
                    "credentialType": cred.credential_type.value,
                    "userName": cred.user_name, "jobId": job_id}

        async def work(key: str) -> ItemResult:
            planned = current.get(key)
            if planned is None:
                return ItemResult("failed", http=404, error_id="resource.not.found",
                                  reason="the credential no longer exists in this scope")
            # the PUT replaces the whole object: read it as it stands now, so that a long
            # job never reverts what another admin changed since it was planned (a GET
            # from the read budget, which the writes do not use)
            t0 = time.monotonic()
            try:
                cred = await client.get_credential(key, microtenant_id=planned.scope)
            except NotFound as exc:
                return ItemResult("failed", http=exc.status, error_id=exc.error_id,
                                  reason="the credential no longer exists in this scope")
            if cred.credential_type is not planned.credential_type:
                return ItemResult("failed", error_id="bulkcred.type.changed",
                                  reason=f"its type changed to {cred.credential_type.value}"
                                         " since the job was planned")
            secret = await secret_for(key, cred)
            # what an item costs besides its PUT (its GET, a key, the fsyncs) sizes the
            # in-flight window with the PUT's own latency
            prep.add(time.monotonic() - t0)

            async def before_send(attempt: int) -> None:
                # every request, retries included, has its intent on disk first
                await journal.intent(key, "update", attempt=state.states[key].attempts + 1,
                                     data={"ts": round(time.time(), 3), "try": attempt})

            try:
                await client.update_credential(cred, secret, before_send=before_send)
            except ServerError as exc:
                # a 5xx after every retry may or may not have been applied: leave the item
                # uncertain; the next run re-sends this same secret
                raise OutcomeUnknown(str(exc), method=exc.method, path=exc.path,
                                     status=exc.status, error_id=exc.error_id,
                                     reason=exc.reason) from exc
            except APIError as exc:
                if isinstance(exc, (AuthError, PermissionDenied)):
                    raise  # stops the job; the secret may still be re-sent by a resume
                # refused, so not applied: the secrets file must not name this secret
                await sink.void(sink_record(cred), f"refused by ZPA: HTTP {exc.status}"
                                                   f" {exc.error_id or ''}".strip())
                recorded.pop(key, None)
                raise
            return ItemResult("done", http=204)

        def latency() -> float:
            return client.stats().latency_ewma + prep.value

        cap = ctx.concurrency or DEFAULT_CONCURRENCY_CAP
        window = Window(cap, client.write_rate, latency)
        try:
            summary = await run_job_items(ctx, journal, todo, work, window=window,
                                          progress=progress)
        finally:
            if progress is not None:
                progress.finish()
        unconfirmed = await _verify(ctx, opts, journal, current)
        counts = journal.state.counts()
        report = opts.report
        if report is not None:
            write_report(journal.state, report)
        await journal.event("finished", {"counts": counts})
        return RotateResult(
            total=len(state.items),
            done=counts.get("done", 0),
            failed=counts.get("failed", 0),
            uncertain=counts.get("uncertain", 0) + counts.get("pending", 0),
            unconfirmed=unconfirmed,
            summary=summary,
            journal=opts.journal,
            secrets_out=opts.secrets_out,
            report=report,
            resumed=resumed,
        )


async def _verify(
    ctx: JobContext, opts: RotateOptions, journal: Journal, before: dict[str, Credential]
) -> list[str]:
    """One listing confirms each done item's ``lastCredentialResetTime`` moved.

    A 204 says nothing about content (case 5): the listing is the proof, and it costs
    one GET per 500 credentials instead of one per item.
    """
    state = journal.state
    verified = {k for e in state.events if e.get("name") == "verified"
                for k in e.get("data", {}).get("keys", [])}
    to_check = [k for k in state.items if state.status(k) == "done" and k not in verified]
    if not to_check:
        return []
    mts = await resolve_microtenants(ctx.client, opts.microtenant)
    after = await tenant_credentials(ctx.client, mts, keep=lambda c: c.id in state.items)
    ok: list[str] = []
    bad: list[str] = []
    for key in to_check:
        planned = state.items[key].get("lastCredentialResetTime")
        cred = after.get(key)
        intent = state.states[key].last_intent or {}
        started = (intent.get("data") or {}).get("ts")
        moved = (
            cred is not None
            and cred.last_credential_reset_time is not None
            and (
                planned is None
                or cred.last_credential_reset_time > int(planned)
                # created and rotated within the same second: the clock moved anyway
                or (started is not None and cred.last_credential_reset_time >= int(started) - 1)
            )
        )
        (ok if moved else bad).append(key)
    if ok:
        await journal.event("verified", {"keys": ok})
    for key in bad:
        await journal.outcome(
            key, "failed", error_id="bulkcred.unconfirmed",
            reason="the PUT was accepted but the listing does not show"
                   " lastCredentialResetTime moving; rerun with --retry-failed")
    return bad
