"""Migration throughput against the simulator, as a fraction of the write ceiling.

Moves N credentials from a microtenant to Default and back with the real ``bulkcred
migrate`` (subprocesses) at time-scaled limits, and prints for each direction the
achieved moves per second (from the simulator's own arrival times) against the
ceiling, the 429s served, the most writes seen in one window, the wall time against
N / rate, and whether every credential ended where it should. It asserts nothing.

    python benchmarks/migrate_throughput.py [--credentials 500] [--write-rate 20/1s]
"""

from __future__ import annotations

import argparse
import html
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

from bulkcred.config import Rate
from bulkcred.sim import SimConfig, SimServer

SCOPE = "145260601092866314"  # the first seeded microtenant


def _get(url: str, path: str) -> object:
    with urllib.request.urlopen(url + path, timeout=30) as r:
        return orjson.loads(r.read())


def _post(url: str, path: str) -> None:
    req = urllib.request.Request(url + path, data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()


def _key(name: str) -> str:
    return html.unescape(name).strip().casefold()


def one_way(sim_url: str, env: dict[str, str], work: Path, src: str, dst: str,
            ids: list[str], rate: Rate) -> dict[str, object]:
    _post(sim_url, "/_sim/stats/reset")
    before = len(_get(sim_url, "/_sim/requests"))  # type: ignore[arg-type]
    journal = work / f"{src}-to-{dst}.journal"
    cmd = [sys.executable, "-m", "bulkcred", "migrate", "--from", src, "--to", dst,
           "--journal", str(journal), "--select", f"ids-from={work / 'ids.txt'}", "--yes"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"migrate exited {proc.returncode}: {proc.stderr[-2000:]}")
    log = _get(sim_url, "/_sim/requests")
    assert isinstance(log, list)
    moves = [r["t"] for r in log[before:] if r["method"] == "POST" and r["path"].endswith("/move")]
    stats = _get(sim_url, "/_sim/stats")
    assert isinstance(stats, dict)
    where = {c["id"]: c["microtenantId"] for c in _get(sim_url, "/_sim/credentials")}  # type: ignore[union-attr]
    span = max(moves) - min(moves) if len(moves) > 1 else 0.0
    achieved = (len(moves) - 1) / span if span > 0 else float("nan")
    return {
        "direction": f"{'Default' if src == '0' else 'mt'} -> {'Default' if dst == '0' else 'mt'}",
        "moves": len(moves),
        "wall_s": wall,
        "ideal_s": len(ids) / rate.per_second,
        "achieved_per_s": achieved,
        "ratio": achieved / rate.per_second,
        "throttled": stats["throttled"]["write"],
        "max_in_window": stats["maxInWindow"]["write"],
        "in_place": sum(1 for i in ids if where.get(i) == dst),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--credentials", type=int, default=500, help="credentials to move")
    ap.add_argument("--write-rate", default="20/1s")
    ap.add_argument("--read-rate", default="40/1s")
    ap.add_argument("--latency", default="0", help="added latency in ms (simulator side)")
    args = ap.parse_args()
    rate = Rate.parse(args.write_rate)
    lat = int(args.latency)
    # about 60 % of generated credentials land in the one microtenant; seed enough
    cfg = SimConfig(credentials=int(args.credentials * 1.9), microtenants=1, seed=42,
                    examples=False, read_rate=args.read_rate, write_rate=args.write_rate,
                    faults=f"latency={lat}ms" if lat else "")
    with SimServer.in_thread(cfg) as sim, tempfile.TemporaryDirectory() as tmp:
        creds = _get(sim.url, "/_sim/credentials")
        assert isinstance(creds, list)
        taken = {_key(c["name"]) for c in creds if c["microtenantId"] == "0"}
        ids = [c["id"] for c in creds
               if c["microtenantId"] == SCOPE and _key(c["name"]) not in taken][: args.credentials]
        if len(ids) < args.credentials:
            raise SystemExit(f"only {len(ids)} movable credentials were seeded")
        work = Path(tmp)
        (work / "ids.txt").write_text("\n".join(ids) + "\n")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ZPA_", "ZSCALER_", "BULKCRED_"))}
        env.update({"BULKCRED_BASE_URL": sim.url, "ZPA_CUSTOMER_ID": cfg.customer_id,
                    "ZPA_CLIENT_ID": cfg.client_id, "ZPA_CLIENT_SECRET": cfg.client_secret,
                    "BULKCRED_WRITE_RATE": args.write_rate, "BULKCRED_READ_RATE": args.read_rate})
        print(f"migrate {len(ids)} credentials, write ceiling {args.write_rate}"
              f" ({rate.per_second:g}/s), read {args.read_rate}, added latency {lat} ms")
        print(f"{'direction':>16} {'moves':>5} {'wall s':>7} {'N/rate s':>8} {'writes/s':>8}"
              f" {'of ceiling':>10} {'429s':>5} {'max/window':>10} {'in place':>9}")
        for src, dst in ((SCOPE, "0"), ("0", SCOPE)):
            r = one_way(sim.url, env, work, src, dst, ids, rate)
            print(f"{r['direction']:>16} {r['moves']:>5} {r['wall_s']:>7.2f} {r['ideal_s']:>8.2f}"
                  f" {r['achieved_per_s']:>8.2f} {r['ratio']:>10.1%} {r['throttled']:>5}"
                  f" {r['max_in_window']:>6}/{rate.count:<3} {r['in_place']:>5}/{len(ids)}")


if __name__ == "__main__":
    main()
