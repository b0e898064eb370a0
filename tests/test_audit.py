"""Audit: findings folded from credentials (no sockets), and a 20,000-credential tenant
over 5 microtenants audited through the command line, checked against what the
simulator holds."""

from __future__ import annotations

import csv
import html
import io
import math
import re
from collections import Counter
from pathlib import Path

import orjson
from rich.console import Console

from bulkcred.jobs.audit import (
    FINDING_KINDS,
    AuditBuilder,
    render_csv,
    render_json,
    table_view,
)
from bulkcred.models import Credential, CredentialType, Microtenant, PolicyRule

from .conftest import cli_env, run_cli

DAY = 86400
NOW = 1_800_000_000
A = Microtenant(id="0", name="Default")
B = Microtenant(id="77", name="Scope B")


def cred(cid: str, name: str, mt: str = "0", *, created: int | None = None,
         reset: int | None = None, ctype: CredentialType = CredentialType.PASSWORD
         ) -> Credential:
    return Credential(id=cid, name=name, credential_type=ctype,
                      microtenant_id=None if mt == "0" else mt,
                      creation_time=created, last_credential_reset_time=reset)


def fold(creds: list[Credential], *, rules: dict[str, list[PolicyRule]] | None = None,
         problem: str | None = None, stale_days: int = 90) -> dict[str, set[str]]:
    b = AuditBuilder(microtenants=[A, B], now=NOW, stale_days=stale_days)
    for c in creds:
        b.add(c)
    result = b.result(references=rules or {}, rules_problem=problem, tenant={"customerId": "1"})
    return {k: {f.id for f in result.findings if f.kind == k} for k in FINDING_KINDS}


def test_each_kind_of_finding() -> None:
    creds = [
        cred("1", "old-one", created=NOW - 400 * DAY, reset=NOW - 91 * DAY),
        cred("2", "fresh", created=NOW - 10 * DAY, reset=NOW - 5 * DAY),
        cred("3", "never", created=NOW - 10 * DAY, reset=NOW - 10 * DAY),
        cred("4", "no-reset", created=NOW - 200 * DAY),  # stale by its creation time
        cred("5", "db admin", created=NOW - DAY, reset=NOW - DAY + 5),
        cred("6", "Jump-01", "77", created=NOW - DAY, reset=NOW),
        cred("7", "jump-01 ", "77", created=NOW - DAY, reset=NOW),  # same after trimming
        cred("8", "JUMP&#x2d;01", created=NOW - DAY, reset=NOW),  # entity-encoded "-"
        cred("9", "no-times"),
    ]
    rule = PolicyRule(id="r1", name="inject-old", credential_id="1")
    got = fold(creds, rules={"1": [rule]})
    assert got["stale"] == {"1", "4"}
    assert got["never_rotated"] == {"3", "4", "9"}
    assert got["unsafe_name"] == {"5", "7"}  # spaces; "&#x2d;" is a "-" once unescaped
    assert got["duplicate_name"] == {"6", "7", "8"}
    assert got["unused"] == {c.id for c in creds} - {"1"}


def test_stale_threshold_and_unreadable_rules() -> None:
    creds = [cred("1", "a", created=NOW - 40 * DAY, reset=NOW - 31 * DAY)]
    assert fold(creds, stale_days=30)["stale"] == {"1"}
    assert fold(creds, stale_days=31)["stale"] == set()
    # without the rules, nothing can be called unused
    assert fold(creds, problem="HTTP 403")["unused"] == set()


def test_duplicate_details_tell_same_and_other_microtenants() -> None:
    b = AuditBuilder(microtenants=[A, B], now=NOW, stale_days=90)
    for c in (cred("1", "x", "77", reset=NOW), cred("2", "X", "77", reset=NOW),
              cred("3", "x", reset=NOW)):
        b.add(c)
    r = b.result(references={}, rules_problem=None, tenant={})
    dup = {f.id: f for f in r.findings if f.kind == "duplicate_name"}
    assert "in this microtenant as 2" in dup["1"].detail
    assert "other microtenants by 3 (Default)" in dup["1"].detail
    assert dup["3"].related == ("1", "2")
    rec = next(x for x in r.finding_records() if x["id"] == "3" and x["kind"] == "duplicate_name")
    assert rec["related"] == ["1", "2"] and rec["microtenantName"] == "Default"


def test_renderers_shape() -> None:
    b = AuditBuilder(microtenants=[A, B], now=NOW, stale_days=90)
    b.add(cred("1", "a b", created=NOW - 300 * DAY, reset=NOW - 300 * DAY,
               ctype=CredentialType.SSH_KEY))
    b.add(cred("2", "c", "77", created=NOW - DAY, reset=NOW))
    r = b.result(references={"2": [PolicyRule(id="9", name="rule-9", credential_id="2")]},
                 rules_problem=None, tenant={"customerId": "1", "baseUrl": "https://x"})
    doc = orjson.loads(render_json(r))
    assert doc["credentials"] == 2
    assert doc["byType"] == {"PASSWORD": 1, "SSH_KEY": 1}
    assert doc["byMicrotenant"] == {"Default": 1, "Scope B": 1}
    assert {f["kind"] for f in doc["findings"]} <= set(FINDING_KINDS)
    for f in doc["findings"]:
        assert {"kind", "id", "name", "microtenantId", "detail"} <= set(f)
    assert doc["policyReferences"] == [{"id": "2", "name": "c", "microtenantId": "77",
                                        "rules": [{"id": "9", "name": "rule-9"}]}]
    rows = list(csv.DictReader(io.StringIO(render_csv(r))))
    assert len(rows) == len(doc["findings"]) and rows[0]["kind"] == "stale"
    buf = io.StringIO()
    Console(file=buf, width=120).print(table_view(r))
    assert "By microtenant" in buf.getvalue() and "rule-9" in buf.getvalue()


def test_csv_cells_never_start_a_spreadsheet_formula() -> None:
    """OWASP's CSV injection advice: a text cell starting with = + - @ tab or CR gets a
    leading quote, so a spreadsheet shows it instead of evaluating it."""
    hostile = ['=HYPERLINK("http://evil","x")', "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]
    evil = Microtenant(id="66", name="=evil")
    b = AuditBuilder(microtenants=[A, evil], now=NOW, stale_days=90)
    for i, name in enumerate(hostile, 1):
        b.add(cred(str(i), name, created=NOW - DAY, reset=NOW))
    b.add(cred("50", "plain-name", "66", created=NOW - 400 * DAY, reset=NOW - 400 * DAY))
    r = b.result(references={}, rules_problem=None, tenant={})
    rows = list(csv.DictReader(io.StringIO(render_csv(r), newline="")))
    names = {row["id"]: row["name"] for row in rows}
    assert [names[str(i)] for i in range(1, len(hostile) + 1)] == ["'" + n for n in hostile]
    assert names["50"] == "plain-name"
    assert {row["microtenantName"] for row in rows if row["id"] == "50"} == {"'=evil"}
    assert {row["ageDays"] for row in rows if row["id"] == "50"} == {"400"}
    assert not [v for row in rows for v in row.values() if v[:1] in "=+-@\t\r" and v]
    # the JSON is for machines: the names as they are
    assert {f["name"] for f in orjson.loads(render_json(r))["findings"]} >= set(hostile)


def test_table_lists_the_oldest_stale_credentials_first() -> None:
    b = AuditBuilder(microtenants=[A, B], now=NOW, stale_days=90)
    for cid, name, days in (("1", "aaa-recent", 100), ("2", "bbb-oldest", 900),
                            ("3", "ccc-old", 400), ("4", "ddd-older", 700)):
        b.add(cred(cid, name, created=NOW - days * DAY, reset=NOW - days * DAY))
    r = b.result(references={}, rules_problem=None, tenant={})
    buf = io.StringIO()
    Console(file=buf, width=160).print(table_view(r, per_kind=3))
    stale = buf.getvalue().split("stale (4)")[1].split("never_rotated (")[0]
    shown = [n for n in ("aaa-recent", "bbb-oldest", "ccc-old", "ddd-older") if n in stale]
    assert sorted(shown, key=stale.index) == ["bbb-oldest", "ddd-older", "ccc-old"]
    assert "and 1 more" in stale


# --- a 20,000-credential tenant --------------------------------------------------------

SAFE = re.compile(r"[A-Za-z0-9._-]+")


def expected_findings(tenant: object, now: float, stale_days: int) -> dict[str, set[str]]:
    """The findings computed straight from the simulator's tenant, independently."""
    creds = tenant.credentials.values()  # type: ignore[attr-defined]
    used = {str(r.credential_id) for r in tenant.rules.values()}  # type: ignore[attr-defined]
    names = Counter(html.unescape(c.name).strip().casefold() for c in creds)
    return {
        "stale": {str(c.id) for c in creds if c.reset_time < now - stale_days * DAY},
        "never_rotated": {str(c.id) for c in creds if c.reset_time == c.creation_time},
        "duplicate_name": {str(c.id) for c in creds
                           if names[html.unescape(c.name).strip().casefold()] > 1},
        "unsafe_name": {str(c.id) for c in creds if not SAFE.fullmatch(html.unescape(c.name))},
        "unused": {str(c.id) for c in creds} - used,
    }


def test_audit_of_20000_credentials_matches_the_simulator(sim_thread, tmp_path: Path) -> None:
    stale_days = 180
    s = sim_thread(credentials=20_000, microtenants=5, seed=7, policy_rules=300,
                   read_rate="200/1s")
    out = tmp_path / "audit.json"
    proc = run_cli(["audit", "--format", "json", "--output", str(out),
                    "--stale-days", str(stale_days)], cli_env(s.url, BULKCRED_READ_RATE="200/1s"))
    assert proc.returncode == 0, proc.stderr
    assert "credentials read" in proc.stderr  # progress on stderr
    doc = orjson.loads(out.read_bytes())
    tenant = s.state
    creds = list(tenant.credentials.values())
    assert doc["credentials"] == len(creds) == 20_010
    assert doc["byType"] == dict(Counter(c.credential_type for c in creds))
    names = {0: "Default", **{m.id: m.name for m in tenant.microtenants.values()}}
    assert doc["byMicrotenant"] == dict(Counter(names[c.microtenant_id] for c in creds))
    assert len(doc["byMicrotenant"]) == 6
    ages: Counter[str] = Counter()
    for h in doc["ageHistogram"]:
        ages[h["microtenantId"]] += h["credentials"]
    assert ages == Counter(str(c.microtenant_id) for c in creds)

    want = expected_findings(tenant, doc["now"], stale_days)
    got = {k: {f["id"] for f in doc["findings"] if f["kind"] == k} for k in FINDING_KINDS}
    for kind in FINDING_KINDS:
        assert got[kind] == want[kind], kind
        assert want[kind], f"the seed produced no {kind} finding"
    assert Counter(f["kind"] for f in doc["findings"]) == {k: len(v) for k, v in want.items()}
    owner = {str(c.id): str(c.microtenant_id) for c in creds}
    assert all(f["microtenantId"] == owner[f["id"]] for f in doc["findings"])

    refs: dict[str, set[str]] = {}
    for r in tenant.rules.values():
        refs.setdefault(str(r.credential_id), set()).add(r.name)
    assert {p["id"]: {x["name"] for x in p["rules"]} for p in doc["policyReferences"]} == refs

    # every page once at 500 a page: the microtenant list, the rules of each of the six
    # scopes, and each scope's own credentials (never the Default ones it inherits)
    per_scope = Counter(c.microtenant_id for c in creds)
    pages = sum(math.ceil(n / 500) for n in per_scope.values())
    assert doc["reads"]["requests"] == 1 + 6 + pages
    assert doc["reads"]["throttled"] == 0


def test_cli_table_csv_and_one_microtenant(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(credentials=200, microtenants=2, seed=3, policy_rules=10)
    env = cli_env(s.url)
    table = run_cli(["audit"], env)
    assert table.returncode == 0, table.stderr
    assert "By microtenant" in table.stdout and "Scope C" in table.stdout
    csv_out = tmp_path / "f.csv"
    proc = run_cli(["audit", "--format", "csv", "--output", str(csv_out),
                    "--microtenant", "145260601092866314"], env)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(csv_out.read_text(), newline="")))
    assert rows and {r["microtenantId"] for r in rows} == {"145260601092866314"}
    assert {r["kind"] for r in rows} <= set(FINDING_KINDS)
    bad = run_cli(["audit", "--microtenant", "31337"], env)
    assert bad.returncode == 2 and "31337" in bad.stderr
    txt = tmp_path / "t.txt"
    assert run_cli(["audit", "--output", str(txt)], env).returncode == 0
    assert "\x1b[" not in txt.read_text() and "Findings" in txt.read_text()


def test_cli_long_server_pause_stops_with_exit_3(sim_thread, tmp_path: Path) -> None:
    """Case 6 for a read-only job: a 593 s retry-after beyond --max-wait stops it cleanly."""
    s = sim_thread(credentials=50, seed=2, faults="throttle_burst=1@2,retry_after=593")
    out = tmp_path / "a.json"
    proc = run_cli(["audit", "--max-wait", "5", "--format", "json", "--output", str(out)],
                   cli_env(s.url))
    assert proc.returncode == 3, proc.stderr
    assert "593" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
