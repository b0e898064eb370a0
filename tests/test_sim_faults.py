"""The simulator's rate limits, fault injection and /_sim/ endpoints, over real HTTP."""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import aiohttp
import pytest

from bulkcred.sim import FaultConfig, SimConfig, SimServer, parse_faults

CID = "216196257331281920"
FAST = {"read_rate": "100000/1s", "write_rate": "100000/1s"}
TOO_MANY = {
    "exception": "invalid.toomanyrequests",
    "id": "invalid.toomanyrequests",
    "reason": "Exceeded the number of requests allowed.",
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


class Api:
    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        self.session, self.url, self.token = session, url, token
        self.base = f"{url}/mgmtconfig/v1/admin/customers/{CID}/credential"

    async def request(self, method: str, tail: str = "", **kw: Any) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.session.request(method, self.base + tail, headers=headers, **kw) as resp:
            raw = await resp.read()
            return resp.status, (json.loads(raw) if raw else None), resp.headers

    async def sim(self, what: str, body: Any = None) -> Any:
        method = "GET" if body is None else "POST"
        async with self.session.request(method, f"{self.url}/_sim/{what}", json=body) as resp:
            return await resp.json() if resp.status == 200 else resp.status


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[Api]:
    async with SimServer(SimConfig(**{**FAST, **overrides})) as sim:
        # force_close: a dropped connection must not be retried on a pooled one.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            form = {"client_id": "sim-client", "client_secret": "sim-secret"}
            async with session.post(f"{sim.url}/signin", data=form) as resp:
                token = (await resp.json())["access_token"]
            yield Api(session, sim.url, token)


PASSWORD_BODY = {"name": "trial01", "credentialType": "USERNAME_PASSWORD",
                 "userName": "Zscaler", "password": "rotated"}


# ---- rate limits ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_sliding_limit_answers_429_with_retry_after_and_counts_exactly() -> None:
    async with running(read_rate="3/1s", write_rate="2/1s") as api:
        answers = [await api.request("GET") for _ in range(5)]
        assert [a[0] for a in answers] == [200, 200, 200, 429, 429]
        status, body, headers = answers[3]
        assert body == TOO_MANY and headers["retry-after"] == "1s"
        writes = [await api.request("PUT", "/57", json=PASSWORD_BODY) for _ in range(3)]
        assert [w[0] for w in writes] == [204, 204, 429]
        stats = await api.sim("stats")
        assert stats["requests"] == {"read": 5, "write": 3}
        assert stats["throttled"] == {"read": 2, "write": 1}
        assert stats["maxInWindow"] == {"read": 3, "write": 2}
        assert stats["writesByCredential"] == {"57": 2}


@pytest.mark.anyio
async def test_time_scaled_window_gives_fractional_retry_after_and_rejects_take_no_slot() -> None:
    async with running(read_rate="2/300ms") as api:
        first = time.monotonic()
        assert [(await api.request("GET"))[0] for _ in range(2)] == [200, 200]
        status, _, headers = await api.request("GET")
        assert status == 429
        match = re.fullmatch(r"(\d+(?:\.\d+)?)s", headers["retry-after"])
        assert match and 0 < float(match.group(1)) <= 0.3
        # Hammering while throttled must not push the window out.
        for _ in range(5):
            assert (await api.request("GET"))[0] == 429
        await asyncio.sleep(max(0.0, first + 0.32 - time.monotonic()))
        assert [(await api.request("GET"))[0] for _ in range(3)] == [200, 200, 429]
        stats = await api.sim("stats")
        assert stats["maxInWindow"]["read"] == 2 and stats["throttled"]["read"] == 7


@pytest.mark.anyio
async def test_fixed_window_opens_at_first_call_and_meter_sees_the_boundary_burst() -> None:
    async with running(read_rate="3/400ms", limit_mode="fixed") as api:
        start = time.monotonic()
        assert (await api.request("GET"))[0] == 200
        await asyncio.sleep(0.25)
        assert [(await api.request("GET"))[0] for _ in range(3)] == [200, 200, 429]
        await asyncio.sleep(max(0.0, start + 0.42 - time.monotonic()))
        # A new fixed window: three more pass, five within one 400 ms sliding window.
        assert [(await api.request("GET"))[0] for _ in range(3)] == [200, 200, 200]
        stats = await api.sim("stats")
        assert stats["maxInWindow"]["read"] == 5


@pytest.mark.anyio
async def test_sign_in_and_sim_endpoints_are_not_limited() -> None:
    async with running(read_rate="1/10s", write_rate="1/10s") as api:
        for _ in range(3):
            form = {"client_id": "sim-client", "client_secret": "sim-secret"}
            async with api.session.post(f"{api.url}/signin", data=form) as resp:
                assert resp.status == 200
            assert isinstance(await api.sim("stats"), dict)
        stats = await api.sim("stats")
        assert stats["requests"] == {"read": 0, "write": 0} and stats["signins"] == 4


# ---- faults ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_5xx_faults_answer_before_applying() -> None:
    async with running(faults="5xx=1") as api:
        seen = set()
        for _ in range(30):
            status, body, headers = await api.request("PUT", "/57", json=PASSWORD_BODY)
            seen.add(status)
            assert set(body) == {"id", "reason", "params"}
            if status == 503:
                assert headers["Retry-After"] == "1s" and body["id"] == "retryable.server.error"
        assert seen == {500, 502, 503}
        creds = {c["id"]: c for c in await api.sim("credentials")}
        assert creds["57"]["puts"] == 0
        stats = await api.sim("stats")
        assert stats["faultsInjected"]["5xx"] == 30 and stats["writesByCredential"] == {}


@pytest.mark.anyio
async def test_409_faults_answer_concurrent_access_before_applying() -> None:
    async with running(faults="409=1") as api:
        status, body, _ = await api.request(
            "POST", json={"name": "x", "credentialType": "PASSWORD", "password": "p"}
        )
        assert status == 409 and body["id"] == "api.concurrent.access.error"
        assert len(await api.sim("credentials")) == 10
        assert (await api.request("GET"))[0] == 200  # reads never conflict


@pytest.mark.anyio
async def test_reset_drops_the_connection_before_applying() -> None:
    async with running(faults="reset=1") as api:
        with pytest.raises(aiohttp.ClientError):
            await api.request("POST", json={"name": "x", "credentialType": "PASSWORD",
                                            "password": "p"})
        assert len(await api.sim("credentials")) == 10
        log = await api.sim("requests")
        assert log[-1]["fault"] == "reset" and log[-1]["status"] is None
        assert (await api.sim("stats"))["faultsInjected"]["reset"] == 1


@pytest.mark.anyio
async def test_lost_applies_the_write_then_drops_the_answer() -> None:
    async with running(faults="lost=1") as api:
        with pytest.raises(aiohttp.ClientError):
            await api.request("POST", json={"name": "ghost", "credentialType": "PASSWORD",
                                            "password": "p"})
        creds = {c["name"]: c for c in await api.sim("credentials")}
        assert creds["ghost"]["created"] is True
        log = await api.sim("requests")
        assert log[-1]["fault"] == "lost" and log[-1]["status"] == 201
        # Reads are never "lost": only writes are.
        assert (await api.request("GET"))[0] == 200


@pytest.mark.anyio
async def test_latency_delays_api_calls_only() -> None:
    async with running(faults="latency=60ms-80ms") as api:
        start = time.monotonic()
        assert (await api.request("GET"))[0] == 200
        assert time.monotonic() - start >= 0.06
        start = time.monotonic()
        await api.sim("stats")
        assert time.monotonic() - start < 0.06
        assert (await api.sim("stats"))["faultsInjected"]["latency"] == 1


@pytest.mark.anyio
async def test_retry_after_fault_overrides_every_429() -> None:
    async with running(read_rate="1/1s", faults="retry_after=13") as api:
        assert (await api.request("GET"))[0] == 200
        status, _, headers = await api.request("GET")
        assert status == 429 and headers["retry-after"] == "13s"


@pytest.mark.anyio
async def test_throttle_burst_serves_consecutive_429s() -> None:
    async with running(faults="throttle_burst=3@2") as api:
        statuses = [(await api.request("GET"))[0] for _ in range(6)]
        assert statuses == [200, 429, 429, 429, 200, 200]
        stats = await api.sim("stats")
        assert stats["throttled"]["read"] == 3 and stats["faultsInjected"]["throttle_burst"] == 3
        assert stats["maxInWindow"]["read"] == 3


@pytest.mark.anyio
async def test_totalcount_and_escape_quirks() -> None:
    async with running(credentials=50, faults="totalcount=0,escape=1") as api:
        _, body, _ = await api.request("GET")
        assert body["totalCount"] == "0" and body["totalPages"] == "3"
        _, item, _ = await api.request("GET", "/80")
        assert item["name"] == "test8&#x26;&#x5e;&#x25;&#x24;"
        assert html.unescape(item["name"]) == "test8&^%$"
        assert await api.sim("faults", {"spec": "totalcount=omit"}) == {"spec": "totalcount=omit"}
        _, body, _ = await api.request("GET")
        assert "totalCount" not in body and body["totalPages"] == "3"


@pytest.mark.anyio
async def test_faults_change_at_runtime_and_replay_with_the_same_seed() -> None:
    async with running() as api:
        assert await api.sim("faults") == {"spec": ""}

        async def statuses() -> list[int]:
            assert (await api.sim("faults", {"spec": "5xx=0.3,409=0.2,seed=7"}))["spec"]
            return [(await api.request("GET"))[0] for _ in range(40)]

        first = await statuses()
        assert set(first) - {200} and 200 in first
        assert await statuses() == first
        assert await api.sim("faults", {"spec": "bogus=1"}) == 400
        assert await api.sim("faults", {"nospec": ""}) == 400
        assert await api.sim("faults", "latency=1ms") == {"spec": "latency=1ms"}
        assert await api.sim("faults", {"spec": ""}) == {"spec": ""}
        assert (await api.request("GET"))[0] == 200


# ---- /_sim/ --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_request_log_and_stats_reset() -> None:
    async with running(read_rate="1/10s") as api:
        await api.request("GET", params={"page": "1"})
        await api.request("GET")
        await api.request("PUT", "/57", json=PASSWORD_BODY)
        log = await api.sim("requests")
        assert [e["path"] for e in log][0] == "/signin" and log[0]["class"] is None
        assert set(log[1]) == {"t", "method", "path", "query", "status", "class", "fault"}
        assert log[1]["query"] == "page=1" and log[1]["class"] == "read"
        assert [e["status"] for e in log[1:]] == [200, 429, 204]
        assert log[3]["class"] == "write" and log[1]["t"] <= log[2]["t"] <= log[3]["t"]
        assert await api.sim("stats/reset", {}) == 204
        stats = await api.sim("stats")
        assert stats["requests"] == {"read": 0, "write": 0} and stats["writesByCredential"] == {}
        # The limiter itself is not reset: the window still holds the earlier read.
        assert (await api.request("GET"))[0] == 429


def test_fault_spec_grammar() -> None:
    cfg = parse_faults(
        "5xx=0.05, latency=10ms-50ms,409=0.02,reset=0.01,lost=0.02,retry_after=13,"
        "totalcount=0,escape=1,throttle_burst=4@9,seed=3"
    )
    assert cfg == FaultConfig(
        error_5xx=0.05, error_409=0.02, reset=0.01, lost=0.02, latency=(0.01, 0.05),
        retry_after=13.0, totalcount="0", escape=True, throttle_burst=4, throttle_at=9, seed=3,
    )
    assert parse_faults(cfg.spec) == cfg
    assert parse_faults("") == FaultConfig()
    assert parse_faults("latency=1s").latency == (1.0, 1.0)
    for bad in ("5xx=2", "nope=1", "latency=5", "5xx=0.6,409=0.6", "5xx=0.1,5xx=0.2",
                "throttle_burst=x", "escape=maybe", "totalcount=-1", "latency=50ms-10ms"):
        with pytest.raises(ValueError):
            parse_faults(bad)
