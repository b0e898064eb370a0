"""Property tests: replay after truncation at any byte, and random intent/outcome histories."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkcred.journal import Journal, JournalState, replay

HEADER: dict[str, Any] = {"kind": "rotate", "spec": {"select": ["type=SSH_KEY"]},
                          "tenant": {"baseUrl": "http://127.0.0.1:1", "customerId": "7"}}
OUTCOMES = ("done", "failed", "skipped")


@dataclass
class Model:
    """The journal's meaning, written the plain way, one record at a time."""

    header: bool = False
    planned: bool = False
    unsealed: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    events: int = 0

    def feed(self, rec: dict[str, Any]) -> None:
        t = rec["t"]
        if t == "header":
            self.header = True
        elif t == "item":
            self.unsealed.append(rec["key"])
        elif t == "planned":
            self.items, self.unsealed, self.planned = self.unsealed, [], True
            self.status = dict.fromkeys(self.items, "pending")
            self.attempts = dict.fromkeys(self.items, 0)
        elif t == "intent":
            self.status[rec["key"]] = "uncertain"
            self.attempts[rec["key"]] += 1
        elif t == "outcome":
            self.status[rec["key"]] = rec["status"]
        else:
            self.events += 1

    def matches(self, s: JournalState) -> None:
        assert (s.header is not None) == self.header
        assert s.planned == self.planned
        assert list(s.items) == self.items  # an unsealed plan is discarded
        assert {k: v.status for k, v in s.states.items()} == self.status
        assert {k: v.attempts for k, v in s.states.items()} == self.attempts
        assert len(s.events) == self.events


Step = tuple[str, int, str]
steps = st.lists(st.tuples(st.sampled_from(["intent", "outcome", "event"]),
                           st.integers(0, 4), st.sampled_from(OUTCOMES)), max_size=25)


async def write_journal(p: Path, n_items: int, history: list[Step]) -> list[str]:
    keys = [f"id{i}" for i in range(n_items)]
    async with await Journal.open(p, header=HEADER) as j:
        await j.event("planning")
        await j.write_plan([(k, {"name": f"cred {k}", "n": i}) for i, k in enumerate(keys)])
        for kind, idx, status in history:
            if kind == "event" or not keys:
                await j.event("note", {"i": idx})
                continue
            key = keys[idx % len(keys)]
            if kind == "intent":
                await j.intent(key, "update", attempt=j.state.states[key].attempts + 1)
            else:
                await j.outcome(key, status, http=204 if status == "done" else None)  # type: ignore[arg-type]
    return keys


async def resume(p: Path, keys: list[str], prefix: Model) -> None:
    async with await Journal.open(p, header=HEADER) as j:
        prefix.header = True  # written again if it was torn
        prefix.matches(j.state)
        if not j.state.planned:
            await j.write_plan([(k, {}) for k in keys])
        for k in keys:
            await j.intent(k, "update", attempt=j.state.states[k].attempts + 1)
        if keys:
            await j.outcome(keys[0], "done", http=204)


# sync tests around anyio.run: hypothesis draws stay outside the event loop
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_items=st.integers(0, 5), history=steps)
def test_random_histories_replay_to_the_right_statuses(n_items: int,
                                                       history: list[Step]) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "j.journal"
        anyio.run(write_journal, p, n_items, history)
        model = Model()
        for line in p.read_bytes().splitlines():
            model.feed(orjson.loads(line))
        model.matches(replay(p))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_items=st.integers(0, 4), history=steps, raw_cut=st.integers(0, 1 << 20),
       junk=st.binary(max_size=12).filter(lambda b: b"\n" not in b))
def test_truncation_at_any_byte_replays_a_prefix_and_resumes(
        n_items: int, history: list[Step], raw_cut: int, junk: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "j.journal"
        keys = anyio.run(write_journal, p, n_items, history)
        full = p.read_bytes()

        # every status each key held at some point of the full history
        reachable: dict[str, set[str]] = {k: {"pending"} for k in keys}
        whole = Model()
        for line in full.splitlines():
            whole.feed(orjson.loads(line))
            for k, s in whole.status.items():
                reachable[k].add(s)

        # the cut is drawn apart from the file's length, which varies with the clock
        cut = raw_cut % (len(full) + 1)
        torn = full[:cut]
        if cut > full.index(b"\n"):
            torn += junk  # a power cut can leave junk instead of a clean prefix of the record
        p.write_bytes(torn)

        prefix = Model()
        pos = 0
        while (nl := full.find(b"\n", pos)) != -1 and nl < cut:
            prefix.feed(orjson.loads(full[pos:nl]))
            pos = nl + 1
        state = replay(p)  # a torn last line never raises
        prefix.matches(state)
        for k, st_ in state.states.items():
            assert st_.status in reachable[k]

        anyio.run(resume, p, keys, prefix)
        after = replay(p)
        assert after.planned and list(after.items) == keys
        assert after.keys_in("uncertain") == keys[1:]
        assert after.keys_in("done") == keys[:1]
        assert all(line.startswith(b'{"t":') for line in p.read_bytes().splitlines())
