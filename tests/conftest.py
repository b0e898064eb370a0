"""Shared fixtures: the anyio backend, simulators on port 0, clients and job helpers."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import orjson
import pytest

from bulkcred.auth import LegacyApiKey
from bulkcred.client import ZPAClient
from bulkcred.config import Rate
from bulkcred.models import Secret
from bulkcred.sim import SimConfig, SimServer

FAST_READ = "400/1s"
FAST_WRITE = "200/1s"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sim_config(**kw: Any) -> SimConfig:
    kw.setdefault("read_rate", FAST_READ)
    kw.setdefault("write_rate", FAST_WRITE)
    return SimConfig(**kw)


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    """A simulator with the article's examples and 24 more over two microtenants."""
    async with SimServer(sim_config(credentials=24, microtenants=2, seed=3)) as s:
        yield s


@pytest.fixture
def sim_thread() -> Iterator[Any]:
    """Start simulators in a thread of their own (for subprocess-driven tests)."""
    started: list[Any] = []

    def start(**kw: Any) -> Any:
        cm = SimServer.in_thread(sim_config(**kw))
        server = cm.__enter__()
        started.append(cm)
        return server

    yield start
    for cm in reversed(started):
        cm.__exit__(None, None, None)


def make_client(url: str, *, read: str = FAST_READ, write: str = FAST_WRITE,
                customer_id: str = "216196257331281920", **kw: Any) -> ZPAClient:
    return ZPAClient(
        base_url=url,
        customer_id=customer_id,
        auth=LegacyApiKey(client_id="sim-client", client_secret=Secret("sim-secret")),
        read_rate=Rate.parse(read),
        write_rate=Rate.parse(write),
        **kw,
    )


async def sim_get(url: str, path: str) -> Any:
    async with aiohttp.ClientSession() as s:
        async with s.get(url + path) as r:
            assert r.status == 200, await r.text()
            return orjson.loads(await r.read())


async def sim_post(url: str, path: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as s:
        async with s.post(url + path, data=orjson.dumps(body or {}),
                          headers={"Content-Type": "application/json"}) as r:
            assert r.status in (200, 204), await r.text()
            data = await r.read()
            return orjson.loads(data) if data else None


def secret_digest(secret: Any) -> str:
    value = (secret.private_key or secret.password).reveal()
    return hashlib.sha256(value.encode()).hexdigest()


def cli_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ZPA_", "ZSCALER_", "BULKCRED_"))}
    env.update({
        "BULKCRED_BASE_URL": url,
        "ZPA_CUSTOMER_ID": "216196257331281920",
        "ZPA_CLIENT_ID": "sim-client",
        "ZPA_CLIENT_SECRET": "sim-secret",
        "BULKCRED_READ_RATE": FAST_READ,
        "BULKCRED_WRITE_RATE": FAST_WRITE,
    })
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], *, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bulkcred", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
        input=input, stdin=None if input is not None else subprocess.DEVNULL,
    )


def read_text_files(*paths: Path) -> str:
    out = []
    for p in paths:
        if p.exists():
            out.append(p.read_text(encoding="utf-8", errors="replace"))
    return "\n".join(out)
