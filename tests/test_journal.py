"""The checkpoint journal: records, replay rules, header checks, locking, repair, guards."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

import bulkcred.journal as journal_mod
from bulkcred.errors import JournalCorrupt, JournalError, JournalLocked, JournalMismatch
from bulkcred.journal import Journal, replay

pytestmark = pytest.mark.anyio

HEADER: dict[str, Any] = {
    "kind": "rotate",
    "spec": {"select": ["name=db-*"], "microtenant": "0"},
    "tenant": {"baseUrl": "https://config.private.zscaler.com", "customerId": "216196257331281920"},
}
PLAN = [("11262", {"name": "db-1"}), ("11263", {"name": "db-2"}), ("row:12", {"name": "db-3"})]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "job.journal"


def records(p: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in p.read_bytes().splitlines()]


async def test_records_and_state(path: Path) -> None:
    async with await Journal.open(path, header=HEADER) as j:
        assert not j.state.planned and j.state.header["kind"] == "rotate"
        await j.write_plan(PLAN)
        assert j.state.counts() == {"pending": 3, "uncertain": 0, "done": 0, "failed": 0,
                                    "skipped": 0}
        await j.intent("11262", "update", data={"fingerprint": "k1:ab12"})
        assert j.state.status("11262") == "uncertain"
        await j.outcome("11262", "done", http=204)
        await j.intent("11263", "update")
        await j.outcome("11263", "failed", http=400, error_id="bad.request", reason="nope")
        await j.outcome("row:12", "skipped", reason="unchanged")
        await j.event("verified", {"confirmed": 1})
        assert j.state.keys_in("done") == ["11262"]
        assert j.state.keys_in("failed") == ["11263"]
        assert j.state.keys_in("skipped") == ["row:12"]
    recs = records(path)
    assert [r["t"] for r in recs] == ["header", "item", "item", "item", "planned", "intent",
                                      "outcome", "intent", "outcome", "outcome", "event"]
    head = recs[0]
    assert head["format"] == 1 and head["version"] == "0.1.0"
    assert isinstance(head["created"], float)
    assert {k: head[k] for k in ("kind", "spec", "tenant")} == HEADER
    assert recs[1] == {"t": "item", "key": "11262", "data": {"name": "db-1"}}
    assert recs[4] == {"t": "planned", "count": 3}
    intent = recs[5]
    assert intent["op"] == "update" and intent["attempt"] == 1
    assert intent["data"] == {"fingerprint": "k1:ab12"}
    failed = recs[8]
    assert (failed["status"], failed["http"], failed["errorId"], failed["reason"]) == (
        "failed", 400, "bad.request", "nope")
    assert "http" not in recs[9] and "errorId" not in recs[9]
    assert recs[10]["name"] == "verified" and recs[10]["data"] == {"confirmed": 1}

    state = replay(path)
    assert list(state.items) == ["11262", "11263", "row:12"]
    assert state.items["11263"] == {"name": "db-2"}
    st = state.states["11263"]
    assert st.attempts == 1 and st.last_intent["op"] == "update"
    assert st.last_outcome["errorId"] == "bad.request"
    assert state.states["row:12"].attempts == 0
    assert [e["name"] for e in state.events] == ["verified"]


async def test_a_retry_after_an_outcome_is_uncertain_again(path: Path) -> None:
    async with await Journal.open(path, header=HEADER) as j:
        await j.write_plan(PLAN)
        await j.intent("11262", "update")
        await j.outcome("11262", "failed", http=503)
        await j.intent("11262", "update", attempt=2)
    state = replay(path)
    st = state.states["11262"]
    assert st.status == "uncertain" and st.attempts == 2
    assert st.last_intent["attempt"] == 2 and st.last_outcome["http"] == 503


async def test_file_is_0600_whatever_the_umask(path: Path) -> None:
    old = os.umask(0)
    try:
        async with await Journal.open(path, header=HEADER):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_resume_keeps_state_and_accepts_same_header(path: Path) -> None:
    async with await Journal.open(path, header=HEADER) as j:
        await j.write_plan(PLAN)
        await j.intent("11262", "update")
    # a tuple where the journal has a list, a later version and time: still the same job
    again = {**HEADER, "spec": {"select": ("name=db-*",), "microtenant": "0"},
             "version": "0.2.0", "created": 1.0}
    async with await Journal.open(path, header=again) as j:
        assert j.state.planned and j.state.status("11262") == "uncertain"
        await j.outcome("11262", "done", http=204)
    assert replay(path).status("11262") == "done"
    assert sum(r["t"] == "header" for r in records(path)) == 1


async def test_header_mismatch_names_each_field(path: Path) -> None:
    async with await Journal.open(path, header=HEADER):
        pass
    other = {"kind": "import", "spec": {"select": ["name=web-*"], "microtenant": "0"},
             "tenant": {**HEADER["tenant"], "customerId": "42"}}
    with pytest.raises(JournalMismatch) as info:
        await Journal.open(path, header=other)
    msg = str(info.value)
    assert str(path) in msg
    assert "kind" in msg and "spec.select" in msg and "tenant.customerId" in msg
    assert "microtenant" not in msg.replace("spec.select", "")  # unchanged fields not named
    assert "--journal" in msg and "rerun the original command" in msg


async def test_header_needs_identity_fields(path: Path) -> None:
    with pytest.raises(ValueError, match="tenant"):
        await Journal.open(path, header={"kind": "rotate", "spec": {}})
    assert not path.exists()


async def test_second_open_in_this_process_is_locked(path: Path) -> None:
    async with await Journal.open(path, header=HEADER):
        with pytest.raises(JournalLocked):
            await Journal.open(path, header=HEADER)
    async with await Journal.open(path, header=HEADER):
        pass  # closing released the lock


async def test_another_process_holding_it_is_named(path: Path) -> None:
    holder = textwrap.dedent(f"""
        import sys, anyio
        from bulkcred.journal import Journal
        async def main():
            await Journal.open(sys.argv[1], header={HEADER!r})
            print("locked", flush=True)
            sys.stdin.read()
        anyio.run(main)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", holder, str(path)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(JournalLocked) as info:
            await Journal.open(path, header=HEADER)
        msg = str(info.value)
        assert "another bulkcred process" in msg and str(path) in msg
        if sys.platform == "linux":
            assert f"pid {proc.pid}" in msg
    finally:
        proc.kill()  # a dead process leaves no lock behind
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stdin is not None:
            proc.stdin.close()
    async with await Journal.open(path, header=HEADER) as j:
        assert j.state.header is not None


async def test_torn_last_line_is_ignored_and_cut_before_appending(path: Path) -> None:
    async with await Journal.open(path, header=HEADER) as j:
        await j.write_plan(PLAN)
        await j.intent("11262", "update")
    good = path.read_bytes()
    with path.open("ab") as f:
        f.write(b'{"t":"outcome","key":"11262","sta')
    assert replay(path).status("11262") == "uncertain"
    async with await Journal.open(path, header=HEADER) as j:
        assert path.read_bytes() == good
        await j.outcome("11262", "done")
    assert replay(path).status("11262") == "done"


async def test_unreadable_last_line_with_newline_is_torn_too(path: Path) -> None:
    async with await Journal.open(path, header=HEADER) as j:
        await j.write_plan(PLAN)
    with path.open("ab") as f:
        f.write(b"\x00\x00\x00\x00\n")  # what a power cut can leave
    assert replay(path).planned
    async with await Journal.open(path, header=HEADER) as j:
        await j.intent("11262", "update")
    assert replay(path).status("11262") == "uncertain"


async def test_complete_record_without_newline_counts_as_torn(path: Path) -> None:
    async with await Journal.open(path, header=HEADER) as j:
        await j.write_plan(PLAN)
        await j.intent("11262", "update")
    path.write_bytes(path.read_bytes()[:-1])
    assert replay(path).status("11262") == "pending"


async def test_mid_file_corruption_names_the_line(path: Path) -> None:
    async with await Journal.open(path, header=HEADER) as j:
        await j.write_plan(PLAN)
        await j.intent("11262", "update")
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"t":"item","key":\n'
    path.write_bytes(b"".join(lines))
    before = path.read_bytes()
    with pytest.raises(JournalCorrupt, match="line 3"):
        replay(path)
    with pytest.raises(JournalCorrupt, match="line 3"):
        await Journal.open(path, header=HEADER)
    assert path.read_bytes() == before  # a corrupt journal is never "repaired"


def write_lines(p: Path, recs: list[dict[str, Any]]) -> None:
    head = {"t": "header", "format": 1, **HEADER, "version": "0.1.0", "created": 0.0}
    p.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in [head, *recs]))


SEALED = [{"t": "item", "key": "a", "data": {}}, {"t": "planned", "count": 1}]


@pytest.mark.parametrize(("recs", "why"), [
    ([*SEALED, {"t": "outcome", "key": "b", "status": "done"}, {"t": "event", "name": "x"}],
     "not in the plan"),
    ([*SEALED, {"t": "intent", "key": "b", "op": "update", "attempt": 1},
      {"t": "event", "name": "x"}], "not in the plan"),
    ([{"t": "item", "key": "a", "data": {}},
      {"t": "intent", "key": "a", "op": "update", "attempt": 1}, {"t": "planned", "count": 1}],
     "not sealed"),
    ([*SEALED, {"t": "item", "key": "b", "data": {}}, {"t": "event", "name": "x"}],
     "after the plan was sealed"),
    ([{"t": "item", "key": "a", "data": {}}, {"t": "item", "key": "a", "data": {}},
      {"t": "planned", "count": 2}], "twice"),
    ([{"t": "item", "key": "a", "data": {}}, {"t": "planned", "count": 2}], "seal counts"),
    ([*SEALED, {"t": "outcome", "key": "a", "status": "maybe"}], "status"),
    ([*SEALED, {"t": "header", "format": 1}], "second header"),
    ([*SEALED, {"t": "mystery"}], "unknown record type"),
])
def test_inconsistent_records_are_corrupt(path: Path, recs: list[dict[str, Any]],
                                          why: str) -> None:
    write_lines(path, recs)
    with pytest.raises(JournalCorrupt, match=why):
        replay(path)


def test_a_parseable_but_wrong_last_line_is_corrupt_not_torn(path: Path) -> None:
    write_lines(path, [*SEALED, {"t": "outcome", "key": "zzz", "status": "done"}])
    with pytest.raises(JournalCorrupt, match="line 4"):
        replay(path)


async def test_unsealed_plan_is_discarded_and_planned_again(path: Path) -> None:
    write_lines(path, [{"t": "event", "name": "planning"}, {"t": "item", "key": "a", "data": {}},
                       {"t": "item", "key": "b", "data": {}}])
    state = replay(path)
    assert not state.planned and state.items == {} and len(state.events) == 1
    async with await Journal.open(path, header=HEADER) as j:
        assert not j.state.planned
        await j.write_plan([("b", {}), ("c", {})])
        await j.intent("c", "create")
    state = replay(path)
    assert list(state.items) == ["b", "c"] and state.status("c") == "uncertain"
    assert [r["t"] for r in records(path)].count("item") == 2


async def test_a_torn_header_is_written_again(path: Path) -> None:
    path.write_bytes(b'{"t":"header","format":1,"ki')
    assert replay(path).header is None
    async with await Journal.open(path, header=HEADER) as j:
        assert j.state.header["kind"] == "rotate"
    assert records(path)[0]["kind"] == "rotate"


@pytest.mark.parametrize("content", [b"id,password\n1,hunter2\n", b"id,password",
                                     b'{"some": "json"}\n'])
async def test_a_file_that_is_not_a_journal_is_left_alone(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    with pytest.raises(JournalCorrupt):
        await Journal.open(path, header=HEADER)
    assert path.read_bytes() == content


def test_replay_of_a_missing_journal(path: Path) -> None:
    with pytest.raises(JournalError, match="no such journal"):
        replay(path)


async def test_a_directory_or_a_missing_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JournalError):
        await Journal.open(tmp_path, header=HEADER)
    with pytest.raises(JournalError, match="does not exist"):
        await Journal.open(tmp_path / "nope" / "j.journal", header=HEADER)


async def test_misuse_is_refused_before_writing(path: Path) -> None:
    async with await Journal.open(path, header=HEADER) as j:
        with pytest.raises(ValueError, match="before the plan was sealed"):
            await j.intent("11262", "update")
        await j.write_plan(PLAN)
        size = path.stat().st_size
        with pytest.raises(ValueError, match="not in the plan"):
            await j.intent("nope", "update")
        with pytest.raises(ValueError, match="not in the plan"):
            await j.outcome("nope", "done")
        with pytest.raises(ValueError, match="status"):
            await j.outcome("11262", "maybe")  # type: ignore[arg-type]
        with pytest.raises(JournalError, match="already sealed"):
            await j.write_plan(PLAN)
        assert path.stat().st_size == size
    with pytest.raises(ValueError, match="twice"):
        async with await Journal.open(path.with_suffix(".2"), header=HEADER) as j2:
            await j2.write_plan([("a", {}), ("a", {})])


async def test_an_empty_plan_is_a_plan(path: Path) -> None:
    async with await Journal.open(path, header=HEADER) as j:
        await j.write_plan([])
    state = replay(path)
    assert state.planned and state.items == {} and sum(state.counts().values()) == 0


async def test_secret_field_names_are_refused(path: Path) -> None:
    async with await Journal.open(path, header=HEADER) as j:
        await j.write_plan(PLAN)
        size = path.stat().st_size
        for field in ("password", "privateKey", "PASSPHRASE", "client_secret"):
            with pytest.raises(JournalError, match="secrets never go to the journal"):
                await j.intent("11262", "update", data={"body": [{field: "x"}]})
        assert path.stat().st_size == size
        # flags and empty values name a secret without holding one
        await j.intent("11262", "update",
                       data={"password": None, "passphrase": True, "hasPassphrase": True})
    with pytest.raises(JournalError):
        await Journal.open(path.with_suffix(".2"),
                           header={**HEADER, "spec": {"password": "hunter2"}})
    assert not path.with_suffix(".2").exists()


async def test_known_secrets_are_refused(path: Path) -> None:
    known: set[str] = set()
    async with await Journal.open(path, header=HEADER, forbidden=known) as j:
        await j.write_plan(PLAN)
        known.add('Pa"ss-w0rd!')  # a live set: secrets made after open count too
        size = path.stat().st_size
        with pytest.raises(JournalError, match="known secret") as info:
            await j.outcome("11262", "failed", reason='server said Pa"ss-w0rd! is weak')
        assert "Pa" not in str(info.value)
        assert path.stat().st_size == size
        await j.outcome("11262", "done")

    seen: list[bytes] = []

    def forbidden(line: bytes) -> bool:
        seen.append(line)
        return b"s3cr3t" in line

    p2 = path.with_suffix(".2")
    async with await Journal.open(p2, header=HEADER, forbidden=forbidden) as j:
        await j.write_plan(PLAN)
        with pytest.raises(JournalError):
            await j.event("oops", {"note": "s3cr3t"})
    assert seen and all(line.endswith(b"\n") for line in seen)
    assert b"s3cr3t" not in p2.read_bytes()
    with pytest.raises(TypeError):
        await Journal.open(path.with_suffix(".3"), header=HEADER, forbidden="s3cr3t")


async def test_a_failed_write_leaves_no_half_record(path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    j = await Journal.open(path, header=HEADER)
    await j.write_plan(PLAN)
    good = path.read_bytes()

    def half_then_enospc(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_mod, "_write_all", half_then_enospc)
    with pytest.raises(JournalError, match="No space left"):
        await j.intent("11262", "update")
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert j.state.status("11262") == "pending"
    with pytest.raises(JournalError, match="stopped accepting"):
        await j.intent("11262", "update")
    await j.aclose()
    await j.aclose()  # idempotent
    with pytest.raises(JournalError, match="closed"):
        await j.event("late")


async def test_cancelled_append_keeps_state_and_file_in_step(path: Path) -> None:
    async with await Journal.open(path, header=HEADER) as j:
        await j.write_plan(PLAN)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await j.intent("11262", "update")
        assert scope.cancelled_caught
        assert j.state.status("11262") == replay(path).status("11262")

        async def write_many() -> None:
            for key, _ in PLAN:
                await j.intent(key, "update")

        with anyio.move_on_after(0.001):
            await write_many()
        on_disk = replay(path)
        assert {k: s.status for k, s in j.state.states.items()} == {
            k: s.status for k, s in on_disk.states.items()}


async def test_concurrent_appends_are_whole_lines(path: Path) -> None:
    keys = [f"c{i}" for i in range(40)]
    async with await Journal.open(path, header=HEADER) as j:
        await j.write_plan([(k, {"n": i}) for i, k in enumerate(keys)])

        async def one(key: str) -> None:
            await j.intent(key, "update")
            await j.outcome(key, "done", http=204)

        async with anyio.create_task_group() as tg:
            for k in keys:
                tg.start_soon(one, k)
    state = replay(path)
    assert state.keys_in("done") == keys
