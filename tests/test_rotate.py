"""Rotation over loopback against the simulator: the invariant, selection, faults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bulkcred.jobs.common import JobContext
from bulkcred.jobs.rotate import RotateOptions, rotate
from bulkcred.jobs.select import parse_selection
from bulkcred.journal import replay
from bulkcred.secrets import read_sink
from bulkcred.sim import SimServer

from .conftest import make_client, secret_digest, sim_config, sim_get, sim_post

pytestmark = pytest.mark.anyio


def opts(tmp: Path, **kw: Any) -> RotateOptions:
    kw.setdefault("journal", tmp / "j.journal")
    kw.setdefault("secrets_out", tmp / "secrets.jsonl")
    return RotateOptions(**kw)


async def run(url: str, o: RotateOptions, *, concurrency: int | None = None,
              **client_kw: Any) -> Any:
    async with make_client(url, **client_kw) as client:
        ctx = JobContext(client=client, base_url=url, customer_id="216196257331281920",
                         concurrency=concurrency)
        result = await rotate(ctx, o)
        return result, client.stats()


async def assert_invariant(url: str, o: RotateOptions) -> dict[str, Any]:
    """For every planned credential, ZPA holds the last secret the sink recorded (or,
    where the sink records none because ZPA refused every one, the credential was never
    written), and no credential was written more often than its journal intents explain
    (every request, retries included, journals an intent first)."""
    held = {c["id"]: c for c in await sim_get(url, "/_sim/credentials")}
    last = read_sink(o.secrets_out)
    state = replay(o.journal)
    for key in state.items:
        if key in last:
            assert held[key]["secretSha256"] == secret_digest(last[key]), key
        else:
            assert state.status(key) == "failed" and held[key]["puts"] == 0, key
        assert held[key]["puts"] <= state.states[key].attempts, key
    return held


async def test_rotates_every_credential_once_and_verifies(sim: SimServer, tmp_path: Path) -> None:
    o = opts(tmp_path)
    result, stats = await run(sim.url, o)
    total = len(await sim_get(sim.url, "/_sim/credentials"))
    assert result.total == total and result.done == total and result.ok
    assert result.failed == 0 and result.uncertain == 0 and result.unconfirmed == []
    held = await assert_invariant(sim.url, o)
    assert all(c["puts"] == 1 for c in held.values())
    simstats = await sim_get(sim.url, "/_sim/stats")
    assert simstats["throttled"] == {"read": 0, "write": 0}
    state = replay(o.journal)
    assert state.counts()["done"] == total
    assert any(e["name"] == "verified" for e in state.events)


async def test_full_object_put_keeps_metadata(sim: SimServer, tmp_path: Path) -> None:
    before = {c["id"]: c for c in await sim_get(sim.url, "/_sim/credentials")}
    async with make_client(sim.url) as c:
        listed = {x.id: x async for x in c.iter_credentials()}
    o = opts(tmp_path, selection=parse_selection(["id=259,11262"]))
    result, _ = await run(sim.url, o)
    assert result.done == 2
    async with make_client(sim.url) as c:
        after = {x.id: x async for x in c.iter_credentials()}
    for cid in ("259", "11262"):
        a, b = listed[cid], after[cid]
        assert (a.name, a.user_name, a.user_domain, a.description, a.scope) == \
               (b.name, b.user_name, b.user_domain, b.description, b.scope)
        assert b.last_credential_reset_time > a.last_credential_reset_time
    held = {c["id"]: c for c in await sim_get(sim.url, "/_sim/credentials")}
    for cid in ("259", "11262"):
        assert held[cid]["secretSha256"] != before[cid]["secretSha256"]


async def test_selection_and_microtenant_scope(sim: SimServer, tmp_path: Path) -> None:
    creds = await sim_get(sim.url, "/_sim/credentials")
    mt = "145260601092866314"
    want = {c["id"] for c in creds if c["microtenantId"] == mt and c["credentialType"] == "SSH_KEY"}
    assert want
    o = opts(tmp_path, microtenant=mt, selection=parse_selection(["type=SSH_KEY"]))
    result, _ = await run(sim.url, o)
    assert set(replay(o.journal).items) == want
    assert result.done == len(want)
    await assert_invariant(sim.url, o)
    last = read_sink(o.secrets_out)
    for key in want:
        pem = last[key].private_key.reveal()
        assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    # the public key rides along in the sink for the owners to install
    lines = o.secrets_out.read_text().splitlines()
    assert all('"publicKey":"ssh-rsa ' in line for line in lines)


async def test_default_microtenant_sent_as_zero(sim: SimServer, tmp_path: Path) -> None:
    """Case 13: Default is a real scope, sent as the string "0"."""
    await sim_post(sim.url, "/_sim/stats/reset")
    o = opts(tmp_path, microtenant="0", selection=parse_selection(["type=PASSWORD,USERNAME_PASSWORD"]))
    result, _ = await run(sim.url, o)
    assert result.done > 0
    log = await sim_get(sim.url, "/_sim/requests")
    puts = [r for r in log if r["method"] == "PUT"]
    assert puts and all("microtenantId=0" in r["query"] for r in puts)
    held = {c["id"]: c for c in await sim_get(sim.url, "/_sim/credentials")}
    assert all(held[k]["microtenantId"] == "0" for k in replay(o.journal).items)


async def test_resume_is_the_same_command(sim: SimServer, tmp_path: Path) -> None:
    o = opts(tmp_path)
    first, _ = await run(sim.url, o)
    again, _ = await run(sim.url, o)
    assert again.resumed and again.done == first.done and again.summary.done == 0
    held = await assert_invariant(sim.url, o)
    assert all(c["puts"] == 1 for c in held.values())


async def test_a_different_selection_is_refused(sim: SimServer, tmp_path: Path) -> None:
    from bulkcred.errors import JournalMismatch

    await run(sim.url, opts(tmp_path, selection=parse_selection(["type=PASSWORD"])))
    with pytest.raises(JournalMismatch) as info:
        await run(sim.url, opts(tmp_path, selection=parse_selection(["type=SSH_KEY"])))
    assert "spec" in str(info.value) or "select" in str(info.value)


@pytest.mark.parametrize("concurrency", [1, 8, 64])
async def test_result_does_not_depend_on_concurrency(tmp_path: Path, concurrency: int) -> None:
    """Case 10: 1, 8 and 64 in flight give the same final state and no lost row."""
    async with SimServer(sim_config(credentials=30, microtenants=2, seed=11,
                                    faults="latency=5ms")) as s:
        o = opts(tmp_path)
        result, _ = await run(s.url, o, concurrency=concurrency)
        assert result.ok and result.done == result.total == 40
        held = await assert_invariant(s.url, o)
        assert all(c["puts"] == 1 for c in held.values())


async def test_no_row_is_lost_under_faults(tmp_path: Path) -> None:
    """Case 11: 5xx, 409s, resets and lost answers; every row ends done or failed."""
    async with SimServer(sim_config(
            credentials=50, microtenants=2, seed=5,
            faults="5xx=0.1,409=0.05,reset=0.05,lost=0.05,seed=9")) as s:
        o = opts(tmp_path)
        result, stats = await run(s.url, o)
        state = replay(o.journal)
        counts = state.counts()
        assert counts["pending"] == 0 and counts["uncertain"] == 0
        assert counts["done"] + counts["failed"] == len(state.items) == 60
        for key in state.keys_in("failed"):
            out = state.states[key].last_outcome
            assert out["reason"], key
        await assert_invariant(s.url, o)
        assert stats.retries > 0


async def test_server_throttling_is_absorbed(tmp_path: Path) -> None:
    """Case 1: a burst of 429s is waited out, counted and does not fail the job."""
    async with SimServer(sim_config(credentials=10, microtenants=1, seed=2,
                                    faults="throttle_burst=3,retry_after=1")) as s:
        o = opts(tmp_path)
        result, stats = await run(s.url, o)
        assert result.ok
        assert stats.throttled >= 1
        await assert_invariant(s.url, o)


async def test_token_expiry_mid_job(tmp_path: Path) -> None:
    """Case 9: tokens that live 1 s; the job signs in again and loses nothing."""
    async with SimServer(sim_config(credentials=30, microtenants=1, seed=4, token_ttl=1.0,
                                    write_rate="20/1s")) as s:
        o = opts(tmp_path)
        result, stats = await run(s.url, o, write="20/1s")
        assert result.ok and result.done == 40
        simstats = await sim_get(s.url, "/_sim/stats")
        # ~2 s of writes with 1 s tokens: a few sign-ins, never one per request
        assert 2 <= simstats["signins"] <= 8
        await assert_invariant(s.url, o)


async def test_from_file_secrets_are_the_ones_zpa_holds(sim: SimServer, tmp_path: Path) -> None:
    from bulkcred.secrets import generate_ssh_key

    pem, _ = generate_ssh_key()
    (tmp_path / "k.pem").write_text(pem.reveal())
    csv = tmp_path / "new.csv"
    csv.write_text(
        "id,name,microtenantId,password,privateKeyFile\r\n"
        "259,,,Correct-Horse-Battery-1,\r\n"
        ",test-test-test-1,145260601092866314,\"pa,ss\"\"word-2\",\r\n"
        "47,,,,k.pem\r\n", encoding="utf-8-sig")
    o = opts(tmp_path, from_file=csv)
    result, _ = await run(sim.url, o)
    assert result.ok and result.done == 3
    assert set(replay(o.journal).items) == {"259", "11262", "47"}
    held = await assert_invariant(sim.url, o)
    import hashlib

    assert held["259"]["secretSha256"] == hashlib.sha256(b"Correct-Horse-Battery-1").hexdigest()
    assert held["11262"]["secretSha256"] == hashlib.sha256(b'pa,ss"word-2').hexdigest()
    assert held["47"]["secretSha256"] == hashlib.sha256(pem.reveal().encode()).hexdigest()


@pytest.mark.parametrize("body,line,needle", [
    ("id,password\n999999,x-password-1\n", 2, "no selected credential has id"),
    ("id,password\n47,x-password-1\n", 2, "SSH_KEY credential"),
    ("id,privateKey\n259,abc\n", 2, "give a password"),
    ("id,password\n259,a-password-1\n259,a-password-2\n", 3, "named twice"),
    ("id,pasword\n259,x\n", 1, "did you mean 'password'"),
    ("id,privateKeyFile\n47,missing.pem\n", 2, "cannot read the key file"),
])
async def test_from_file_errors_name_the_line(sim: SimServer, tmp_path: Path, body: str,
                                              line: int, needle: str) -> None:
    from bulkcred.errors import InputError

    csv = tmp_path / "bad.csv"
    csv.write_text(body)
    await sim_post(sim.url, "/_sim/stats/reset")
    with pytest.raises(InputError) as info:
        await run(sim.url, opts(tmp_path, from_file=csv))
    assert info.value.line == line and needle in str(info.value)
    assert (await sim_get(sim.url, "/_sim/stats"))["requests"]["write"] == 0
    assert not (tmp_path / "j.journal").exists()


async def test_a_refused_secret_is_withdrawn_from_the_sink(tmp_path: Path) -> None:
    """A PUT ZPA refused leaves the sink naming the secret ZPA still has, not the new one."""
    async with SimServer(sim_config(credentials=20, microtenants=1, seed=3,
                                    faults="409=0.8,seed=3")) as s:
        o = opts(tmp_path)
        async with make_client(s.url, retry=__import__("bulkcred.retry", fromlist=["x"])
                               .RetryPolicy(max_attempts=1, waits=False)) as client:
            ctx = JobContext(client=client, base_url=s.url, customer_id="216196257331281920")
            result = await rotate(ctx, o)
        assert result.failed > 0
        state = replay(o.journal)
        lines = o.secrets_out.read_text().splitlines()
        assert sum('"void":true' in line for line in lines) >= result.failed
        await assert_invariant(s.url, o)
        # asked again, the failed ones get a fresh secret and the invariant still holds
        o2 = RotateOptions(journal=o.journal, secrets_out=o.secrets_out, retry_failed=True)
        await sim_post(s.url, "/_sim/faults", {"spec": ""})
        result, _ = await run(s.url, o2)
        assert result.ok
        await assert_invariant(s.url, o2)
        assert state.counts()["failed"] == result.summary.done


async def test_an_edit_made_during_the_job_is_not_reverted(tmp_path: Path) -> None:
    """The PUT carries the object as it stands when it is sent, not as planned."""
    async with SimServer(sim_config(credentials=10, microtenants=1, seed=3,
                                    write_rate="20/1s")) as s:
        o = opts(tmp_path, selection=parse_selection(["id=259"]))
        async with make_client(s.url) as c:
            ctx = JobContext(client=c, base_url=s.url, customer_id="216196257331281920")
            from bulkcred.jobs.rotate import plan_rotation

            plan = await plan_rotation(ctx, o)
            cred = plan.credentials[0]
            # another admin renames it between the plan and the PUT
            from bulkcred.models import CredentialSecret, Secret

            await c.update_credential(cred.with_changes(description="edited by alice",
                                                        user_name="alice"),
                                      CredentialSecret(password=Secret("alice-sets-this-1")))
            result = await rotate(ctx, o)
        assert result.ok
        async with make_client(s.url) as c:
            now = await c.get_credential("259", microtenant_id="0")
        assert now.description == "edited by alice" and now.user_name == "alice"
        held = {c["id"]: c for c in await sim_get(s.url, "/_sim/credentials")}
        assert held["259"]["secretSha256"] == secret_digest(read_sink(o.secrets_out)["259"])
        assert held["259"]["puts"] == 2  # alice's and the rotation's
