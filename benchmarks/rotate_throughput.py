"""Rotation throughput against the simulator, as a fraction of the write ceiling.

Runs ``bulkcred rotate`` (the real command, in a subprocess) against a simulator on
loopback at time-scaled limits, once per added network latency, and prints the achieved
write rate against the ceiling, the 429s served and the wall time against N / rate,
side by side. It measures; it asserts nothing about time.

    python benchmarks/rotate_throughput.py [--credentials 300] [--write-rate 20/1s]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

from bulkcred.config import Rate
from bulkcred.journal import replay
from bulkcred.sim import SimConfig, SimServer


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as r:
        return orjson.loads(r.read())


def one_run(n: int, mts: int, write: str, read: str, latency_ms: int) -> dict[str, object]:
    faults = f"latency={latency_ms}ms" if latency_ms else ""
    cfg = SimConfig(credentials=n, microtenants=mts, seed=42, examples=False,
                    read_rate=read, write_rate=write, faults=faults)
    with SimServer.in_thread(cfg) as sim, tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ZPA_", "ZSCALER_", "BULKCRED_"))}
        env.update({"BULKCRED_BASE_URL": sim.url, "ZPA_CUSTOMER_ID": cfg.customer_id,
                    "ZPA_CLIENT_ID": cfg.client_id, "ZPA_CLIENT_SECRET": cfg.client_secret})
        journal = Path(tmp) / "bench.journal"
        cmd = [sys.executable, "-m", "bulkcred", "rotate", "--journal", str(journal),
               "--secrets-out", str(Path(tmp) / "secrets.jsonl"), "--yes",
               "--write-rate", write, "--read-rate", read]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"rotate exited {proc.returncode}: {proc.stderr[-2000:]}")
        stats = _get(sim.url + "/_sim/stats")
        assert isinstance(stats, dict)
        # the write phase: first intent to last outcome, from the journal's own records
        state = replay(journal)
        ts = [float(st.last_intent["data"]["ts"]) for st in state.states.values()
              if st.last_intent]
        done = state.counts()["done"]
    rate = Rate.parse(write)
    write_span = (max(ts) - min(ts)) if len(ts) > 1 else 0.0
    # n writes paced at the ceiling span (n - 1) intervals
    achieved = (done - 1) / write_span if write_span > 0 else float("nan")
    return {
        "latency_ms": latency_ms,
        "done": done,
        "wall_s": wall,
        "ideal_s": done / rate.per_second,
        "achieved_per_s": achieved,
        "ceiling_per_s": rate.per_second,
        "ratio": achieved / rate.per_second,
        "throttled": stats["throttled"],
        "max_in_window": stats["maxInWindow"]["write"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--credentials", type=int, default=300)
    ap.add_argument("--microtenants", type=int, default=3)
    ap.add_argument("--write-rate", default="20/1s")
    ap.add_argument("--read-rate", default="40/1s")
    ap.add_argument("--latency", default="0,50,200", help="added latencies in ms, comma-separated")
    args = ap.parse_args()
    rate = Rate.parse(args.write_rate)
    print(f"rotate {args.credentials} credentials over {args.microtenants} microtenants,"
          f" write ceiling {args.write_rate} ({rate.per_second:g}/s), read {args.read_rate}")
    print(f"{'latency':>8} {'done':>5} {'wall s':>7} {'N/rate s':>8} {'wall/ideal':>10}"
          f" {'writes/s':>8} {'of ceiling':>10} {'429 w/r':>8} {'max/window':>10}")
    for lat in (int(x) for x in args.latency.split(",") if x.strip()):
        r = one_run(args.credentials, args.microtenants, args.write_rate, args.read_rate, lat)
        th = r["throttled"]
        assert isinstance(th, dict)
        print(f"{lat:>6}ms {r['done']:>5} {r['wall_s']:>7.2f} {r['ideal_s']:>8.2f}"
              f" {r['wall_s'] / r['ideal_s']:>10.3f} {r['achieved_per_s']:>8.2f}"
              f" {r['ratio']:>10.1%} {th['write']:>3}/{th['read']:<4} {r['max_in_window']:>6}/{rate.count}")


if __name__ == "__main__":
    main()
