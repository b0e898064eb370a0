"""Audit: every credential of every microtenant, read 500 a page in parallel under the read
limit and folded into findings as the pages arrive; plus the tenant-reading helpers that
migrate and export share.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator, NamedTuple, Sequence

import orjson
from rich.console import Group
from rich.table import Table
from rich.text import Text

from .. import __version__
from ..client import ZPAClient
from ..errors import NotFound, PermissionDenied, UsageError
from ..models import Credential, Microtenant, PolicyRule, normalize_name
from .common import (  # re-exported: migrate and export read the tenant the same way
    JobContext,
    ReadProgress,
    concurrently,
    read_tenant,
    resolve_microtenants,
)

__all__ = [
    "AGE_BUCKETS",
    "FINDING_KINDS",
    "AuditBuilder",
    "AuditOptions",
    "AuditResult",
    "Finding",
    "ReadProgress",
    "audit",
    "covered_microtenants",
    "pick_microtenant",
    "read_policy_references",
    "read_tenant",
    "render_csv",
    "render_json",
    "rule_scopes",
    "table_view",
]

FINDING_KINDS = ("stale", "never_rotated", "duplicate_name", "unsafe_name", "unused")
#: the portal's name rule; the API takes more, but such names do not survive every tool
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
#: age since the last reset, in days: (label, upper bound or None for the rest)
AGE_BUCKETS: tuple[tuple[str, int | None], ...] = (
    ("0–30 d", 30), ("31–90 d", 90), ("91–180 d", 180), ("181–365 d", 365),
    ("1–2 y", 730), ("> 2 y", None),
)
UNKNOWN_AGE = len(AGE_BUCKETS)  # the bucket of a credential without any timestamp
_BUCKET_LABELS = [label for label, _ in AGE_BUCKETS] + ["unknown"]
#: microtenants walked at once: enough to hide each walk's first-page round trip, few
#: enough that the pages in memory stay bounded however many microtenants there are
DAY = 86400
_LISTED = 5  # related ids named in a detail text


# ---------------------------------------------------------------------------------------
# reading the tenant


def pick_microtenant(microtenants: Sequence[Microtenant], mid: str, flag: str) -> Microtenant:
    """The microtenant with id ``mid``, or a usage error naming it and the known ones."""
    for m in microtenants:
        if m.id == mid:
            return m
    known = ", ".join(f"{m.id} ({m.name})" for m in microtenants)
    raise UsageError(f"{flag} {mid}: no microtenant with that id exists in this tenant;"
                     f" nothing was sent. Known microtenants: {known}")


def rule_scopes(everyone: Sequence[Microtenant], covered: Sequence[Microtenant]
                ) -> list[Microtenant]:
    """Where rules that use the ``covered`` microtenants' credentials can live.

    A Default credential is inherited by every microtenant, so any of them may have a
    rule that injects it; a microtenant's own credential is seen by that one alone.
    """
    return list(everyone) if any(m.is_default for m in covered) else list(covered)


async def read_policy_references(
    client: ZPAClient, scopes: Sequence[Microtenant]
) -> tuple[dict[str, list[PolicyRule]], str | None]:
    """The credential policy rules of every scope by the credential they inject, each
    rule once; and why they could not be read (``None`` when they could)."""
    refs: dict[str, list[PolicyRule]] = {}
    seen: set[str] = set()
    try:
        for mt in scopes:
            async for rule in client.iter_credential_policy_rules(microtenant_id=mt.id):
                if rule.id in seen or not rule.credential_id:
                    continue
                seen.add(rule.id)
                refs.setdefault(rule.credential_id, []).append(rule)
    except (NotFound, PermissionDenied) as exc:
        return {}, f"the credential policy rules could not be read ({exc})"
    return refs, None


# ---------------------------------------------------------------------------------------
# findings


class Finding(NamedTuple):
    kind: str
    id: str
    name: str
    microtenant_id: str
    detail: str
    age_days: int | None = None
    related: tuple[str, ...] = ()


class _Seen(NamedTuple):
    """What the end of the audit still needs of each credential (not the whole object)."""

    id: str
    name: str
    microtenant_id: str
    age_days: int | None


@dataclass(frozen=True, slots=True)
class MicrotenantSummary:
    """One microtenant's counts: credentials by type, findings by kind, the oldest age."""

    id: str
    name: str
    credentials: int
    by_type: dict[str, int]
    findings: dict[str, int]
    oldest_days: int | None


@dataclass(frozen=True, slots=True)
class AuditResult:
    """Everything the audit found; the renderers only read it."""

    tenant: dict[str, str]
    now: float
    stale_days: int
    total: int
    by_type: dict[str, int]
    microtenants: list[MicrotenantSummary]
    findings: list[Finding]
    #: credential id -> (name, microtenant id, the rules that inject it)
    references: dict[str, tuple[str, str, list[PolicyRule]]]
    rules_problem: str | None
    #: (microtenant id, credential type, age bucket index) -> credentials
    ages: dict[tuple[str, str, int], int]
    reads: dict[str, Any] = field(default_factory=dict)

    @property
    def generated_at(self) -> str:
        return _iso(self.now)

    @property
    def microtenant_names(self) -> dict[str, str]:
        return {m.id: m.name for m in self.microtenants}

    def finding_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(FINDING_KINDS, 0)
        for f in self.findings:
            counts[f.kind] += 1
        return counts

    def by_microtenant(self) -> dict[str, int]:
        """Microtenant name -> credentials (the id is added where two share a name)."""
        names = Counter(m.name for m in self.microtenants)
        return {(m.name if names[m.name] == 1 else f"{m.name} ({m.id})"): m.credentials
                for m in self.microtenants}

    def finding_records(self) -> Iterator[dict[str, Any]]:
        """The findings as the JSON and CSV formats write them."""
        names = self.microtenant_names
        for f in self.findings:
            rec: dict[str, Any] = {"kind": f.kind, "id": f.id, "name": f.name,
                                   "microtenantId": f.microtenant_id, "detail": f.detail,
                                   "microtenantName": names.get(f.microtenant_id,
                                                                f.microtenant_id),
                                   "ageDays": f.age_days}
            if f.related:
                rec["related"] = list(f.related)
            yield rec

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": f"bulkcred {__version__}",
            "tenant": self.tenant,
            "generatedAt": self.generated_at,
            "now": int(self.now),
            "staleDays": self.stale_days,
            "credentials": self.total,
            "byType": self.by_type,
            "byMicrotenant": self.by_microtenant(),
            "microtenants": [
                {"id": m.id, "name": m.name, "credentials": m.credentials, "byType": m.by_type,
                 "findings": m.findings, "oldestDays": m.oldest_days}
                for m in self.microtenants
            ],
            "findingCounts": self.finding_counts(),
            "findings": list(self.finding_records()),
            "policyReferences": [
                {"id": cid, "name": name, "microtenantId": mt,
                 "rules": [{"id": r.id, "name": r.name} for r in rules]}
                for cid, (name, mt, rules) in self.references.items()
            ],
            "rulesProblem": self.rules_problem,
            "ageHistogram": [
                {"microtenantId": mt, "credentialType": ctype, "ageDays": _BUCKET_LABELS[b],
                 "credentials": n}
                for (mt, ctype, b), n in sorted(self.ages.items())
            ],
            "reads": self.reads,
        }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _day(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d")


def age_bucket(days: int | None) -> int:
    if days is None:
        return UNKNOWN_AGE
    for i, (_, upper) in enumerate(AGE_BUCKETS):
        if upper is None or days <= upper:
            return i
    raise AssertionError(days)


def _unsafe_chars(name: str) -> str:
    bad = sorted({ch for ch in name if not SAFE_NAME.fullmatch(ch)})
    return " ".join(repr(ch) for ch in bad) if bad else "an empty name"


def _ids(items: Sequence[_Seen], names: dict[str, str], with_mt: bool) -> str:
    shown = [f"{s.id} ({names.get(s.microtenant_id, s.microtenant_id)})" if with_mt else s.id
             for s in items[:_LISTED]]
    more = f" and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return ", ".join(shown) + more


class AuditBuilder:
    """Folds credentials one at a time into counts and findings.

    Per credential it keeps only id, name, microtenant and age (for duplicate names and
    unused credentials, which need the whole tenant seen); everything else is counted
    as it passes.
    """

    def __init__(self, *, microtenants: Sequence[Microtenant], now: float,
                 stale_days: int) -> None:
        if stale_days < 0:
            raise UsageError("--stale-days cannot be negative")
        self.now = now
        self.stale_days = stale_days
        self._mts = list(microtenants)
        self._stale_before = now - stale_days * DAY
        self.total = 0
        self._by_type: Counter[str] = Counter()
        self._by_mt_type: Counter[tuple[str, str]] = Counter()
        self._ages: Counter[tuple[str, str, int]] = Counter()
        self._oldest: dict[str, int] = {}
        self._findings: list[Finding] = []
        self._names: dict[str, list[_Seen]] = {}

    def add(self, cred: Credential) -> None:
        mt = cred.scope
        ctype = cred.credential_type.value
        name = cred.display_name
        self.total += 1
        self._by_type[ctype] += 1
        self._by_mt_type[(mt, ctype)] += 1
        last = cred.last_credential_reset_time or cred.creation_time
        age = max(0, int(self.now - last) // DAY) if last else None
        self._ages[(mt, ctype, age_bucket(age))] += 1
        if age is not None and age > self._oldest.get(mt, -1):
            self._oldest[mt] = age
        add = self._findings.append
        if last is not None and last < self._stale_before:
            since = ("last reset" if cred.last_credential_reset_time else
                     "no lastCredentialResetTime; created")
            add(Finding("stale", cred.id, name, mt,
                        f"{since} {age} days ago, on {_day(last)} (limit {self.stale_days} days)",
                        age))
        reset, created = cred.last_credential_reset_time, cred.creation_time
        if reset is None:
            add(Finding("never_rotated", cred.id, name, mt,
                        "no lastCredentialResetTime: never rotated", age))
        elif reset == created:
            add(Finding("never_rotated", cred.id, name, mt,
                        f"never rotated since its creation on {_day(created)} ({age} days)",
                        age))
        if not SAFE_NAME.fullmatch(name):
            add(Finding("unsafe_name", cred.id, name, mt,
                        f"characters outside [A-Za-z0-9._-]: {_unsafe_chars(name)}", age))
        self._names.setdefault(normalize_name(name), []).append(
            _Seen(cred.id, name, mt, age))

    def result(
        self,
        *,
        references: dict[str, list[PolicyRule]],
        rules_problem: str | None,
        tenant: dict[str, str],
        reads: dict[str, Any] | None = None,
    ) -> AuditResult:
        names = {m.id: m.name for m in self._mts}
        findings = list(self._findings)
        known: dict[str, tuple[str, str, list[PolicyRule]]] = {}
        for group in self._names.values():
            for s in group:
                rules = references.get(s.id)
                if rules:
                    known[s.id] = (s.name, s.microtenant_id, rules)
                elif rules_problem is None:
                    findings.append(Finding("unused", s.id, s.name, s.microtenant_id,
                                            "no credential policy rule injects it",
                                            s.age_days))
            if len(group) < 2:
                continue
            for s in group:
                same = [o for o in group if o.microtenant_id == s.microtenant_id and o is not s]
                other = [o for o in group if o.microtenant_id != s.microtenant_id]
                parts = []
                if same:
                    parts.append(f"same name in this microtenant as {_ids(same, names, False)}")
                if other:
                    parts.append(f"also used in other microtenants by {_ids(other, names, True)}")
                findings.append(Finding("duplicate_name", s.id, s.name, s.microtenant_id,
                                        "; ".join(parts), s.age_days,
                                        tuple(o.id for o in (same + other)[:20])))
        order = {k: i for i, k in enumerate(FINDING_KINDS)}
        findings.sort(key=lambda f: (order[f.kind], names.get(f.microtenant_id, ""),
                                     normalize_name(f.name), _num(f.id)))
        per_mt: dict[str, Counter[str]] = {m.id: Counter() for m in self._mts}
        for f in findings:
            per_mt.setdefault(f.microtenant_id, Counter())[f.kind] += 1
        summaries = []
        for m in self._mts:
            by_type = {t: n for (mt, t), n in sorted(self._by_mt_type.items()) if mt == m.id}
            summaries.append(MicrotenantSummary(
                id=m.id, name=m.name, credentials=sum(by_type.values()), by_type=by_type,
                findings={k: per_mt[m.id][k] for k in FINDING_KINDS},
                oldest_days=self._oldest.get(m.id)))
        return AuditResult(
            tenant=tenant, now=self.now, stale_days=self.stale_days, total=self.total,
            by_type=dict(sorted(self._by_type.items())), microtenants=summaries,
            findings=findings, references=dict(sorted(known.items(), key=lambda kv: _num(kv[0]))),
            rules_problem=rules_problem, ages=dict(self._ages), reads=dict(reads or {}),
        )


def _num(cid: str) -> tuple[int, str]:
    return (int(cid), "") if cid.isdigit() else (0, cid)


# ---------------------------------------------------------------------------------------
# the job


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditOptions:
    stale_days: int = 90
    microtenant: str | None = None
    #: the clock the ages are measured by (default: when the audit starts)
    now: float | None = None


async def covered_microtenants(client: ZPAClient, only: str | None
                               ) -> tuple[list[Microtenant], list[Microtenant]]:
    """(every microtenant, the ones the job covers: ``only`` or all)."""
    everyone = await resolve_microtenants(client, None)
    if only is None:
        return everyone, everyone
    return everyone, [pick_microtenant(everyone, only, "--microtenant")]


async def audit(ctx: JobContext, opts: AuditOptions, *,
                progress: ReadProgress | None = None) -> AuditResult:
    """Read the tenant (credentials and credential policy rules, concurrently) and fold
    it into an :class:`AuditResult`. Read-only: it sends no write."""
    client = ctx.client
    started = time.monotonic()
    before = client.stats()
    everyone, covered = await covered_microtenants(client, opts.microtenant)
    builder = AuditBuilder(microtenants=covered, now=opts.now or time.time(),
                           stale_days=opts.stale_days)
    rules: dict[str, Any] = {}

    async def read_rules() -> None:
        rules["refs"], rules["problem"] = await read_policy_references(
            client, rule_scopes(everyone, covered))

    async def read_credentials() -> None:
        await read_tenant(client, covered, lambda _, cred: builder.add(cred), progress=progress)

    await concurrently(read_rules, read_credentials)
    after = client.stats()
    reads = {
        "requests": after.requests["read"] - before.requests["read"],
        "throttled": after.throttled - before.throttled,
        "seconds": round(time.monotonic() - started, 3),
        "readRate": str(client.read_rate),
    }
    return builder.result(references=rules["refs"], rules_problem=rules["problem"],
                          tenant=ctx.tenant_record(), reads=reads)


# ---------------------------------------------------------------------------------------
# renderers (the CLI writes what they return)

CSV_COLUMNS = ("kind", "id", "name", "microtenantId", "microtenantName", "ageDays", "detail")
#: a cell starting with one of these is a formula to a spreadsheet (OWASP, CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def render_json(result: AuditResult) -> bytes:
    return orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2) + b"\n"


def _spreadsheet_text(value: object) -> object:
    """A cell a spreadsheet shows as text and never evaluates: a credential named
    ``=HYPERLINK(...)`` must not become a live link in the auditor's sheet. OWASP's
    advice: a leading ``'``. Numbers stay numbers (ages are never negative)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def render_csv(result: AuditResult) -> str:
    """One row a finding, for reading in a spreadsheet: text that would start a formula
    is quoted with a leading ``'``. (The JSON holds every value unchanged.)"""
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for rec in result.finding_records():
        w.writerow([_spreadsheet_text("" if rec[c] is None else rec[c]) for c in CSV_COLUMNS])
    return buf.getvalue()


_KIND_TEXT = {
    "stale": "stale (last reset older than the threshold)",
    "never_rotated": "never rotated since creation",
    "duplicate_name": "duplicate names (after ZPA's normalisation)",
    "unsafe_name": "names outside [A-Za-z0-9._-]",
    "unused": "used by no credential policy rule",
}


_TYPE_SHORT = {"USERNAME_PASSWORD": "user+pw", "SSH_KEY": "ssh key", "PASSWORD": "password"}


def table_view(result: AuditResult, *, per_kind: int = 10) -> Group:
    """A terminal rendering: totals, a row per microtenant, and the first findings of
    each kind (the csv, json and html formats hold them all)."""
    counts = result.finding_counts()
    head = Text.assemble(
        ("bulkcred audit", "bold"), f" of tenant {result.tenant.get('customerId', '?')}"
        f" at {result.generated_at}: ", (f"{result.total}", "bold"), " credentials in ",
        f"{len(result.microtenants)} microtenants; stale means older than"
        f" {result.stale_days} days")
    mts = Table(title="By microtenant", title_justify="left", header_style="bold")
    types = sorted(result.by_type)
    mts.add_column("microtenant", no_wrap=True)
    for col in ("creds", *(_TYPE_SHORT.get(t, t) for t in types), "stale", "never rot.",
                "dup. name", "unsafe", "unused", "oldest d"):
        mts.add_column(col, justify="right")
    for m in result.microtenants:
        f = m.findings
        label = Text.assemble(m.name, "\n", (m.id, "dim"))
        mts.add_row(label, str(m.credentials), *(str(m.by_type.get(t, 0)) for t in types),
                    str(f["stale"]), str(f["never_rotated"]), str(f["duplicate_name"]),
                    str(f["unsafe_name"]), str(f["unused"]),
                    "" if m.oldest_days is None else str(m.oldest_days))
    summary = Table(title="Findings", title_justify="left", header_style="bold")
    summary.add_column("kind")
    summary.add_column("count", justify="right")
    summary.add_column("meaning")
    for kind in FINDING_KINDS:
        style = "red" if counts[kind] else "green"
        summary.add_row(kind, Text(str(counts[kind]), style=style), _KIND_TEXT[kind])
    parts: list[Any] = [head, mts, summary]
    if result.rules_problem:
        parts.append(Text(f"unused not assessed: {result.rules_problem}", style="yellow"))
    names = result.microtenant_names
    for kind in FINDING_KINDS:
        rows = [f for f in result.findings if f.kind == kind]
        if not rows:
            continue
        if kind == "stale":
            # the oldest first: the few shown are then the most overdue, not the first names
            rows.sort(key=lambda f: -(f.age_days or 0))
        t = Table(title=f"{kind} ({len(rows)})", title_justify="left", header_style="bold")
        for col in ("id", "name", "microtenant", "detail"):
            t.add_column(col, overflow="fold")
        for f in rows[:per_kind]:
            t.add_row(f.id, f.name, names.get(f.microtenant_id, f.microtenant_id), f.detail)
        if len(rows) > per_kind:
            t.caption = f"… and {len(rows) - per_kind} more: --format csv, json or html lists all"
        parts.append(t)
    if result.references:
        t = Table(title=f"Credentials used by credential policy rules ({len(result.references)})",
                  title_justify="left", header_style="bold")
        for col in ("id", "name", "microtenant", "rules"):
            t.add_column(col, overflow="fold")
        for cid, (name, mt, rules) in list(result.references.items())[:per_kind]:
            t.add_row(cid, name, names.get(mt, mt), ", ".join(r.name for r in rules))
        if len(result.references) > per_kind:
            t.caption = f"… and {len(result.references) - per_kind} more"
        parts.append(t)
    return Group(*parts)

