"""Progress for long jobs: a rich bar on a terminal, plain periodic lines otherwise.

The ETA comes from the rate limit (the limiter knows the pace), not from guesswork.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from .runner import ItemResult

__all__ = ["JobProgress", "ReadProgress"]


def _fmt_secs(s: float) -> str:
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class JobProgress:
    """Counts items, shows done/failed, the limit-implied ETA and server pauses."""

    def __init__(
        self,
        label: str,
        *,
        per_item_seconds: Callable[[], float],
        stream: IO[str] | None = None,
        interval: float = 10.0,
        enabled: bool = True,
    ) -> None:
        self.label = label
        self._per_item = per_item_seconds
        self._stream = stream or sys.stderr
        self._interval = interval
        self._enabled = enabled
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self.total = 0
        self.done = 0
        self.failed = 0
        self._last_line = 0.0
        self._paused_until = 0.0
        self._note = ""

    # -- RotateProgress protocol ------------------------------------------------------
    def start(self, total: int, already: int, eta: float) -> None:
        self.total = total
        self.done = already
        if not self._enabled:
            return
        if self._tty:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[failed]}"),
                TimeElapsedColumn(),
                TextColumn("ETA {task.fields[eta]}"),
                TextColumn("{task.fields[note]}"),
                console=Console(file=self._stream),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(
                self.label, total=total, completed=already, failed="", eta=_fmt_secs(eta),
                note="",
            )
        else:
            self._line(force=True)

    def advance(self, key: str, result: ItemResult) -> None:
        if result.status == "failed":
            self.failed += 1
        else:
            self.done += 1
        self._refresh()

    def paused(self, cls: str, seconds: float) -> None:
        self._paused_until = time.monotonic() + seconds
        self._note = f"paused by the server for {seconds:.0f} s ({cls})"
        self._refresh(force=True)

    def note(self, text: str) -> None:
        self._note = text
        self._refresh(force=True)

    def finish(self) -> None:
        if self._bar is not None:
            self._refresh()
            self._bar.stop()
            self._bar = None
        elif self._enabled:
            self._line(force=True)

    # -- rendering -------------------------------------------------------------------
    def eta(self) -> float:
        remaining = max(0, self.total - self.done - self.failed)
        wait = max(0.0, self._paused_until - time.monotonic())
        return remaining * self._per_item() + wait

    def _current_note(self) -> str:
        if self._paused_until and time.monotonic() >= self._paused_until:
            self._paused_until = 0.0
            if self._note.startswith("paused"):
                self._note = ""
        return self._note

    def _refresh(self, force: bool = False) -> None:
        if not self._enabled:
            return
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task,
                completed=self.done + self.failed,
                failed=f"[red]{self.failed} failed" if self.failed else "",
                eta=_fmt_secs(self.eta()),
                note=self._current_note(),
            )
        else:
            self._line(force)

    def _line(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_line < self._interval:
            return
        self._last_line = now
        note = self._current_note()
        print(
            f"{self.label}: {self.done + self.failed}/{self.total}"
            f" ({self.failed} failed), ETA {_fmt_secs(self.eta())}"
            + (f", {note}" if note else ""),
            file=self._stream,
            flush=True,
        )


class ReadProgress:
    """Progress of a long read (audit, export): credentials read so far, on stderr.

    No ETA: a listing's size is known only page by page.
    """

    def __init__(self, label: str, *, stream: IO[str] | None = None, interval: float = 10.0,
                 enabled: bool = True) -> None:
        self.label = label
        self._stream = stream or sys.stderr
        self._interval = interval
        self._enabled = enabled
        self._started = time.monotonic()
        self._last_line = 0.0
        self.credentials = 0
        self._note = ""
        tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._status = (Console(file=self._stream).status(self._text())
                        if enabled and tty else None)
        if self._status is not None:
            self._status.start()

    def _text(self) -> str:
        elapsed = _fmt_secs(time.monotonic() - self._started)
        return (f"{self.label}: {self.credentials:,} credentials read in {elapsed}"
                + (f", {self._note}" if self._note else ""))

    def read(self, microtenant: object, credentials: int) -> None:
        self.credentials += credentials
        self._refresh()

    def paused(self, cls: str, seconds: float) -> None:
        self._note = f"paused by the server for {seconds:.0f} s ({cls})"
        self._refresh(force=True)
        self._note = ""

    def _refresh(self, force: bool = False) -> None:
        if self._status is not None:
            self._status.update(self._text())
        elif self._enabled:
            now = time.monotonic()
            if force or now - self._last_line >= self._interval:
                self._last_line = now
                print(self._text(), file=self._stream, flush=True)

    def finish(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self._enabled:
            print(self._text(), file=self._stream, flush=True)
