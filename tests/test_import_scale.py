"""Imports at scale through the real command: 5,000 rows killed with SIGKILL halfway and
resumed, and the issue's 1,000 rows with 30 bad ones; the tenant is checked through the
API at the end (every valid row exactly once)."""

from __future__ import annotations

import csv
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from bulkcred.jobs.importcsv import write_import_csv
from bulkcred.journal import replay

from .conftest import cli_env
from .test_import import SCOPE_C, expected_names, key_files, key_pool, tenant_names, valid_rows

WRITE, READ = "500/1s", "1000/1s"


def stats(url: str) -> Any:
    with urllib.request.urlopen(url + "/_sim/stats") as r:
        return orjson.loads(r.read())


def import_cmd(csv_path: Path, journal: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bulkcred", "import", str(csv_path), "--journal",
            str(journal), "--yes", *extra]


def kill_when(cmd: list[str], env: dict[str, str], journal: Path, outcomes: int) -> None:
    """Start ``cmd`` and SIGKILL it once the journal holds ``outcomes`` outcomes."""
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b'"t":"outcome"') >= outcomes:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def finish(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)


@pytest.mark.slow
def test_5000_rows_sigkill_and_resume_each_row_exactly_once(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(microtenants=2, seed=11, examples=False, write_rate=WRITE, read_rate=READ)
    env = cli_env(s.url, BULKCRED_WRITE_RATE=WRITE, BULKCRED_READ_RATE=READ)
    rows = valid_rows(5000, microtenants=(None, "0", SCOPE_C), key_names=key_files(tmp_path))
    write_import_csv(rows, tmp_path / "in.csv")
    journal = tmp_path / "import.journal"
    cmd = import_cmd(tmp_path / "in.csv", journal)
    t0 = time.monotonic()
    kill_when(cmd, env, journal, 2000)
    state = replay(journal)
    assert 2000 <= state.counts()["done"] < 5000
    done = finish(cmd, env)
    wall = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(resumed)" in done.stdout and "5000 created" in done.stdout
    names = anyio.run(tenant_names, s.url)
    assert names == {k: 1 for k in expected_names(rows)}
    final = stats(s.url)
    assert final["throttled"]["write"] == 0
    # each row was POSTed once, bar the few in flight at the kill (found by name then)
    assert 5000 <= final["requests"]["write"] <= 5000 + 64
    assert wall < 45, wall


def done_when_rows(folder: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """1,000 rows: 970 valid over Default and Scope C, inline and file keys, and 30 bad
    ones of every type spread through the file."""
    keys = key_files(folder)
    good = valid_rows(970, prefix="dw", microtenants=(None, SCOPE_C), key_names=keys)
    pem = key_pool()[2]
    kinds = [
        {"credentialType": "USERNAME_PASSWORD", "userName": "u"},  # no password
        {"credentialType": "USERNAME_PASSWORD", "password": "pw-without-user"},
        {"credentialType": "SSH_KEY", "userName": "root", "privateKeyFile": "keys/none.pem"},
        {"credentialType": "SSH_KEY", "userName": "root", "privateKey": pem,
         "passphrase": "not-needed"},
        {"credentialType": "SSH_KEY", "userName": "root", "privateKey": pem,
         "password": "stray-password"},
        {"credentialType": "PASSWORD", "password": "vnc-pw", "userName": "stray"},
        {"credentialType": "PASSWORD", "password": "vnc-pw", "microtenantId": "12x"},
        {"credentialType": "VNC", "password": "vnc-pw"},
        {"credentialType": "PASSWORD", "password": "bell\x07", "microtenantId": SCOPE_C},
        {"credentialType": "PASSWORD", "password": "vnc-pw", "description": "d" * 2000},
    ]
    bad = [{"name": f"dw-bad-{i:02d}", **kinds[i % len(kinds)]} for i in range(30)]
    bad[0]["name"] = "DW-00002"  # a duplicate (case-insensitive) of a valid row before it
    return good, bad


def interleave(good: list[dict[str, str]], bad: list[dict[str, str]]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    step = len(good) // len(bad)
    for i, b in enumerate(bad):
        out += good[i * step:(i + 1) * step] + [b]
    return out + good[len(bad) * step:]


@pytest.mark.slow
def test_done_when_1000_rows_30_bad(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(microtenants=2, seed=12, examples=False, write_rate=WRITE, read_rate=READ)
    env = cli_env(s.url, BULKCRED_WRITE_RATE=WRITE, BULKCRED_READ_RATE=READ)
    good, bad = done_when_rows(tmp_path)
    write_import_csv(interleave(good, bad), tmp_path / "in.csv")
    with open(tmp_path / "in.csv", newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        lines = {}
        start = 2
        for cells in reader:
            lines[cells[0]] = start
            start = reader.line_num + 1
    bad_lines = sorted(lines[b["name"]] for b in bad)
    journal = tmp_path / "import.journal"

    dry = finish(import_cmd(tmp_path / "in.csv", journal, "--dry-run", "--skip-invalid"), env)
    assert dry.returncode == 0, dry.stderr
    assert "970 to create, 0 to update, 0 to skip, 30 rejected" in dry.stdout
    listed = [int(x) for x in re.findall(r"^  \S+in\.csv, line (\d+)", dry.stdout, re.M)]
    assert sorted(listed) == bad_lines and len(listed) == 30
    assert stats(s.url)["requests"]["write"] == 0

    cmd = import_cmd(tmp_path / "in.csv", journal, "--skip-invalid")
    kill_when(cmd, env, journal, 400)
    done = finish(cmd, env)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "970 created, 0 updated, 0 skipped, 30 rejected, 0 failed" in done.stdout
    assert anyio.run(tenant_names, s.url) == {k: 1 for k in expected_names(good)}
    assert stats(s.url)["throttled"] == {"read": 0, "write": 0}
    with open(tmp_path / "import.journal.rejects.csv", newline="", encoding="utf-8") as f:
        rejected = list(csv.DictReader(f))
    assert sorted(int(r["line"]) for r in rejected) == bad_lines
    for r in rejected:
        assert r["reason"] and all(r[c] in ("", "********") for c in
                                   ("password", "privateKey", "passphrase"))
