"""``bulkcred demo``: a rotation against the bundled simulator, killed halfway and resumed.

Everything runs on loopback; the rotate runs are real ``bulkcred rotate`` processes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click
import orjson

from .journal import replay
from .secrets import read_sink

__all__ = ["run_demo"]

READ_RATE = "40/1s"  # ZPA's limits sped up ten times, so the demo takes seconds
WRITE_RATE = "10/1s"


def _say(text: str = "") -> None:
    click.echo(text)


def _sim_json(url: str, path: str) -> object:
    with urllib.request.urlopen(url + path, timeout=10) as resp:  # loopback only
        return orjson.loads(resp.read())


def _outcomes(journal: Path) -> int:
    try:
        data = journal.read_bytes()
    except FileNotFoundError:
        return 0
    return data.count(b'"t":"outcome"')


def run_demo(workdir: Path, *, credentials: int = 40) -> int:
    from .sim import SimConfig, SimServer

    workdir.mkdir(parents=True, exist_ok=True)
    journal = workdir / "rotate.journal"
    secrets_out = workdir / "secrets.jsonl"
    report = workdir / "rotate.report.csv"
    for p in (journal, secrets_out, report):
        p.unlink(missing_ok=True)

    cfg = SimConfig(credentials=credentials, microtenants=2, seed=7,
                    read_rate=READ_RATE, write_rate=WRITE_RATE)
    with SimServer.in_thread(cfg) as sim:
        url = sim.url
        env = dict(os.environ)
        for k in list(env):
            if k.startswith(("ZPA_", "ZSCALER_", "BULKCRED_")):
                del env[k]
        env.update({
            "BULKCRED_BASE_URL": url,
            "ZPA_CUSTOMER_ID": cfg.customer_id,
            "ZPA_CLIENT_ID": cfg.client_id,
            "ZPA_CLIENT_SECRET": cfg.client_secret,
            "BULKCRED_READ_RATE": READ_RATE,
            "BULKCRED_WRITE_RATE": WRITE_RATE,
        })
        cmd = [sys.executable, "-m", "bulkcred", "rotate", "--journal", str(journal),
               "--secrets-out", str(secrets_out), "--report", str(report), "--yes"]
        shown = ["bulkcred", "rotate", "--journal", str(journal), "--secrets-out",
                 str(secrets_out), "--yes"]
        total = len(_sim_json(url, "/_sim/credentials"))  # type: ignore[arg-type]
        _say(f"simulated ZPA tenant {cfg.customer_id} at {url}: {total} credentials in"
             f" Default and 2 microtenants, limits {READ_RATE} GET and {WRITE_RATE} writes")
        _say(f"$ {' '.join(shown)}")

        # 1. a rotation, killed with SIGKILL once half of it is done
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        half = max(1, total // 2)
        while proc.poll() is None and _outcomes(journal) < half:
            if time.monotonic() - t0 > 120:
                proc.kill()
                proc.wait()
                _say("the first run did not progress in 120 s; giving up")
                return 1
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            _say(f"killed with SIGKILL after {_outcomes(journal)} of {total} credentials"
                 f" ({time.monotonic() - t0:.1f} s)")
        else:
            _say("the first run finished before it could be killed")

        status = subprocess.run([sys.executable, "-m", "bulkcred", "status", str(journal)],
                                env=env, capture_output=True, text=True, check=False)
        _say("$ bulkcred status " + str(journal))
        for line in status.stdout.splitlines():
            _say("  " + line)

        # 2. the same command again resumes
        _say(f"$ {' '.join(shown)}   # the same command resumes")
        t1 = time.monotonic()
        done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, check=False)
        for line in done.stdout.splitlines():
            _say("  " + line)
        if done.returncode != 0:
            _say(f"the resumed run exited {done.returncode}:")
            _say(done.stderr[-2000:])
            return 1
        _say(f"resumed run finished in {time.monotonic() - t1:.1f} s")

        # 3. proof through the simulator's test endpoint
        held = {c["id"]: c for c in _sim_json(url, "/_sim/credentials")}  # type: ignore[union-attr]
        last = read_sink(secrets_out)
        state = replay(journal)
        bad = []
        for key in state.items:
            secret = last.get(key)
            value = None
            if secret is not None:
                value = (secret.private_key or secret.password).reveal()  # type: ignore[union-attr]
            digest = hashlib.sha256(value.encode()).hexdigest() if value else None
            if digest is None or held.get(key, {}).get("secretSha256") != digest:
                bad.append(key)
        stats = _sim_json(url, "/_sim/stats")
    assert isinstance(stats, dict)
    if bad:
        _say(f"FAILED: {len(bad)} credentials do not hold their last recorded secret: {bad[:10]}")
        return 1
    _say(f"verified: all {len(state.items)} credentials hold exactly the secret the secrets"
         f" file recorded last for them")
    _say(f"the simulator served {stats['throttled']['write']} write and"
         f" {stats['throttled']['read']} read 429s; at most {stats['maxInWindow']['write']}"
         f" writes fell in any window of the {WRITE_RATE} limit")
    _say("")
    _say(f"journal:  {journal}")
    _say(f"secrets:  {secrets_out}   (mode 0600: simulated secrets, but treat it like real ones)")
    _say(f"report:   {report}")
    return 0
