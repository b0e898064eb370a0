"""Import throughput against the simulator, as a fraction of the write ceiling.

Runs ``bulkcred import --skip-invalid`` (the real command, in a subprocess) on a CSV of
``--rows`` rows of which ``--bad`` are invalid (mixed types, Default and one microtenant,
SSH keys inline and from files: by default the issue's 1,000 rows with 30 bad ones)
against a simulator on loopback at time-scaled limits, once per added latency. Prints
the achieved create rate against the ceiling, the 429s served, the wall time against
N / rate, and checks through the simulator that every valid row exists exactly once.
It measures; it asserts nothing about time.

    python benchmarks/import_throughput.py [--rows 1000] [--bad 30] [--write-rate 50/1s]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

from bulkcred.config import Rate
from bulkcred.jobs.importcsv import write_import_csv
from bulkcred.journal import replay
from bulkcred.secrets import generate_ssh_key
from bulkcred.sim import SimConfig, SimServer

SCOPE_C = "145260601092866314"  # the simulator's first microtenant


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as r:
        return orjson.loads(r.read())


def make_csv(folder: Path, rows: int, bad: int) -> tuple[Path, set[tuple[str, str]]]:
    """The CSV and the (microtenant, name) of its valid rows."""
    keys = [generate_ssh_key()[0].reveal() for _ in range(3)]  # ZPA takes one key many times
    (folder / "keys").mkdir()
    for i, pem in enumerate(keys):
        (folder / "keys" / f"k{i}.pem").write_text(pem)
    every = rows // bad if bad else rows + 1
    out, valid = [], set()
    for i in range(rows):
        mt = SCOPE_C if i % 2 else ""
        row = {"name": f"bench-{i:05d}", "microtenantId": mt}
        kind = i % 3
        if kind == 0:
            row.update(credentialType="USERNAME_PASSWORD", userName=f"u{i}", password=f"pw-{i}-x")
        elif kind == 1:
            row.update(credentialType="SSH_KEY", userName="root")
            row["privateKeyFile" if i % 2 else "privateKey"] = \
                f"keys/k{i % 3}.pem" if i % 2 else keys[i % 3]
        else:
            row.update(credentialType="PASSWORD", password=f"vnc-{i}-x")
        if bad and i % every == every - 1 and i // every < bad:
            # an invalid row of its type: a field the type does not take, or none it needs
            row.update({0: {"password": ""}, 1: {"userName": ""}, 2: {"userName": "x"}}[kind])
        else:
            valid.add((mt or "0", row["name"]))
        out.append(row)
    return write_import_csv(out, folder / "import.csv"), valid


def one_run(rows: int, bad: int, write: str, read: str, latency_ms: int) -> dict[str, object]:
    faults = f"latency={latency_ms}ms" if latency_ms else ""
    cfg = SimConfig(microtenants=2, seed=42, examples=False, read_rate=read,
                    write_rate=write, faults=faults)
    with SimServer.in_thread(cfg) as sim, tempfile.TemporaryDirectory() as tmp:
        csv_path, valid = make_csv(Path(tmp), rows, bad)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ZPA_", "ZSCALER_", "BULKCRED_"))}
        env.update({"BULKCRED_BASE_URL": sim.url, "ZPA_CUSTOMER_ID": cfg.customer_id,
                    "ZPA_CLIENT_ID": cfg.client_id, "ZPA_CLIENT_SECRET": cfg.client_secret})
        journal = Path(tmp) / "bench.journal"
        cmd = [sys.executable, "-m", "bulkcred", "import", str(csv_path), "--journal",
               str(journal), "--skip-invalid", "--yes", "--write-rate", write,
               "--read-rate", read]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        wall = time.monotonic() - t0
        if proc.returncode not in (0, 1):
            raise SystemExit(f"import exited {proc.returncode}: {proc.stderr[-2000:]}")
        stats = _get(sim.url + "/_sim/stats")
        held = _get(sim.url + "/_sim/credentials")
        assert isinstance(stats, dict) and isinstance(held, list)
        # the write phase: first intent to last intent, from the journal's own records
        state = replay(journal)
        ts = [float(st.last_intent["data"]["ts"]) for st in state.states.values()
              if st.last_intent]
        counts = state.counts()
    per_name = collections.Counter((c["microtenantId"], c["name"]) for c in held)
    rate = Rate.parse(write)
    span = (max(ts) - min(ts)) if len(ts) > 1 else 0.0
    created = counts["done"]
    achieved = (len(ts) - 1) / span if span > 0 else float("nan")  # n writes, n - 1 gaps
    return {
        "latency_ms": latency_ms,
        "created": created,
        "rejected": counts["failed"],
        "exactly_once": set(per_name) == valid and set(per_name.values()) == {1},
        "exit": proc.returncode,
        "wall_s": wall,
        "ideal_s": created / rate.per_second,
        "achieved_per_s": achieved,
        "ratio": achieved / rate.per_second,
        "throttled": stats["throttled"],
        "max_in_window": stats["maxInWindow"]["write"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--bad", type=int, default=30)
    ap.add_argument("--write-rate", default="50/1s")
    ap.add_argument("--read-rate", default="100/1s")
    ap.add_argument("--latency", default="0,50,200", help="added latencies in ms, comma-separated")
    args = ap.parse_args()
    rate = Rate.parse(args.write_rate)
    print(f"import {args.rows} rows ({args.bad} invalid) into Default and one microtenant,"
          f" write ceiling {args.write_rate} ({rate.per_second:g}/s), read {args.read_rate}")
    print(f"{'latency':>8} {'created':>7} {'rejected':>8} {'once':>5} {'exit':>4} {'wall s':>7}"
          f" {'N/rate s':>8} {'rows/s':>7} {'of ceiling':>10} {'429 w/r':>8} {'max/window':>10}")
    for lat in (int(x) for x in args.latency.split(",") if x.strip()):
        r = one_run(args.rows, args.bad, args.write_rate, args.read_rate, lat)
        th = r["throttled"]
        assert isinstance(th, dict)
        print(f"{lat:>6}ms {r['created']:>7} {r['rejected']:>8} {str(r['exactly_once']):>5}"
              f" {r['exit']:>4} {r['wall_s']:>7.2f} {r['ideal_s']:>8.2f}"
              f" {r['achieved_per_s']:>7.2f} {r['ratio']:>10.1%} {th['write']:>3}/{th['read']:<4}"
              f" {r['max_in_window']:>6}/{rate.count}")


if __name__ == "__main__":
    main()
