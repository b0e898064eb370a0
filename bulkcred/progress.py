"""Progress for long jobs: a rich bar on a terminal, plain periodic lines otherwise.

The ETA comes from the rate limit (the limiter knows the pace), not from guesswork.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Callable

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from .runner import REJECT_ERROR_ID, ItemResult

__all__ = ["JobProgress", "set_line_format", "ReadProgress"]


_LINE_FORMAT = "text"


def set_line_format(fmt: str) -> None:
    """``json``: the plain progress lines (stderr without a terminal) become one JSON
    object a line, like the logs beside them (``--log-format json``)."""
    global _LINE_FORMAT
    _LINE_FORMAT = fmt


def _emit(stream: IO[str], text: str, **fields: object) -> None:
    if _LINE_FORMAT == "json":
        doc = {"ts": round(time.time(), 3), "level": "info", "logger": "bulkcred.progress",
               "msg": text, **fields}
        text = orjson.dumps(doc).decode()
    print(text, file=stream, flush=True)


def _fmt_secs(s: float) -> str:
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class JobProgress:
    """Counts items, shows done/failed (and rejected/skipped), the limit-implied ETA and
    server pauses."""

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
        self.rejected = 0
        self.skipped = 0
        self._last_line = 0.0
        self._paused_until = 0.0
        self._note = ""

    # -- RotateProgress protocol ------------------------------------------------------
    def start(self, total: int, already: int, eta: float, *, failed: int = 0,
              rejected: int = 0, skipped: int = 0) -> None:
        """``already``: the items finished before this run, ``failed``, ``rejected`` and
        ``skipped`` of them included."""
        self.total = total
        self.failed, self.rejected, self.skipped = failed, rejected, skipped
        self.done = already - failed - rejected - skipped
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
                self.label, total=total, completed=already, failed=self._bar_outcomes(),
                eta=_fmt_secs(eta),
                note="",
            )
        else:
            self._line(force=True)

    def advance(self, key: str, result: ItemResult) -> None:
        if result.status == "skipped":
            self.skipped += 1
        elif result.status != "failed":
            self.done += 1
        elif result.error_id == REJECT_ERROR_ID:
            self.rejected += 1
        else:
            self.failed += 1
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
    @property
    def finished(self) -> int:
        return self.done + self.failed + self.rejected + self.skipped

    def outcomes(self) -> str:
        """The finished items that are not done: "1 failed, 29 rejected, 2 skipped"."""
        return ", ".join([f"{self.failed} failed"] + [
            f"{n} {what}" for n, what in ((self.rejected, "rejected"), (self.skipped, "skipped"))
            if n])

    def _bar_outcomes(self) -> str:
        return ("[red]" if self.failed else "") + self.outcomes()

    def eta(self) -> float:
        remaining = max(0, self.total - self.finished)
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
                completed=self.finished,
                failed=self._bar_outcomes(),
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
        eta = self.eta()
        _emit(
            self._stream,
            f"{self.label}: {self.finished}/{self.total}"
            f" ({self.outcomes()}), ETA {_fmt_secs(eta)}" + (f", {note}" if note else ""),
            job=self.label, done=self.done, failed=self.failed, rejected=self.rejected,
            skipped=self.skipped, total=self.total,
            eta=round(eta, 1),
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
                _emit(self._stream, self._text(), job=self.label, read=self.credentials)

    def finish(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self._enabled:
            _emit(self._stream, self._text(), job=self.label, read=self.credentials)
