"""Simulator seeding, speed, the state file, configuration, and the server's lifecycles."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import orjson
import pytest

from bulkcred.sim import SimConfig, SimServer, create_app, serve
from bulkcred.sim.config import parse_rate
from bulkcred.sim.seed import seed_tenant

CID = "216196257331281920"
NOW = 1_790_000_000
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def test_seeding_is_deterministic_for_a_seed() -> None:
    cfg = SimConfig(credentials=500, microtenants=4, policy_rules=10, seed=42)
    one, two = seed_tenant(cfg, NOW), seed_tenant(cfg, NOW)
    assert orjson.dumps(one.snapshot()) == orjson.dumps(two.snapshot())
    other = seed_tenant(SimConfig(credentials=500, microtenants=4, seed=43), NOW)
    assert [c.name for c in other.credentials.values()] != [
        c.name for c in one.credentials.values()
    ]


def test_article_examples_are_seeded_verbatim() -> None:
    tenant = seed_tenant(SimConfig(), NOW)
    assert sorted(tenant.credentials) == [20, 47, 57, 80, 113, 128, 259, 453, 455, 11262]
    wire = tenant.credential_wire(tenant.credentials[259])
    assert wire == {
        "id": "259",
        "modifiedTime": "1681193539",
        "creationTime": "1681193467",
        "modifiedBy": "72057594038071302",
        "name": "test43782389823",
        "description": "8h5KXKVxFOi92gpwy0RUbNGqa",
        "userDomain": "yaYDDsmnke7sclsshifGnfuua.com",
        "userName": "admin@lE54dmi5ytV2JsPejpxTP6jzy.com",
        "credentialType": "USERNAME_PASSWORD",
        "lastCredentialResetTime": "1681193539",
        "microtenantName": "Default",
    }
    scope_c = tenant.credential_wire(tenant.credentials[453])
    assert scope_c["microtenantId"] == "145260601092866314"
    assert scope_c["microtenantName"] == "Scope C" and scope_c["name"] == "key size test"
    assert len({c.secret_sha256 for c in tenant.credentials.values()}) == 10
    default_only = seed_tenant(SimConfig(microtenants=0), NOW)
    assert sorted(default_only.credentials) == [20, 47, 57, 80, 113, 259]
    assert not seed_tenant(SimConfig(examples=False), NOW).credentials


def test_generated_credentials_cover_the_audit_cases() -> None:
    tenant = seed_tenant(SimConfig(credentials=2000, microtenants=3, seed=5), NOW)
    generated = [c for c in tenant.credentials.values() if c.id >= 20000]
    assert [c.id for c in generated] == list(range(20000, 22000))
    assert {c.credential_type for c in generated} == {"USERNAME_PASSWORD", "SSH_KEY", "PASSWORD"}
    assert {c.microtenant_id for c in generated} == {0, *tenant.microtenants}
    assert all(c.creation_time <= c.reset_time <= NOW - 86400 for c in generated)
    assert any(NOW - c.reset_time > 90 * 86400 for c in generated)
    assert any(c.reset_time == c.creation_time for c in generated)
    assert any(not SAFE_NAME.match(c.name) for c in generated)
    keys = [(c.microtenant_id, c.name.casefold()) for c in tenant.credentials.values()]
    assert len(keys) == len(set(keys))  # unique within each microtenant ...
    names = [c.name.casefold() for c in generated]
    assert len(names) > len(set(names))  # ... but repeated across microtenants
    assert all(c.user_name is None for c in generated if c.credential_type == "PASSWORD")


def test_seeding_20k_is_fast_and_listing_100k_is_per_page() -> None:
    start = time.perf_counter()
    seed_tenant(SimConfig(credentials=20_000, microtenants=5), NOW)
    assert time.perf_counter() - start < 2.0
    tenant = seed_tenant(SimConfig(credentials=100_000, microtenants=5), NOW)
    mt = min(tenant.microtenants)
    start = time.perf_counter()
    for _ in range(100):
        total, page = tenant.list_credentials(
            scope=mt, ownership=None, name=None, by_name=False, descending=False,
            start=40_000, count=500,
        )
    assert (time.perf_counter() - start) / 100 < 0.01
    own_and_default = [c.id for c in tenant.credentials.values() if c.microtenant_id in (0, mt)]
    assert total == len(own_and_default)
    assert [c.id for c in page] == sorted(own_and_default)[40_000:40_500]


@pytest.mark.anyio
async def test_state_file_round_trip_keeps_only_secret_hashes(tmp_path: Path) -> None:
    state = tmp_path / "tenant.json"
    cfg = SimConfig(state=state, credentials=20)
    async with SimServer(cfg) as sim, aiohttp.ClientSession() as session:
        form = {"client_id": "sim-client", "client_secret": "sim-secret"}
        async with session.post(f"{sim.url}/signin", data=form) as resp:
            token = (await resp.json())["access_token"]
        body = {"name": "kept", "credentialType": "PASSWORD", "password": "do-not-write-me"}
        async with session.post(
            f"{sim.url}/mgmtconfig/v1/admin/customers/{CID}/credential",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            created = await resp.json()
        before = {c.id: c.secret_sha256 for c in sim.state.credentials.values()}
    raw = state.read_bytes()
    assert b"do-not-write-me" not in raw
    async with SimServer(SimConfig(state=state, credentials=999)) as sim:
        after = {c.id: c.secret_sha256 for c in sim.state.credentials.values()}
        assert after == before and int(created["id"]) in after
        assert sim.state.next_id == int(created["id"]) + 1
    with pytest.raises(ValueError):
        create_app(SimConfig(state=state, customer_id="1"))


def test_in_thread_serves_sync_callers_and_stops_cleanly() -> None:
    with SimServer.in_thread(SimConfig()) as sim:
        with urllib.request.urlopen(f"{sim.url}/_sim/stats") as resp:
            assert json.load(resp)["requests"] == {"read": 0, "write": 0}
        url = sim.url
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/_sim/stats", timeout=2)


def test_in_thread_reports_a_failed_start() -> None:
    with SimServer.in_thread(SimConfig()) as first:
        port = int(first.url.rsplit(":", 1)[1])
        with pytest.raises(OSError):
            with SimServer.in_thread(SimConfig(port=port)):
                pass


@pytest.mark.anyio
async def test_serve_announces_and_saves_state_when_cancelled(tmp_path: Path) -> None:
    urls: list[str] = []
    task = asyncio.create_task(serve(SimConfig(state=tmp_path / "s.json"), urls.append))
    while not urls:
        await asyncio.sleep(0.01)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{urls[0]}/_sim/stats") as resp:
            assert resp.status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (tmp_path / "s.json").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_on_a_signal_in_a_subprocess(tmp_path: Path, signum: int) -> None:
    code = (
        "import asyncio, sys\n"
        "from bulkcred.sim import SimConfig, serve\n"
        "announce = lambda url: print(f'bulkcred sim listening on {url}', flush=True)\n"
        f"asyncio.run(serve(SimConfig(state={str(tmp_path / 'st.json')!r}), announce))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert re.fullmatch(r"bulkcred sim listening on http://127\.0\.0\.1:\d+\n", line), line
        url = line.split()[-1]
        with urllib.request.urlopen(f"{url}/_sim/stats") as resp:
            assert resp.status == 200
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert (tmp_path / "st.json").exists()


def test_config_is_validated_up_front() -> None:
    assert parse_rate("20/10s").limit == 20 and parse_rate("20/10s").window == 10.0
    assert parse_rate("5/250ms").window == 0.25 and parse_rate("10/0.5s").window == 0.5
    for bad in ({"read_rate": "20 per 10s"}, {"write_rate": "0/1s"}, {"host": "0.0.0.0"},
                {"limit_mode": "bucket"}, {"faults": "5xx=3"}, {"token_ttl": 0},
                {"credentials": -1}, {"customer_id": "abc"}):
        with pytest.raises(ValueError):
            SimConfig(**bad)
    with pytest.raises(TypeError):
        SimConfig("127.0.0.1")  # type: ignore[misc]
    assert SimConfig(host="::1").host == "::1"
