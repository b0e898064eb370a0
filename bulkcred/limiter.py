"""Per-tenant pacing of the ``read`` (GET) and ``write`` (POST/PUT/DELETE) classes.

Guarantee: no more than N requests of a class in any sliding window of T seconds (plus
a margin), sends evenly spaced, and a server-ordered pause that holds back every waiter.
"""

from __future__ import annotations

import gc
import logging
import math
import time
import weakref
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import AsyncIterator, Awaitable, Callable, ClassVar, Final, Mapping

import anyio

from .config import DEFAULT_READ_RATE, DEFAULT_WRITE_RATE, Rate
from .errors import UsageError, WaitTooLong

__all__ = [
    "CLASSES",
    "Limiter",
    "LimiterStats",
    "request_class",
]

log = logging.getLogger("bulkcred.limiter")

#: the two request classes ZPA limits separately
CLASSES: Final = ("read", "write")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def request_class(method: str) -> str:
    """``read`` for GET (and HEAD), ``write`` for everything else (a move is a POST)."""
    return "read" if method.upper() in ("GET", "HEAD") else "write"


def _loop_clock() -> float:
    # the event loop's clock (time.monotonic on a standard loop), so a test loop with
    # virtual time moves the limiter too; outside a loop (a stats() call) plain monotonic
    try:
        return anyio.current_time()
    except RuntimeError:
        return time.monotonic()


@dataclass(frozen=True, slots=True)
class LimiterStats:
    """A snapshot of a limiter; per-class mappings are keyed ``read`` / ``write``."""

    rate: Mapping[str, Rate]
    #: slots handed out (each one a request sent)
    acquired: Mapping[str, int]
    #: callers waiting for a slot right now
    waiting: Mapping[str, int]
    #: the clock time a server-ordered pause ends, or None when not paused
    paused_until: Mapping[str, float | None]
    #: distinct pauses (a 429 arriving during a pause extends it; it is not a new one)
    pauses: int
    #: seconds the classes have spent paused, summed over classes
    paused_seconds: float
    #: the most sends seen in any window of T seconds (a self-check: never above N)
    max_in_window: Mapping[str, int]


class _Lane:
    """One class: its window log, its pacing and its pause."""

    def __init__(self, rate: Rate, margin_fraction: float, min_margin: float) -> None:
        self.rate = rate
        self.margin = max(rate.per * margin_fraction, min_margin)
        # even spacing at the limit stretched by the margin: N sends span T + margin
        self.interval = (rate.per + self.margin) / rate.count
        self.log: deque[float] = deque()
        self.paused_until = -math.inf
        self.lock = anyio.Lock()
        self.acquired = 0
        self.waiting = 0
        self.pauses = 0
        self.paused_seconds = 0.0
        self.max_in_window = 0

    def earliest(self) -> float:
        """The first clock time the next send may happen."""
        t = self.paused_until
        if self.log:
            t = max(t, self.log[-1] + self.interval)
        n = self.rate.count
        if len(self.log) >= n:
            # the hard guarantee, checked apart from the pacing so it does not rest on
            # the spacing arithmetic
            t = max(t, self.log[-n] + self.rate.per + self.margin)
        return t

    def record(self, now: float) -> None:
        self.log.append(now)
        horizon = now - (self.rate.per + self.margin)
        while self.log and self.log[0] <= horizon:
            self.log.popleft()
        in_window = 0
        for t in reversed(self.log):
            if t <= now - self.rate.per:
                break
            in_window += 1
        self.max_in_window = max(self.max_in_window, in_window)
        self.acquired += 1


class Limiter:
    """Paces one tenant's requests; share one per tenant (see :meth:`for_tenant`).

    ``margin`` is the safety margin as a fraction of each window (at least
    ``min_margin`` seconds). ``clock`` and ``sleep`` default to the event loop's.
    """

    # weak: a tenant's limiter lives while a client paces by it; a limiter nobody uses
    # any more does not pin that base URL's rates for the rest of the process
    _registry: ClassVar[weakref.WeakValueDictionary[tuple[str, str], Limiter]] = (
        weakref.WeakValueDictionary())

    def __init__(
        self,
        read: Rate = DEFAULT_READ_RATE,
        write: Rate = DEFAULT_WRITE_RATE,
        *,
        margin: float = 0.02,
        min_margin: float = 0.02,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        if margin < 0 or min_margin < 0:
            raise UsageError("the limiter's safety margin cannot be negative")
        self._lanes = {
            "read": _Lane(read, margin, min_margin),
            "write": _Lane(write, margin, min_margin),
        }
        self._clock = clock or _loop_clock
        self._sleep = sleep or anyio.sleep

    @classmethod
    def for_tenant(
        cls,
        base_url: str,
        customer_id: str,
        *,
        read: Rate = DEFAULT_READ_RATE,
        write: Rate = DEFAULT_WRITE_RATE,
    ) -> Limiter:
        """The process-wide limiter of a tenant, so clients on one tenant share its limit.

        Asking again with other rates while it is in use is a usage error: one tenant
        has one limit.
        """
        key = (base_url.strip().rstrip("/").lower(), str(customer_id).strip())
        limiter = cls._registry.get(key)
        if limiter is not None and (limiter.rate("read"), limiter.rate("write")) != (read, write):
            # a closed client caught in a reference cycle may still hold the old one
            del limiter
            gc.collect()
            limiter = cls._registry.get(key)
        if limiter is None:
            limiter = cls._registry[key] = cls(read, write)
        elif (limiter.rate("read"), limiter.rate("write")) != (read, write):
            raise UsageError(
                f"tenant {key[1]} at {key[0]} is already paced at read {limiter.rate('read')},"
                f" write {limiter.rate('write')}; it cannot also be paced at read {read},"
                f" write {write}"
            )
        return limiter

    def _lane(self, cls: str) -> _Lane:
        try:
            return self._lanes[cls]
        except KeyError:
            raise ValueError(f"unknown request class {cls!r}: use 'read' or 'write'") from None

    def rate(self, cls: str) -> Rate:
        return self._lane(cls).rate

    def interval(self, cls: str) -> float:
        """Seconds between two sends of a class at full speed."""
        return self._lane(cls).interval

    async def acquire(self, cls: str, *, max_pause: float | None = None) -> float:
        """Wait until a request of ``cls`` may be sent; record and return its send time.

        Waiters are served first come, first served. With ``max_pause``, a server-ordered
        pause that still has longer than that to run raises :class:`WaitTooLong`.
        """
        lane = self._lane(cls)
        lane.waiting += 1
        try:
            async with lane.lock:
                while True:
                    now = self._clock()
                    if max_pause is not None and lane.paused_until - now > max_pause:
                        raise WaitTooLong(
                            f"{cls} requests are paused by the server for another"
                            f" {lane.paused_until - now:.0f} s, longer than {max_pause:g} s",
                            wait=lane.paused_until - now,
                        )
                    at = lane.earliest()
                    if at <= now:
                        break
                    # re-checked after waking: a pause may have moved the time on, and a
                    # loop may wake a timer a hair early
                    await self._sleep(at - now)
                lane.record(now)
                return now
        finally:
            lane.waiting -= 1

    @asynccontextmanager
    async def slot(self, cls: str) -> AsyncIterator[float]:
        """``async with limiter.slot("write"):`` sends the request inside the block."""
        yield await self.acquire(cls)

    def pause(self, cls: str, seconds: float) -> float:
        """Hold back every request of ``cls`` until ``seconds`` (plus the margin) from now.

        Returns how many seconds this call added to the pause (0 if one already covered it).
        """
        lane = self._lane(cls)
        now = self._clock()
        until = now + max(0.0, seconds) + lane.margin
        if until <= lane.paused_until:
            return 0.0
        added = until - max(lane.paused_until, now)
        if lane.paused_until <= now:
            lane.pauses += 1
        lane.paused_until = until
        lane.paused_seconds += added
        log.debug("%s class paused for %.3f s", cls, until - now)
        return added

    def paused_for(self, cls: str) -> float:
        """Seconds left in the server-ordered pause of ``cls`` (0 when not paused)."""
        return max(0.0, self._lane(cls).paused_until - self._clock())

    def eta(self, cls: str, remaining: int) -> float:
        """Seconds the limit implies for ``remaining`` more requests of ``cls``."""
        if remaining <= 0:
            return 0.0
        lane = self._lane(cls)
        now = self._clock()
        return max(0.0, lane.earliest() - now) + (remaining - 1) * lane.interval

    def stats(self) -> LimiterStats:
        now = self._clock()
        lanes = self._lanes.items()
        return LimiterStats(
            rate=MappingProxyType({c: ln.rate for c, ln in lanes}),
            acquired=MappingProxyType({c: ln.acquired for c, ln in lanes}),
            waiting=MappingProxyType({c: ln.waiting for c, ln in lanes}),
            paused_until=MappingProxyType(
                {c: (ln.paused_until if ln.paused_until > now else None) for c, ln in lanes}
            ),
            pauses=sum(ln.pauses for _, ln in lanes),
            paused_seconds=sum(ln.paused_seconds for _, ln in lanes),
            max_in_window=MappingProxyType({c: ln.max_in_window for c, ln in lanes}),
        )

    def __repr__(self) -> str:
        return f"Limiter(read={self.rate('read')}, write={self.rate('write')})"
