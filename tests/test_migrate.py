"""Migration over loopback against the simulator: moves, the target check, policy
refusals, lost answers reconciled, a crash at every journal boundary, the command line."""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bulkcred.errors import UsageError
from bulkcred.jobs.common import JobContext
from bulkcred.jobs.migrate import MigrateOptions, NameClash, migrate, plan_migration
from bulkcred.jobs.select import parse_selection
from bulkcred.journal import replay
from bulkcred.sim import SimServer
from bulkcred.sim.tenant import Credential as SimCredential
from bulkcred.sim.tenant import PolicyRule as SimRule

from .conftest import cli_env, make_client, run_cli, sim_config, sim_get, sim_post
from .test_crash_resume import Boundaries, Crash

pytestmark = pytest.mark.anyio

SCOPE_C = "145260601092866314"
SCOPE_D = "145260601092866315"
CID = "216196257331281920"


async def run(url: str, o: MigrateOptions, **client_kw: Any) -> Any:
    concurrency = client_kw.pop("concurrency", None)
    async with make_client(url, **client_kw) as client:
        ctx = JobContext(client=client, base_url=url, customer_id=CID, concurrency=concurrency)
        return await migrate(ctx, o)


def opts(tmp: Path, to: str, src: str | None, ids: list[str] | None = None,
         name: str = "m.journal", **kw: Any) -> MigrateOptions:
    sel = parse_selection([f"id={','.join(ids)}"]) if ids else parse_selection([])
    return MigrateOptions(journal=tmp / name, target=to, source=src, selection=sel,
                          report=tmp / f"{name}.report.csv", **kw)


def name_key(name: str) -> str:
    return html.unescape(name).strip().casefold()


async def movable(url: str, src: str, dst: str) -> list[str]:
    """The ids owned by ``src`` whose name is free in ``dst`` (ZPA refuses a name clash)."""
    creds = await sim_get(url, "/_sim/credentials")
    taken = {name_key(c["name"]) for c in creds if c["microtenantId"] == dst}
    return [c["id"] for c in creds if c["microtenantId"] == src and name_key(c["name"]) not in taken]


async def owners(url: str) -> dict[str, str]:
    return {c["id"]: c["microtenantId"] for c in await sim_get(url, "/_sim/credentials")}


#: answers that say the request was not applied, which the client re-sends by itself
NOT_APPLIED = (409, 429, 503)


async def move_posts(url: str) -> Counter[str]:
    """POST .../credential/{id}/move requests the simulator received, by credential id
    (but for those answered with a status that says nothing was applied)."""
    log = await sim_get(url, "/_sim/requests")
    return Counter(r["path"].split("/")[-2] for r in log
                   if r["method"] == "POST" and r["path"].endswith("/move")
                   and r["status"] not in NOT_APPLIED)


def assert_moved_once(state: Any, posts: Counter[str], applied: dict[str, int]) -> None:
    """No credential was moved twice: one applied move each, never more sends than intents."""
    for key in state.items:
        assert posts[key] <= state.states[key].attempts, key
        assert applied.get(key, 0) <= 1, key


async def test_to_default_and_back(sim: SimServer, tmp_path: Path) -> None:
    ids = await movable(sim.url, SCOPE_C, "0")
    assert len(ids) >= 5
    await sim_post(sim.url, "/_sim/stats/reset")
    out = await run(sim.url, opts(tmp_path, "0", SCOPE_C, ids, name="a.journal"))
    assert out.ok and out.done == out.total == len(ids) and not out.resumed
    where = await owners(sim.url)
    assert all(where[i] == "0" for i in ids)
    state = replay(tmp_path / "a.journal")
    assert state.header["kind"] == "migrate"
    assert any(e["name"] == "verified" and set(e["data"]["keys"]) == set(ids)
               for e in state.events)
    log = await sim_get(sim.url, "/_sim/requests")
    moves = [r for r in log if r["method"] == "POST" and r["path"].endswith("/move")]
    assert len(moves) == len(ids)
    # the documented query: the owner, then the target, Default sent as the string "0"
    assert all(r["query"] == f"microtenantId={SCOPE_C}&targetMicrotenantId=0" for r in moves)
    # the plan listed Scope C's own credentials, not the Default ones it inherits
    lists = [r for r in log if r["method"] == "GET" and r["path"].endswith("/credential")]
    assert lists and all("pagesize=500" in r["query"] for r in lists)

    back = await run(sim.url, opts(tmp_path, SCOPE_C, "0", ids, name="b.journal"))
    assert back.ok and back.done == len(ids)
    where = await owners(sim.url)
    assert all(where[i] == SCOPE_C for i in ids)
    stats = await sim_get(sim.url, "/_sim/stats")
    assert stats["throttled"] == {"read": 0, "write": 0}
    assert all(stats["writesByCredential"][i] == 2 for i in ids)
    report = (tmp_path / "b.journal.report.csv").read_text()
    assert report.count(",done,") == len(ids)


async def test_without_from_moves_each_from_where_it_is(sim: SimServer, tmp_path: Path) -> None:
    c_ids = (await movable(sim.url, SCOPE_C, SCOPE_D))[:2]
    zero = (await movable(sim.url, "0", SCOPE_D))[:2]
    o = opts(tmp_path, SCOPE_D, None, c_ids + zero)
    plan = await _plan(sim.url, o)
    assert {c.scope for c in plan.credentials} == {SCOPE_C, "0"}
    out = await run(sim.url, o)
    assert out.ok and out.done == 4
    where = await owners(sim.url)
    assert all(where[i] == SCOPE_D for i in c_ids + zero)
    log = await sim_get(sim.url, "/_sim/requests")
    queries = {r["path"].split("/")[-2]: r["query"] for r in log if r["path"].endswith("/move")}
    assert all(queries[i].startswith(f"microtenantId={SCOPE_C}&") for i in c_ids)
    assert all(queries[i].startswith("microtenantId=0&") for i in zero)


async def _plan(url: str, o: MigrateOptions) -> Any:
    async with make_client(url) as client:
        return await plan_migration(JobContext(client=client, base_url=url, customer_id=CID), o)


@pytest.mark.parametrize("flag,to,src", [("--to", "999", SCOPE_C), ("--from", "0", "12345")])
async def test_a_missing_microtenant_is_named_and_nothing_is_sent(
        sim: SimServer, tmp_path: Path, flag: str, to: str, src: str) -> None:
    await sim_post(sim.url, "/_sim/stats/reset")
    o = opts(tmp_path, to, src)
    with pytest.raises(UsageError) as info:
        await run(sim.url, o)
    missing = to if flag == "--to" else src
    assert f"{flag} {missing}" in str(info.value) and "Scope C" in str(info.value)
    assert not o.journal.exists()
    assert (await sim_get(sim.url, "/_sim/stats"))["requests"]["write"] == 0


async def test_same_source_and_target_is_a_usage_error(sim: SimServer, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="nothing to move"):
        await run(sim.url, opts(tmp_path, SCOPE_C, SCOPE_C))


async def test_policy_references_are_predicted_and_refusals_name_the_rules(
        sim: SimServer, tmp_path: Path) -> None:
    ids = await movable(sim.url, SCOPE_C, "0")
    blocked, inherited = ids[0], (await movable(sim.url, "0", SCOPE_D))[0]
    tenant = sim.state
    # one rule in the credential's own microtenant, and two on a Default credential in
    # another microtenant that inherits it: both kinds must be found at planning
    tenant.add_rule(SimRule(id=tenant.allocate_id(), name="inject-jump-hosts",
                            credential_id=int(blocked), microtenant_id=int(SCOPE_C),
                            creation_time=1, modified_by="1"))
    for rule_name in ("vnc-d-1", "vnc-d-2"):
        tenant.add_rule(SimRule(id=tenant.allocate_id(), name=rule_name,
                                credential_id=int(inherited), microtenant_id=int(SCOPE_D),
                                creation_time=1, modified_by="1"))
    plan = await _plan(sim.url, opts(tmp_path, "0", SCOPE_C, ids))
    assert plan.blocked == {blocked: ["inject-jump-hosts"]}
    plan2 = await _plan(sim.url, opts(tmp_path, SCOPE_D, "0", [inherited]))
    assert plan2.blocked == {inherited: ["vnc-d-1", "vnc-d-2"]}

    o = opts(tmp_path, "0", SCOPE_C, ids)
    out = await run(sim.url, o)
    assert out.failed == 1 and out.done == len(ids) - 1 and not out.ok
    assert out.refused == {blocked: ["inject-jump-hosts"]}
    state = replay(o.journal)
    failed = state.states[blocked].last_outcome
    assert failed["http"] == 400 and failed["errorId"] == "credential.in.use"
    assert "inject-jump-hosts" in failed["reason"] and "--retry-failed" in failed["reason"]
    assert (await owners(sim.url))[blocked] == SCOPE_C
    assert "inject-jump-hosts" in (tmp_path / "m.journal.report.csv").read_text()

    # detach the rule, resume with --retry-failed: it moves, and nothing else is re-sent
    tenant.delete_rule(str(next(r.id for r in tenant.rules.values()
                                if r.name == "inject-jump-hosts")), int(SCOPE_C))
    again = await run(sim.url, opts(tmp_path, "0", SCOPE_C, ids, retry_failed=True))
    assert again.ok and again.resumed and again.summary.done == 1
    assert (await owners(sim.url))[blocked] == "0"
    assert_moved_once(replay(o.journal), await move_posts(sim.url),
                      (await sim_get(sim.url, "/_sim/stats"))["writesByCredential"])


def add_namesake(tenant: Any, name: str, mt: int) -> str:
    """A credential of ``name`` in microtenant ``mt`` (the simulator's own state); its id."""
    ident = tenant.allocate_id()
    tenant.load_credentials([SimCredential(
        id=ident, name=name, credential_type="PASSWORD", microtenant_id=mt,
        secret_sha256="0", creation_time=1, reset_time=1, modified_by="1")])
    return str(ident)


async def test_name_clashes_in_the_target_are_predicted_and_explained(
        sim: SimServer, tmp_path: Path) -> None:
    ids = await movable(sim.url, SCOPE_C, "0")
    names = {c["id"]: c["name"] for c in await sim_get(sim.url, "/_sim/credentials")}
    clash = next(i for i in ids if "-" in names[i])
    name = names[clash]
    # another case and an entity for a character: still the same name to ZPA
    other = add_namesake(sim.state, name.upper().replace("-", "&#x2d;"), 0)
    o = opts(tmp_path, "0", SCOPE_C, ids)
    plan = await _plan(sim.url, o)
    assert plan.clashes == {clash: NameClash(name, other)}
    assert plan.refusals == 1 and len(plan.credentials) == len(ids)  # still planned
    assert dict(plan.items())[clash]["clashesWith"] == other

    out = await run(sim.url, o)
    assert not out.ok and out.failed == 1 and out.done == len(ids) - 1
    assert out.clashes == {clash: NameClash(name, other)} and out.refused == {}
    failed = replay(o.journal).states[clash].last_outcome
    assert failed["errorId"] == "resource.already.exist"
    assert f"rename it or credential {other} of the same name" in failed["reason"]
    assert "--retry-failed" in failed["reason"]

    # the namesake removed from the target: --retry-failed moves it
    sim.state.delete(other, 0)
    again = await run(sim.url, opts(tmp_path, "0", SCOPE_C, ids, retry_failed=True))
    assert again.ok and again.clashes == {} and (await owners(sim.url))[clash] == "0"


async def test_the_final_listing_checks_the_moves_of_earlier_runs(
        sim: SimServer, tmp_path: Path) -> None:
    ids = (await movable(sim.url, SCOPE_C, "0"))[:4]
    first = await run(sim.url, opts(tmp_path, "0", SCOPE_C, ids, name="a.journal"))
    assert first.ok and first.done == 4
    # since then: two moved back by another job, one deleted, one left in the target
    back = await run(sim.url, opts(tmp_path, SCOPE_C, "0", ids[:2], name="b.journal"))
    assert back.ok
    sim.state.delete(ids[2], 0)

    again = await run(sim.url, opts(tmp_path, "0", SCOPE_C, ids, name="a.journal"))
    assert again.resumed and not again.ok
    assert again.done == 1 and again.failed == 3
    assert {k: (m.id if m else None) for k, m in again.unconfirmed.items()} == {
        ids[0]: SCOPE_C, ids[1]: SCOPE_C, ids[2]: None}
    state = replay(tmp_path / "a.journal")
    assert state.status(ids[3]) == "done"
    back_reason = state.states[ids[0]].last_outcome["reason"]
    assert state.states[ids[0]].last_outcome["errorId"] == "bulkcred.unconfirmed"
    assert f"it is in microtenant {SCOPE_C} (Scope C) again" in back_reason
    assert "nor does the listing" in state.states[ids[2]].last_outcome["reason"]

    # as the reason says: --retry-failed moves the two back again, once each
    fixed = await run(sim.url, opts(tmp_path, "0", SCOPE_C, ids, name="a.journal",
                                    retry_failed=True))
    assert fixed.done == 3 and fixed.failed == 1 and not fixed.unconfirmed
    where = await owners(sim.url)
    assert [where.get(i) for i in ids] == ["0", "0", None, "0"]
    writes = (await sim_get(sim.url, "/_sim/stats"))["writesByCredential"]
    assert [writes[i] for i in ids[:2]] == [3, 3]  # there, back, there again


async def test_lost_answers_are_reconciled_not_resent(tmp_path: Path) -> None:
    async with SimServer(sim_config(credentials=60, microtenants=2, seed=12,
                                    faults="lost=0.35,seed=3")) as s:
        ids = await movable(s.url, SCOPE_C, "0")
        o = opts(tmp_path, "0", SCOPE_C, ids)
        out = await run(s.url, o)
        assert out.ok and out.done == len(ids), out
        state = replay(o.journal)
        reconciled = [k for k in state.items
                      if (state.states[k].last_outcome or {}).get("data", {}).get("reconciled")]
        stats = await sim_get(s.url, "/_sim/stats")
        assert stats["faultsInjected"]["lost"] >= 3 and len(reconciled) >= 3
        assert all(stats["writesByCredential"][k] == 1 for k in ids)
        assert_moved_once(state, await move_posts(s.url), stats["writesByCredential"])
        assert all(v == "0" for k, v in (await owners(s.url)).items() if k in ids)


async def test_unknown_outcomes_of_every_kind_end_in_the_target(tmp_path: Path) -> None:
    """Resets and 5xx before applying, answers lost after: each move is settled by a read."""
    async with SimServer(sim_config(credentials=60, microtenants=2, seed=13,
                                    faults="reset=0.1,5xx=0.1,409=0.05,lost=0.1,seed=5")) as s:
        ids = await movable(s.url, SCOPE_C, "0")
        o = opts(tmp_path, "0", SCOPE_C, ids)
        out = await run(s.url, o)
        if not out.ok:  # an item can stay uncertain after three unknowns in a row
            out = await run(s.url, o)
        assert out.ok and out.done == len(ids)
        stats = await sim_get(s.url, "/_sim/stats")
        assert stats["faultsInjected"]["reset"] and stats["faultsInjected"]["lost"]
        assert_moved_once(replay(o.journal), await move_posts(s.url),
                          stats["writesByCredential"])
        assert all(v == "0" for k, v in (await owners(s.url)).items() if k in ids)


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
async def test_crash_at_every_boundary_then_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after: bool) -> None:
    ids = ["453", "128", "455", "11262"]  # Scope C's examples; their names are free in Default
    with monkeypatch.context() as m:
        counter = Boundaries(m, None, after)
        async with SimServer(sim_config(seed=1)) as s:
            assert (await run(s.url, opts(tmp_path, "0", SCOPE_C, ids, name="count"))).ok
        total = counter.n
    assert total >= 1 + 4 * 2  # the plan, and an intent and an outcome per item
    reconciled = 0
    for at in range(1, total + 1):
        o = opts(tmp_path, "0", SCOPE_C, ids, name=f"at{at}")
        async with SimServer(sim_config(seed=1)) as s:
            with monkeypatch.context() as m:
                Boundaries(m, at, after)
                with pytest.raises(Crash):
                    await run(s.url, o)
            out = await run(s.url, o)  # the same command again
            assert out.ok and out.done == 4, (at, out)
            where = await owners(s.url)
            assert all(where[i] == "0" for i in ids), at
            stats = await sim_get(s.url, "/_sim/stats")
            state = replay(o.journal)
            assert_moved_once(state, await move_posts(s.url), stats["writesByCredential"])
            reconciled += sum(1 for st in state.states.values()
                              if (st.last_outcome or {}).get("data", {}).get("reconciled"))
    # dying between a move and its outcome leaves a move applied but unrecorded: the
    # resumed run finds the credential in the target instead of moving it again
    if not after:
        assert reconciled >= 1


@pytest.mark.parametrize("concurrency", [1, 16])
async def test_result_does_not_depend_on_concurrency(tmp_path: Path, concurrency: int) -> None:
    async with SimServer(sim_config(credentials=40, microtenants=1, seed=21,
                                    faults="latency=5ms")) as s:
        ids = await movable(s.url, SCOPE_C, "0")
        out = await run(s.url, opts(tmp_path, "0", SCOPE_C, ids), concurrency=concurrency)
        assert out.ok and out.done == len(ids)
        assert all(v == "0" for k, v in (await owners(s.url)).items() if k in ids)


# --- the command line ------------------------------------------------------------------


def _migrate(tmp: Path, *args: str) -> list[str]:
    return ["migrate", "--journal", str(tmp / "j.journal"), *args]


def test_cli_dry_run_sends_nothing_and_names_blocked(sim_thread, tmp_path: Path) -> None:
    import urllib.request

    import orjson

    s = sim_thread(credentials=30, microtenants=2, seed=4, policy_rules=8)
    proc = run_cli(_migrate(tmp_path, "--from", SCOPE_C, "--to", "0", "--dry-run"),
                   cli_env(s.url))
    assert proc.returncode == 0, proc.stderr
    assert "would move to Default (0)" in proc.stdout and "nothing was sent" in proc.stdout
    rules: dict[int, list[str]] = {}
    for r in s.state.rules.values():
        if r.microtenant_id == int(SCOPE_C):
            rules.setdefault(r.credential_id, []).append(r.name)
    assert rules
    for cid, names in rules.items():
        assert f"{cid}  rules: {', '.join(sorted(names))}" in proc.stdout
    stats = orjson.loads(urllib.request.urlopen(s.url + "/_sim/stats").read())
    assert stats["requests"]["write"] == 0
    assert not (tmp_path / "j.journal").exists()


def test_cli_missing_target_exits_2(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(seed=1)
    proc = run_cli(_migrate(tmp_path, "--to", "424242", "--yes"), cli_env(s.url))
    assert proc.returncode == 2, proc.stderr
    assert "--to 424242" in proc.stderr and "does not exist" not in proc.stdout
    assert not (tmp_path / "j.journal").exists()
    bad = run_cli(_migrate(tmp_path, "--to", "abc", "--yes"), cli_env(s.url))
    assert bad.returncode == 2 and "--to" in bad.stderr


def test_cli_without_terminal_or_yes_refuses(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(seed=1)
    proc = run_cli(_migrate(tmp_path, "--from", SCOPE_C, "--to", "0"), cli_env(s.url))
    assert proc.returncode == 2 and "--yes" in proc.stderr
    assert not (tmp_path / "j.journal").exists()


def test_cli_refusals_exit_1_and_resume_finishes(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(seed=1)
    tenant = s.state
    tenant.add_rule(SimRule(id=tenant.allocate_id(), name="rdp-admins", credential_id=128,
                            microtenant_id=int(SCOPE_C), creation_time=1, modified_by="1"))
    env = cli_env(s.url)
    args = _migrate(tmp_path, "--from", SCOPE_C, "--to", "0", "--yes")
    proc = run_cli(args, env)
    assert proc.returncode == 1, proc.stderr
    assert "moved 3 of 4 credentials to Default (0)" in proc.stdout
    assert "128  rules: rdp-admins" in proc.stdout
    dry = run_cli([*args, "--dry-run"], env)
    assert dry.returncode == 0 and "3 done, 1 failed" in dry.stdout
    assert "nothing was sent" in dry.stdout
    again = run_cli(args, env)  # failed items stay failed unless asked
    assert again.returncode == 1 and "(resumed)" in again.stdout
    rule_id = next(r.id for r in tenant.rules.values() if r.name == "rdp-admins")
    tenant.delete_rule(str(rule_id), int(SCOPE_C))
    done = run_cli([*args, "--retry-failed"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "moved 4 of 4" in done.stdout
    status = run_cli(["status", str(tmp_path / "j.journal")], env)
    assert "done:      4" in status.stdout


EXAMPLES = ["128", "453", "455", "11262"]  # Scope C's own credentials with seed=1


def test_cli_plan_headings_and_name_clashes(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(seed=1)
    tenant = s.state
    tenant.add_rule(SimRule(id=tenant.allocate_id(), name="rdp-admins", credential_id=128,
                            microtenant_id=int(SCOPE_C), creation_time=1, modified_by="1"))
    other = add_namesake(tenant, "TEST KEY SIZE 1", 0)  # 455 is "Test Key Size 1"
    env = cli_env(s.url)
    args = _migrate(tmp_path, "--from", SCOPE_C, "--to", "0", "--yes")
    dry = run_cli([*args, "--dry-run"], env)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    # one source: named, its count not repeated after it
    assert lines[0] == f"dry run: 4 credentials would move to Default (0) from Scope C ({SCOPE_C})"
    refusals = lines.index("expected refusals: 2 of the 4 (they are sent all the same: fix the"
                           " cause first, or afterwards and run again with --retry-failed)")
    clash_head = next(i for i, line in enumerate(lines) if "1 will be refused: a credential"
                      " of the same name exists in the target, Default (0)" in line)
    listed = lines.index("credentials in the plan (4):")
    assert refusals < clash_head < listed
    assert lines[clash_head + 1].split() == ["455", "Test", "Key", "Size", "1", "(same",
                                             "name", "as", f"{other})"]
    assert "128  rules: rdp-admins" in "\n".join(lines[refusals:listed])
    # under its own heading, every planned credential (the refused ones too)
    assert [line.split()[0] for line in lines[listed + 1:listed + 5]] == EXAMPLES

    run = run_cli(args, env)
    assert run.returncode == 1, run.stderr
    assert "moved 2 of 4 credentials to Default (0)" in run.stdout
    assert ("1 refused because a credential of the same name exists in Default (0) (rename"
            " one of the two, then run again with --retry-failed):") in run.stdout
    assert f"455  Test Key Size 1  (same name as {other})" in run.stdout
    assert "128  rules: rdp-admins" in run.stdout


def test_cli_resume_reports_moves_undone_since_and_exits_1(sim_thread, tmp_path: Path
                                                           ) -> None:
    s = sim_thread(seed=1)
    env = cli_env(s.url)
    args = _migrate(tmp_path, "--from", SCOPE_C, "--to", "0", "--yes")
    assert run_cli(args, env).returncode == 0
    back = run_cli(["migrate", "--journal", str(tmp_path / "back.journal"), "--from", "0",
                    "--to", SCOPE_C, "--select", f"id={','.join(EXAMPLES)}", "--yes"], env)
    assert back.returncode == 0, back.stdout + back.stderr
    again = run_cli(args, env)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "moved 0 of 4 credentials to Default (0) (resumed)" in again.stdout
    assert "4 that the journal records as moved are not in Default (0)" in again.stdout
    assert (f"4 are in Scope C ({SCOPE_C}) again, where they were moved from:"
            f" {', '.join(EXAMPLES)}") in again.stdout
