"""Limiter: the sliding-window guarantee, pacing, pauses, classes, the tenant registry.

Also home of :class:`VirtualTimeLoop`, the event loop the client tests run on.
"""

from __future__ import annotations

import asyncio
import math
import selectors

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkcred.config import Rate
from bulkcred.errors import UsageError, WaitTooLong
from bulkcred.limiter import Limiter, request_class

EPS = 1e-9


class _JumpingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """When nothing is ready and the loop would sleep until its next timer, jump there."""

    def __init__(self, now: list[float]) -> None:
        super().__init__()
        self._now = now

    def select(self, timeout: float | None = None):  # type: ignore[no-untyped-def]
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timers: only a thread can wake the loop
            return super().select(None)
        self._now[0] += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when every task waits on a timer.

    Sleeps cost no real time, and the order of events is exactly what the timers say.
    """

    def __init__(self) -> None:
        self._virtual_now = [0.0]
        super().__init__(_JumpingSelector(self._virtual_now))

    def time(self) -> float:
        return self._virtual_now[0]


VIRTUAL = ("asyncio", {"loop_factory": VirtualTimeLoop})


@pytest.fixture
def anyio_backend():  # type: ignore[no-untyped-def]
    return VIRTUAL


def run_virtual(fn, *args):  # type: ignore[no-untyped-def]
    return anyio.run(fn, *args, backend="asyncio",
                     backend_options={"loop_factory": VirtualTimeLoop})


def assert_window(sends: list[float], rate: Rate) -> None:
    s = sorted(sends)
    n = rate.count
    for i in range(len(s) - n):
        assert s[i + n] - s[i] >= rate.per - EPS, (i, s[i], s[i + n])


# -- the guarantee, for any arrival pattern ------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(1, 25),
    per=st.sampled_from([0.05, 0.5, 1.0, 10.0, 60.0]),
    gaps=st.lists(st.floats(0, 2.0, allow_nan=False), min_size=1, max_size=60),
    pauses=st.lists(st.tuples(st.floats(0, 30.0), st.floats(0, 20.0)), max_size=3),
)
def test_no_window_holds_more_than_n(count, per, gaps, pauses):  # type: ignore[no-untyped-def]
    rate = Rate(count, per)

    async def scenario():  # type: ignore[no-untyped-def]
        lim = Limiter(read=rate, write=rate)
        sends: list[tuple[float, float]] = []
        windows: list[tuple[float, float]] = []

        async def caller(at: float) -> None:
            await anyio.sleep(at)
            arrived = anyio.current_time()
            sends.append((arrived, await lim.acquire("write")))

        async def pauser(at: float, seconds: float) -> None:
            await anyio.sleep(at)
            now = anyio.current_time()
            lim.pause("write", seconds)
            windows.append((now, now + seconds))

        async with anyio.create_task_group() as tg:
            at = 0.0
            for gap in gaps:
                at += gap * per
                tg.start_soon(caller, at)
            for p_at, seconds in pauses:
                tg.start_soon(pauser, p_at, seconds)
        return sends, windows, lim

    sends, windows, lim = run_virtual(scenario)
    times = [s for _, s in sends]
    assert len(times) == len(gaps)
    assert_window(times, rate)
    # the margin too: N+1 sends never fit in T + 2 % (at least 20 ms)
    margin = max(0.02 * per, 0.02)
    s = sorted(times)
    for i in range(len(s) - count):
        assert s[i + count] - s[i] >= per + margin - EPS
    # evenly paced: never two sends closer than the interval
    for a, b in zip(s, s[1:]):
        assert b - a >= lim.interval("write") - EPS
    for arrived, sent in sends:
        assert sent >= arrived - EPS
    for p_start, p_end in windows:
        for t in times:
            assert t <= p_start + EPS or t >= p_end + margin - EPS
    assert lim.stats().max_in_window["write"] <= count


# -- pauses ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_pause_holds_back_every_waiter_and_restart_is_paced() -> None:
    lim = Limiter(write=Rate(10, 10.0))
    sends: list[float] = []

    async def caller() -> None:
        sends.append(await lim.acquire("write"))

    t0 = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for _ in range(12):
            tg.start_soon(caller)
        await anyio.sleep(2.5)  # three have gone out (t0, +1.02, +2.04); nine wait
        assert lim.stats().waiting["write"] == 9
        lim.pause("write", 13.0)
        pause_end = anyio.current_time() + 13.0 + 0.2
    assert len(sends) == 12
    early = [s for s in sends if s < t0 + 2.5]
    late = sorted(s for s in sends if s >= t0 + 2.5)
    assert len(early) == 3 and len(late) == 9
    assert late[0] == pytest.approx(pause_end)  # nothing before the server's time
    gaps = [b - a for a, b in zip(late, late[1:])]
    assert min(gaps) == pytest.approx(1.02)  # paced, not a stampede of nine
    st_ = lim.stats()
    assert st_.pauses == 1
    assert st_.paused_until["write"] is None  # over by now


@pytest.mark.anyio
async def test_pause_during_pause_extends_not_counts() -> None:
    lim = Limiter()
    assert lim.pause("write", 5.0) == pytest.approx(5.2)
    await anyio.sleep(1.0)
    assert lim.pause("write", 2.0) == 0.0  # already covered
    assert lim.pause("write", 10.0) == pytest.approx(10.2 - 4.2)
    st_ = lim.stats()
    assert st_.pauses == 1
    assert st_.paused_seconds == pytest.approx(11.2)
    assert st_.paused_until["write"] == pytest.approx(anyio.current_time() + 10.2)
    assert lim.paused_for("write") == pytest.approx(10.2)
    assert lim.paused_for("read") == 0.0


@pytest.mark.anyio
async def test_max_pause_raises_wait_too_long() -> None:
    lim = Limiter()
    lim.pause("write", 593.0)
    with pytest.raises(WaitTooLong) as info:
        await lim.acquire("write", max_pause=300.0)
    assert info.value.wait == pytest.approx(593.2)
    t = anyio.current_time()
    assert await lim.acquire("write", max_pause=600.0) == pytest.approx(t + 593.2)


@pytest.mark.anyio
async def test_reads_and_writes_are_independent() -> None:
    lim = Limiter(read=Rate(20, 10.0), write=Rate(10, 10.0))
    t0 = anyio.current_time()
    lim.pause("write", 60.0)
    reads = [await lim.acquire("read") for _ in range(3)]
    assert reads == pytest.approx([t0, t0 + 0.51, t0 + 1.02])
    assert await lim.acquire("write") == pytest.approx(t0 + 60.2)
    st_ = lim.stats()
    assert st_.acquired == {"read": 3, "write": 1}
    assert st_.rate == {"read": Rate(20, 10.0), "write": Rate(10, 10.0)}


@pytest.mark.anyio
async def test_slot_and_eta() -> None:
    lim = Limiter(write=Rate(10, 10.0))
    assert lim.eta("write", 0) == 0.0
    assert lim.eta("write", 10) == pytest.approx(9 * 1.02)
    async with lim.slot("write") as sent:
        assert sent == anyio.current_time()
    assert lim.eta("write", 1) == pytest.approx(1.02)
    lim.pause("write", 30.0)
    assert lim.eta("write", 2) == pytest.approx(30.2 + 1.02)


@pytest.mark.anyio
async def test_cancelled_waiter_leaves_the_queue_working() -> None:
    lim = Limiter(write=Rate(1, 1.0))
    sends: list[float] = []

    async def caller() -> None:
        sends.append(await lim.acquire("write"))

    await lim.acquire("write")
    async with anyio.create_task_group() as tg:
        with anyio.move_on_after(0.1):
            await lim.acquire("write")  # cancelled while it waits
        tg.start_soon(caller)
        tg.start_soon(caller)
    assert len(sends) == 2
    assert sends[1] - sends[0] == pytest.approx(1.02)


def test_injected_clock_and_sleep_need_no_event_loop_time() -> None:
    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    lim = Limiter(write=Rate(2, 1.0), clock=lambda: now[0], sleep=sleep)

    async def main() -> list[float]:
        return [await lim.acquire("write") for _ in range(4)]

    sends = anyio.run(main)  # a real loop: nothing actually waits
    assert sends == pytest.approx([100.0, 100.51, 101.02, 101.53])
    assert slept == pytest.approx([0.51, 0.51, 0.51])


def test_a_shared_limiter_survives_event_loops() -> None:
    lim = Limiter(write=Rate(1, 0.05))

    async def burst() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(lim.acquire, "write")

    anyio.run(burst)
    anyio.run(burst)  # a second loop: nothing bound to the first
    assert lim.stats().acquired["write"] == 6


def test_registry_one_limiter_per_tenant() -> None:
    a = Limiter.for_tenant("https://Tenant-A.example/", "111")
    assert Limiter.for_tenant("https://tenant-a.example", "111") is a
    assert Limiter.for_tenant("https://tenant-a.example", "222") is not a
    assert Limiter.for_tenant("https://tenant-b.example", "111") is not a
    with pytest.raises(UsageError, match="already paced"):
        Limiter.for_tenant("https://tenant-a.example", "111", write=Rate(5, 10.0))


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown request class"):
        Limiter().pause("delete", 1.0)
    with pytest.raises(UsageError):
        Limiter(margin=-0.1)


def test_request_class() -> None:
    assert request_class("GET") == "read"
    assert request_class("get") == "read"
    for method in ("POST", "PUT", "DELETE"):
        assert request_class(method) == "write"


def test_virtual_loop_moves_only_on_timers() -> None:
    async def main() -> tuple[float, float]:
        t0 = anyio.current_time()
        await anyio.sleep(3600)
        return t0, anyio.current_time()

    t0, t1 = run_virtual(main)
    assert t1 - t0 == pytest.approx(3600)
    assert not math.isinf(t1)


def test_registry_forgets_a_tenant_no_client_uses() -> None:
    """A limiter nobody holds any more does not pin its base URL's rates (a new server
    on a reused port, or a job rerun at another rate in the same process)."""
    first = Limiter.for_tenant("http://127.0.0.1:9", "1", read=Rate(5, 1), write=Rate(2, 1))
    assert first.rate("write") == Rate(2, 1)
    del first
    again = Limiter.for_tenant("http://127.0.0.1:9", "1", read=Rate(9, 1), write=Rate(3, 1))
    assert again.rate("write") == Rate(3, 1)
    with pytest.raises(UsageError):
        Limiter.for_tenant("http://127.0.0.1:9", "1", read=Rate(5, 1), write=Rate(2, 1))
