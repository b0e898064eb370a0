"""Per-class rate limiting (sliding or ZPA's fixed window) and an exact window meter."""

from __future__ import annotations

import math
from collections import deque

from .config import Rate

__all__ = ["ClassLimiter", "WindowMeter", "format_retry_after"]


class WindowMeter:
    """The most accepted requests seen in any sliding window of ``window`` seconds.

    Every window's count is largest when it ends on one of its own requests, so
    counting the window ending at each accepted request is exact.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self.max_seen = 0
        self._times: deque[float] = deque()

    def add(self, now: float) -> None:
        times = self._times
        times.append(now)
        while times[0] <= now - self.window:
            times.popleft()
        self.max_seen = max(self.max_seen, len(times))

    def reset(self) -> None:
        self.max_seen = 0
        self._times.clear()


class ClassLimiter:
    """Admits at most ``rate.limit`` requests per ``rate.window``; rejected ones take no slot.

    ``sliding``: no more than N in any window (t-T, t]. ``fixed``: a window opens at
    the first call after the previous one ended, as ZPA's documentation describes.
    """

    def __init__(self, rate: Rate, mode: str) -> None:
        self.rate = rate
        self.mode = mode
        self._accepted: deque[float] = deque()
        self._window_start = -math.inf
        self._window_count = 0

    def admit(self, now: float) -> float | None:
        """None when admitted (a slot is taken), else the seconds until a slot frees."""
        limit, window = self.rate.limit, self.rate.window
        if self.mode == "fixed":
            if now >= self._window_start + window:
                self._window_start, self._window_count = now, 0
            if self._window_count >= limit:
                return self._window_start + window - now
            self._window_count += 1
            return None
        accepted = self._accepted
        while accepted and accepted[0] <= now - window:
            accepted.popleft()
        if len(accepted) >= limit:
            return accepted[0] + window - now
        accepted.append(now)
        return None


def format_retry_after(seconds: float, window: float) -> str:
    """ZPA writes whole seconds plus ``s``; windows under 1 s get millisecond fractions."""
    if window < 1.0:
        return f"{max(math.ceil(seconds * 1000), 1) / 1000:g}s"
    return f"{max(math.ceil(seconds), 1)}s"
