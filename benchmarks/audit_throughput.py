"""Audit throughput against the simulator: wall time against the read ceiling.

Seeds a tenant (default 20,000 credentials over 5 microtenants), runs the real
``bulkcred audit --format json`` in a subprocess at a time-scaled read limit, and
prints the GETs it sent, the time its reads took, that time against GETs / rate (the
read-ceiling time), the process's wall time and its peak memory. It asserts nothing.

    python benchmarks/audit_throughput.py [--credentials 20000] [--read-rate 20/1s]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bulkcred.config import Rate
from bulkcred.sim import SimConfig, SimServer


def one_run(n: int, mts: int, read: str, rules: int) -> dict[str, object]:
    cfg = SimConfig(credentials=n, microtenants=mts, seed=7, policy_rules=rules,
                    read_rate=read, write_rate="10/1s")
    with SimServer.in_thread(cfg) as sim, tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ZPA_", "ZSCALER_", "BULKCRED_"))}
        env.update({"BULKCRED_BASE_URL": sim.url, "ZPA_CUSTOMER_ID": cfg.customer_id,
                    "ZPA_CLIENT_ID": cfg.client_id, "ZPA_CLIENT_SECRET": cfg.client_secret,
                    "BULKCRED_READ_RATE": read})
        out = Path(tmp) / "audit.json"
        cmd = [sys.executable, "-m", "bulkcred", "audit", "--format", "json", "--output",
               str(out)]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"audit exited {proc.returncode}: {proc.stderr[-2000:]}")
        doc = orjson.loads(out.read_bytes())
    rate = Rate.parse(read)
    reads = doc["reads"]
    ceiling = reads["requests"] / rate.per_second
    return {
        "credentials": doc["credentials"],
        "findings": len(doc["findings"]),
        "gets": reads["requests"],
        "throttled": reads["throttled"],
        "read_s": reads["seconds"],
        "ceiling_s": ceiling,
        "ratio": reads["seconds"] / ceiling,
        "wall_s": wall,
        # ru_maxrss is in KiB on Linux: the largest child so far, i.e. this audit when
        # sizes are run smallest first
        "max_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--credentials", default="20000", help="tenant sizes, comma-separated")
    ap.add_argument("--microtenants", type=int, default=5)
    ap.add_argument("--read-rate", default="20/1s", help="ZPA's 20/10s sped up ten times")
    ap.add_argument("--policy-rules", type=int, default=300)
    args = ap.parse_args()
    rate = Rate.parse(args.read_rate)
    print(f"audit over {args.microtenants} microtenants (+ Default), read ceiling"
          f" {args.read_rate} ({rate.per_second:g}/s)")
    print(f"{'creds':>7} {'findings':>8} {'GETs':>5} {'429s':>4} {'reads s':>8}"
          f" {'GETs/rate s':>11} {'of ceiling':>10} {'wall s':>7} {'max RSS MiB':>11}")
    for n in sorted(int(x) for x in args.credentials.split(",") if x.strip()):
        r = one_run(n, args.microtenants, args.read_rate, args.policy_rules)
        print(f"{r['credentials']:>7} {r['findings']:>8} {r['gets']:>5} {r['throttled']:>4}"
              f" {r['read_s']:>8.2f} {r['ceiling_s']:>11.2f} {r['ratio']:>10.3f}"
              f" {r['wall_s']:>7.2f} {r['max_rss_mib']:>11.1f}")


if __name__ == "__main__":
    main()
