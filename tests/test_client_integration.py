"""ZPAClient against the simulator over loopback HTTP: sign-in, paging, PUT, throttling."""

from __future__ import annotations

import hashlib
import socket
from typing import Any

import anyio
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bulkcred.auth import LegacyApiKey, OneApiClientSecret
from bulkcred.client import ZPAClient
from bulkcred.config import Rate
from bulkcred.errors import AuthError, ConnectError, OutcomeUnknown, TransportError
from bulkcred.models import Credential, CredentialSecret, CredentialType, Secret
from bulkcred.retry import RetryPolicy
from bulkcred.sim import SimConfig, SimServer
from bulkcred.transport import AiohttpTransport

from .conftest import sim_get

pytestmark = pytest.mark.anyio

CID = "216196257331281920"
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()


def client(url: str, *, read: str = "400/1s", write: str = "200/1s", **kw: Any) -> ZPAClient:
    kw.setdefault("auth", LegacyApiKey("sim-client", Secret("sim-secret")))
    return ZPAClient(base_url=url, customer_id=CID, read_rate=Rate.parse(read),
                     write_rate=Rate.parse(write), **kw)


async def test_sign_in_and_every_page() -> None:
    async with SimServer(SimConfig(credentials=1234, microtenants=2, seed=1,
                                   read_rate="400/1s")) as sim:
        async with client(sim.url) as c:
            ids = [cr.id async for cr in c.iter_credentials()]
            paged = [cr.id async for page in c.iter_credential_pages(concurrency=4)
                     for cr in page]
            mts = [m async for m in c.iter_microtenants()]
            stats = c.stats()
        truth = {cr["id"] for cr in await sim_get(sim.url, "/_sim/credentials")}
        requests = await sim_get(sim.url, "/_sim/requests")
        sim_stats = await sim_get(sim.url, "/_sim/stats")
    assert sorted(ids) == sorted(truth) and len(ids) == len(set(ids))
    assert sorted(paged) == sorted(truth)
    assert mts[0].id == "0" and len(mts) == 3
    assert stats.sign_ins == sim_stats["signins"] == 1
    lists = [r for r in requests if r["path"].endswith("/credential") and r["method"] == "GET"]
    assert lists and all("pagesize=500" in r["query"] for r in lists)


async def test_put_then_verify_by_listing() -> None:
    async with SimServer(SimConfig(credentials=5, microtenants=1, seed=2)) as sim:
        async with client(sim.url) as c:
            creds = await c.list_credentials()
            target = next(cr for cr in creds if cr.credential_type.secret_field == "password")
            new = "n3w-Passw0rd-" + target.id
            await c.update_credential(target, CredentialSecret(password=Secret(new)))
            again = {cr.id: cr for cr in await c.list_credentials()}
        held = {cr["id"]: cr for cr in await sim_get(sim.url, "/_sim/credentials")}
    assert held[target.id]["secretSha256"] == hashlib.sha256(new.encode()).hexdigest()
    assert again[target.id].name == target.name
    assert (again[target.id].last_credential_reset_time or 0) >= (
        target.last_credential_reset_time or 0)


async def test_throttled_run_loses_nothing() -> None:
    # the server allows 10 writes in 0.5 s; the client is told it may send 40
    async with SimServer(SimConfig(credentials=20, microtenants=0, seed=3,
                                   write_rate="10/0.5s", read_rate="400/1s")) as sim:
        async with client(sim.url, write="40/0.5s") as c:
            creds = await c.list_credentials()
            told: list[tuple[str, float]] = []
            c.on_pause(lambda cls, s: told.append((cls, s)))
            done: list[str] = []

            async def rotate(cred: Any) -> None:
                field = cred.credential_type.secret_field
                secret = (CredentialSecret(password=Secret("pw-" + cred.id)) if field == "password"
                          else CredentialSecret(private_key=Secret(_KEY)))
                await c.update_credential(cred, secret)
                done.append(cred.id)

            async with anyio.create_task_group() as tg:
                for cred in creds:
                    tg.start_soon(rotate, cred)
            stats = c.stats()
        sim_stats = await sim_get(sim.url, "/_sim/stats")
    assert sorted(done) == sorted(cr.id for cr in creds)  # zero lost
    assert stats.throttled == sim_stats["throttled"]["write"] > 0
    assert told and all(cls == "write" for cls, _ in told)
    assert set(sim_stats["writesByCredential"].values()) == {1}  # each applied exactly once


async def test_paced_at_the_server_limit_draws_no_429() -> None:
    async with SimServer(SimConfig(credentials=30, microtenants=0, seed=4,
                                   write_rate="10/0.5s", read_rate="400/1s")) as sim:
        async with client(sim.url, write="10/0.5s") as c:
            creds = await c.list_credentials()
            async with anyio.create_task_group() as tg:
                for cred in creds:
                    tg.start_soon(c.delete_credential, cred.id)
            stats = c.stats()
        sim_stats = await sim_get(sim.url, "/_sim/stats")
    assert stats.throttled == 0 and sim_stats["throttled"]["write"] == 0
    assert sim_stats["maxInWindow"]["write"] <= 10


async def test_oneapi_and_short_lived_tokens() -> None:
    async with SimServer(SimConfig(credentials=20, microtenants=0, seed=5, token_ttl=0.5,
                                   read_rate="400/1s")) as sim:
        truth = len(await sim_get(sim.url, "/_sim/credentials"))
        auth = OneApiClientSecret(f"{sim.url}/oauth2/v1/token", "sim-client", "sim-secret")
        async with client(sim.url, auth=auth, api_prefix="/zpa", read="40/1s") as c:
            counts: list[int] = []

            async def reader() -> None:
                for _ in range(4):
                    counts.append(len(await c.list_credentials()))

            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(reader)
            stats = c.stats()
        sim_stats = await sim_get(sim.url, "/_sim/stats")
    assert counts == [truth] * 32
    assert stats.sign_ins == sim_stats["signins"] >= 2  # renewed as it ran out
    assert stats.responses.get(401, 0) == sim_stats["unauthorized"] == 0


async def test_faults_are_survived_by_idempotent_requests() -> None:
    faults = "5xx=0.2,409=0.1,reset=0.1,seed=7"
    async with SimServer(SimConfig(credentials=30, microtenants=0, seed=6, read_rate="400/1s",
                                   write_rate="200/1s", faults=faults)) as sim:
        async with client(sim.url, retry=RetryPolicy(backoff_base=0.01, backoff_max=0.05)) as c:
            creds = await c.list_credentials()
            got = await c.get_credential(creds[0].id)
            async with anyio.create_task_group() as tg:
                for cred in creds:
                    tg.start_soon(c.delete_credential, cred.id)
            stats = c.stats()
        left = await sim_get(sim.url, "/_sim/credentials")
    assert got.id == creds[0].id and len(creds) == 30 + 6  # the article's examples too
    assert left == []  # every delete landed, including ones whose answer was lost
    assert stats.retries > 0


async def test_refused_key() -> None:
    async with (
        SimServer(SimConfig(credentials=1, microtenants=0)) as sim,
        client(sim.url, auth=LegacyApiKey("sim-client", "wrong-secret")) as c,
    ):
        with pytest.raises(AuthError) as info:
            await c.list_credentials()
    assert "wrong-secret" not in str(info.value) and info.value.status == 401


async def test_a_create_whose_answer_is_lost_is_found_by_name() -> None:
    async with SimServer(SimConfig(credentials=0, microtenants=0, examples=False,
                                   faults="lost=1.0")) as sim:
        async with client(sim.url) as c:
            new = Credential("", "imported-web-01", CredentialType.PASSWORD)
            with pytest.raises(OutcomeUnknown):
                await c.create_credential(new, CredentialSecret(password=Secret("pw-1")))
            found = await c.find_credentials_by_name("imported-web-01")
        held = await sim_get(sim.url, "/_sim/credentials")
    assert len(held) == 1 and [f.id for f in found] == [held[0]["id"]]  # sent once, adopted


async def test_aiohttp_transport_tells_not_sent_from_maybe_sent() -> None:
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with AiohttpTransport() as transport:
        with pytest.raises(ConnectError) as refused:
            await transport.send("POST", f"http://127.0.0.1:{port}/x", params=None,
                                 headers={}, body=b"{}", timeout=5.0)
        assert refused.value.maybe_sent is False and refused.value.path == "/x"
        async with SimServer(SimConfig(credentials=0, microtenants=0, faults="reset=1.0")) as sim:
            ok = await transport.send("GET", f"{sim.url}/_sim/stats", params=None, headers={},
                                      body=None, timeout=5.0)
            assert ok.status == 200 and ok.headers["CONTENT-TYPE"].startswith("application/json")
            assert ok.elapsed > 0 and ok.json()["requests"] == {"read": 0, "write": 0}
            fast = RetryPolicy(backoff_base=0.001, backoff_max=0.01)
            async with client(sim.url, transport=transport, retry=fast) as c:
                with pytest.raises(OutcomeUnknown):  # the server hung up on a create
                    await c.create_credential(Credential("", "x", CredentialType.PASSWORD),
                                              CredentialSecret(password=Secret("pw")))
                with pytest.raises(TransportError) as reset:  # a read is retried, then reported
                    await c.get_credential("1")
            assert reset.value.maybe_sent and not isinstance(reset.value, ConnectError)
            assert c.stats().transport_errors == 1 + 8
