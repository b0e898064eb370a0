"""SIGKILL (and SIGTERM) of a real ``bulkcred migrate`` mid-run, then the same command
again: no credential is moved twice and every one ends in the target."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulkcred.journal import replay
from bulkcred.sim import SimServer

from .conftest import cli_env, sim_config
from .test_migrate import NOT_APPLIED, SCOPE_C, name_key

WRITE_RATE = "40/1s"


def _get(url: str, path: str) -> Any:
    with urllib.request.urlopen(url + path, timeout=10) as r:
        return orjson.loads(r.read())


def _movable(url: str) -> list[str]:
    creds = _get(url, "/_sim/credentials")
    taken = {name_key(c["name"]) for c in creds if c["microtenantId"] == "0"}
    return [c["id"] for c in creds
            if c["microtenantId"] == SCOPE_C and name_key(c["name"]) not in taken]


def _cmd(work: Path) -> list[str]:
    return [sys.executable, "-m", "bulkcred", "migrate", "--from", SCOPE_C, "--to", "0",
            "--journal", str(work / "j.journal"), "--select", f"ids-from={work / 'ids.txt'}",
            "--yes"]


def _check(url: str, work: Path, ids: list[str]) -> None:
    state = replay(work / "j.journal")
    assert set(state.items) == set(ids)
    assert state.counts()["done"] == len(ids)
    log = _get(url, "/_sim/requests")
    posts = Counter(r["path"].split("/")[-2] for r in log
                    if r["method"] == "POST" and r["path"].endswith("/move")
                    and r["status"] not in NOT_APPLIED)
    applied = _get(url, "/_sim/stats")["writesByCredential"]
    where = {c["id"]: c["microtenantId"] for c in _get(url, "/_sim/credentials")}
    for key in ids:
        assert posts[key] <= state.states[key].attempts, key
        assert applied[key] == 1, key  # moved exactly once
        assert where[key] == "0", key


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_at_random_points_then_resume(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    with SimServer.in_thread(sim_config(credentials=120, microtenants=2, seed=seed,
                                        write_rate=WRITE_RATE)) as s:
        ids = _movable(s.url)
        assert len(ids) >= 30
        (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
        env = cli_env(s.url, BULKCRED_WRITE_RATE=WRITE_RATE)
        kills = 0
        for _ in range(12):
            proc = subprocess.Popen(_cmd(tmp_path), env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                proc.wait(timeout=rng.uniform(0.4, 1.2))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                kills += 1
                continue
            _, err = proc.communicate()
            assert proc.returncode == 0, err.decode()
            break
        else:
            done = subprocess.run(_cmd(tmp_path), env=env, capture_output=True,
                                  stdin=subprocess.DEVNULL, timeout=120)
            assert done.returncode == 0, done.stderr.decode()
        assert kills >= 1
        _check(s.url, tmp_path, ids)


def test_sigterm_flushes_exits_130_and_resumes(tmp_path: Path) -> None:
    with SimServer.in_thread(sim_config(credentials=100, microtenants=1, seed=8,
                                        write_rate="20/1s")) as s:
        ids = _movable(s.url)
        (tmp_path / "ids.txt").write_text(",".join(ids) + "\n")
        env = cli_env(s.url, BULKCRED_WRITE_RATE="20/1s")
        proc = subprocess.Popen(_cmd(tmp_path), env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        journal = tmp_path / "j.journal"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if journal.exists() and journal.read_bytes().count(b'"t":"outcome"') >= 5:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err.decode()
        assert b"resume" in err
        assert 0 < replay(journal).counts()["done"] < len(ids)
        done = subprocess.run(_cmd(tmp_path), env=env, capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=120)
        assert done.returncode == 0, done.stderr.decode()
        _check(s.url, tmp_path, ids)
