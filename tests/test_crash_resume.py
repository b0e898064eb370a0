"""Crash and resume: in-process at every journal and sink boundary, and SIGKILL of a
real ``bulkcred rotate`` at random points. Each ends with the rotation invariant."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bulkcred.journal import Journal, replay
from bulkcred.secrets import SecretSink
from bulkcred.sim import SimServer

from .conftest import cli_env, sim_config
from .test_rotate import assert_invariant, opts, run
from bulkcred.jobs.select import parse_selection

pytestmark = pytest.mark.anyio


class Crash(BaseException):
    """Stands for the process dying: nothing in bulkcred may catch it."""


class Boundaries:
    """Counts calls of the journal and sink writes; dies at one of them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int | None, after: bool) -> None:
        self.n = 0
        self.at = at
        self.after = after
        for cls, name in ((Journal, "write_plan"), (Journal, "intent"), (Journal, "outcome"),
                          (Journal, "event"), (SecretSink, "append")):
            monkeypatch.setattr(cls, name, self._wrap(getattr(cls, name)))

    def _wrap(self, fn: Any) -> Any:
        async def wrapper(*args: Any, **kw: Any) -> Any:
            self.n += 1
            hit = self.at is not None and self.n == self.at
            if hit and not self.after:
                raise Crash(f"before boundary {self.n}")
            out = await fn(*args, **kw)
            if hit:
                raise Crash(f"after boundary {self.n}")
            return out

        return wrapper


SELECT = ["id=47,259,20,57,128,11262"]  # five password credentials and one SSH key


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
async def test_crash_at_every_boundary_then_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after: bool
) -> None:
    # one clean run counts the boundaries
    with monkeypatch.context() as m:
        counter = Boundaries(m, None, after)
        (tmp_path / "count").mkdir()
        async with SimServer(sim_config(seed=1)) as s:
            await run(s.url, opts(tmp_path / "count", selection=parse_selection(SELECT)))
        total = counter.n
    assert total >= 1 + 6 * 3  # plan, and sink + intent + outcome for each item

    for at in range(1, total + 1):
        work = tmp_path / f"at{at}"
        work.mkdir()
        o = opts(work, selection=parse_selection(SELECT))
        async with SimServer(sim_config(seed=1)) as s:
            with monkeypatch.context() as m:
                Boundaries(m, at, after)
                with pytest.raises(Crash):
                    await run(s.url, o)
            result, _ = await run(s.url, o)  # the same command again
            assert result.ok, (at, result)
            assert result.done == 6
            await assert_invariant(s.url, o)


def _rotate_cmd(work: Path) -> list[str]:
    return [sys.executable, "-m", "bulkcred", "rotate", "--journal", str(work / "j.journal"),
            "--secrets-out", str(work / "secrets.jsonl"), "--yes"]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_sigkill_at_random_points_then_resume(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    with SimServer.in_thread(sim_config(credentials=50, microtenants=2, seed=seed,
                                        write_rate="30/1s")) as s:
        env = cli_env(s.url, BULKCRED_WRITE_RATE="30/1s")
        kills = 0
        for attempt in range(12):
            delay = rng.uniform(0.2, 2.0)
            with subprocess.Popen(_rotate_cmd(tmp_path), env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
                try:
                    _, err = proc.communicate(timeout=delay)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.communicate()
                    kills += 1
                    continue
            assert proc.returncode == 0, err.decode()
            break
        else:
            proc = subprocess.run(_rotate_cmd(tmp_path), env=env, capture_output=True,
                                  stdin=subprocess.DEVNULL, timeout=120)
            assert proc.returncode == 0, proc.stderr.decode()
        assert kills >= 1
        o = opts(tmp_path)
        state = replay(o.journal)
        assert state.counts()["done"] == len(state.items) == 60
        await assert_invariant(s.url, o)


async def test_sigterm_flushes_and_exits_130(tmp_path: Path) -> None:
    with SimServer.in_thread(sim_config(credentials=40, microtenants=1, seed=8,
                                        write_rate="20/1s")) as s:
        env = cli_env(s.url, BULKCRED_WRITE_RATE="20/1s")
        journal = tmp_path / "j.journal"
        with subprocess.Popen(_rotate_cmd(tmp_path), env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if journal.exists() and journal.read_bytes().count(b'"t":"outcome"') >= 5:
                    break
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err.decode()
        assert b"resume" in err
        state = replay(journal)
        assert 0 < state.counts()["done"] < len(state.items)
        done = subprocess.run(_rotate_cmd(tmp_path), env=env, capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=120)
        assert done.returncode == 0, done.stderr.decode()
        await assert_invariant(s.url, opts(tmp_path))
