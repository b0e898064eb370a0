"""The append-only JSON-lines checkpoint journal of a job: header, sealed plan, intents, outcomes.

:class:`Journal` appends under an exclusive file lock; :func:`replay` reads one without it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import anyio
import anyio.to_thread
import orjson

from . import __version__
from .errors import JournalCorrupt, JournalError, JournalLocked, JournalMismatch
from .fsio import fsync_dir as _fsync_dir
from .fsio import write_all as _write_all
from .secrets import SECRET_FIELDS

__all__ = [
    "verify_header",
    "FORMAT",
    "STATUSES",
    "ItemState",
    "Journal",
    "JournalState",
    "Status",
    "replay",
]

#: The record layout this version writes and reads.
FORMAT: Final = 1

Status = Literal["pending", "uncertain", "done", "failed", "skipped"]
#: Every item status, in the order reports list them.
STATUSES: Final[tuple[Status, ...]] = ("pending", "uncertain", "done", "failed", "skipped")
_OUTCOMES: Final = frozenset({"done", "failed", "skipped"})
#: Header fields that must match for a journal to be resumed (not version nor created).
_IDENTITY: Final = ("kind", "spec", "tenant")
_SECRET_KEYS: Final = frozenset(k.casefold() for k in SECRET_FIELDS)


class _Invalid(ValueError):
    """A record that does not fit the journal so far (reason only; the caller adds where)."""


@dataclass(slots=True)
class ItemState:
    """Where one planned item stands."""

    key: str
    status: Status = "pending"
    #: intent records seen for the item (each is one request sent, or about to be)
    attempts: int = 0
    last_intent: dict[str, Any] | None = None
    last_outcome: dict[str, Any] | None = None


@dataclass(slots=True)
class JournalState:
    """A journal replayed: the header, the plan (key -> plan data) and each item's state."""

    header: dict[str, Any] | None = None
    planned: bool = False
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: dict[str, ItemState] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: plan items read but not yet sealed by a ``planned`` record
    _unsealed: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)

    def status(self, key: str) -> Status:
        return self.states[key].status

    def counts(self) -> dict[str, int]:
        """Items per status, every status present (zeros included)."""
        out: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for st in self.states.values():
            out[st.status] += 1
        return out

    def keys_in(self, status: Status) -> list[str]:
        """The keys with that status, in plan order."""
        return [k for k, st in self.states.items() if st.status == status]

    def _apply(self, rec: Mapping[str, Any]) -> None:
        """Fold one record into the state, or raise :class:`_Invalid` leaving it unchanged."""
        self._check(rec)
        t = rec["t"]
        if t == "header":
            self.header = dict(rec)
        elif t == "event":
            self.events.append(dict(rec))
        elif t == "item":
            self._unsealed[rec["key"]] = rec.get("data", {})
        elif t == "planned":
            self.items, self._unsealed = self._unsealed, {}
            self.states = {k: ItemState(k) for k in self.items}
            self.planned = True
        elif t == "intent":
            st = self.states[rec["key"]]
            st.status = "uncertain"
            st.attempts += 1
            st.last_intent = dict(rec)
        else:
            st = self.states[rec["key"]]
            st.status = rec["status"]
            st.last_outcome = dict(rec)

    def _check(self, rec: Mapping[str, Any]) -> None:
        t = rec.get("t")
        if self.header is None:
            if t != "header":
                raise _Invalid(f"the first record must be the header, not {t!r}")
            fmt = rec.get("format")
            if fmt != FORMAT:
                raise _Invalid(f"journal format {fmt!r} is not one this bulkcred reads ({FORMAT})")
            for name in _IDENTITY:
                if name not in rec:
                    raise _Invalid(f"the header has no {name!r}")
            return
        if t == "header":
            raise _Invalid("a second header")
        if self._unsealed and t not in ("item", "planned"):
            raise _Invalid(f"a {t!r} record inside a plan that is not sealed yet")
        if t == "event":
            if not isinstance(rec.get("name"), str):
                raise _Invalid("an event without a name")
            return
        if t == "item":
            key = _key_of(rec)
            if self.planned:
                raise _Invalid(f"plan item {key!r} after the plan was sealed")
            if key in self._unsealed:
                raise _Invalid(f"plan item {key!r} twice")
            if not isinstance(rec.get("data", {}), dict):
                raise _Invalid(f"plan item {key!r} has data that is not an object")
            return
        if t == "planned":
            if self.planned:
                raise _Invalid("the plan is sealed twice")
            if rec.get("count") != len(self._unsealed):
                raise _Invalid(f"the seal counts {rec.get('count')!r} items, the plan has "
                               f"{len(self._unsealed)}")
            return
        if t not in ("intent", "outcome"):
            raise _Invalid(f"unknown record type {t!r}")
        key = _key_of(rec)
        if not self.planned:
            raise _Invalid(f"{t} for {key!r} before the plan was sealed")
        if key not in self.states:
            raise _Invalid(f"{t} for {key!r}, which is not in the plan")
        if t == "intent":
            if not isinstance(rec.get("op"), str) or not isinstance(rec.get("attempt"), int):
                raise _Invalid(f"intent for {key!r} without an op or attempt number")
        elif rec.get("status") not in _OUTCOMES:
            raise _Invalid(f"outcome for {key!r} with status {rec.get('status')!r}")

    def _discard_unsealed(self) -> bool:
        """Drop a plan the process died writing (nothing was sent for it); True if any."""
        had = bool(self._unsealed)
        self._unsealed = {}
        return had


def _key_of(rec: Mapping[str, Any]) -> str:
    key = rec.get("key")
    if not isinstance(key, str) or not key:
        raise _Invalid(f"a {rec.get('t')} record without a key")
    return key


@dataclass(slots=True)
class _Replayed:
    state: JournalState
    #: offset just past the last record that counts (a torn tail starts here)
    end: int
    #: offset of the first record of a plan that was never sealed, if any
    unsealed_at: int | None


#: How every journal starts (orjson keeps insertion order and the header puts "t" first).
_HEADER_START: Final = b'{"t":"header"'


def _replay_bytes(data: bytes, path: str) -> _Replayed:
    state = JournalState()
    pos = 0
    lineno = 0
    unsealed_at: int | None = None
    size = len(data)
    head = data[: len(_HEADER_START)]
    if data and not _HEADER_START.startswith(head) and not head.startswith(_HEADER_START):
        # never "repair" (truncate) a file that is not a journal: it may be anything
        raise JournalCorrupt(f"{path} is not a bulkcred journal; give --journal a new path")
    while pos < size:
        nl = data.find(b"\n", pos)
        lineno += 1
        if nl == -1:
            break  # no newline: the process died writing this record
        try:
            rec = orjson.loads(data[pos:nl])
            if not isinstance(rec, dict):
                raise _Invalid("not a JSON object")
        except (orjson.JSONDecodeError, _Invalid) as exc:
            if nl + 1 == size:
                break  # an unreadable last line is a torn write too
            raise JournalCorrupt(
                f"{path}: line {lineno} is not a journal record ({exc}); the file was edited or "
                "damaged: restore it from a backup or start the job again with a new --journal"
            ) from None
        if rec.get("t") == "item" and not state._unsealed:
            unsealed_at = pos
        try:
            state._apply(rec)
        except _Invalid as exc:
            raise JournalCorrupt(f"{path}: line {lineno}: {exc}") from None
        pos = nl + 1
    if not state._discard_unsealed():
        unsealed_at = None
    return _Replayed(state, pos, unsealed_at)


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def replay(path: str | os.PathLike[str]) -> JournalState:
    """Read a journal without locking it (for ``status`` and ``report``)."""
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise JournalError(f"{p}: no such journal") from None
    except OSError as exc:
        raise JournalError(f"{p}: cannot read the journal: {exc.strerror}") from None
    try:
        return _replay_bytes(_read_all(fd), p).state
    finally:
        os.close(fd)


def _normalised(obj: Any) -> Any:
    """``obj`` as it reads back from the journal (tuples become lists, and so on)."""
    return orjson.loads(orjson.dumps(obj))


#: A header field one side does not have.
_ABSENT: Final = object()


def _differences(old: Any, new: Any, where: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _differences(old.get(k, _ABSENT), new.get(k, _ABSENT), f"{where}.{k}")
        return out
    if old == new:
        return []
    return [f"{where}: journal has {_show(old)}, this command has {_show(new)}"]


def _show(v: Any) -> str:
    if v is _ABSENT:
        return "nothing"
    text = orjson.dumps(v).decode()
    return text if len(text) <= 80 else text[:77] + "..."


def _secret_field(obj: Any) -> str | None:
    """The first key anywhere in ``obj`` that names a secret and holds a string."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str) and k.casefold() in _SECRET_KEYS and isinstance(v, str) and v:
                return k
            if found := _secret_field(v):
                return found
    elif isinstance(obj, list | tuple):
        for v in obj:
            if found := _secret_field(v):
                return found
    return None


def _lock_holder(fd: int) -> int | None:
    """The pid holding a flock on ``fd``'s file, from Linux's /proc/locks (best effort)."""
    st = os.fstat(fd)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii") as f:
            for line in f:
                parts = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiters carry a "->"
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == ident:
                    return int(parts[4])
    except (OSError, ValueError):
        pass
    return None


Forbidden = Callable[[bytes], bool] | Collection[str]


class Journal:
    """An open journal: the replayed :attr:`state` plus appends, each under the file lock.

    Use as ``async with await Journal.open(path, header=...) as journal:``.
    """

    def __init__(self, path: str, fd: int, state: JournalState, size: int,
                 forbidden: Forbidden | None) -> None:
        self.path = path
        self.state = state
        self._fd: int | None = fd
        self._size = size
        self._forbidden = forbidden
        self._lock = anyio.Lock()
        self._failed: str | None = None

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        header: Mapping[str, Any],
        forbidden: Forbidden | None = None,
    ) -> Journal:
        """Create (mode 0600) or resume the journal at ``path`` and lock it.

        ``header`` needs ``kind``, ``spec`` and ``tenant``; ``format``, ``version`` and
        ``created`` are filled in. An existing journal must have the same kind, spec and
        tenant (:class:`JournalMismatch`). A torn last record and a plan that was never
        sealed are cut off so the next record starts clean. ``forbidden`` is a predicate
        over encoded records, or a live collection of secret strings, that no record may
        contain.
        """
        p = os.fspath(path)
        if isinstance(forbidden, str | bytes):
            raise TypeError("forbidden is a predicate or a collection of secrets, not one string")
        missing = [k for k in _IDENTITY if k not in header]
        if missing:
            raise ValueError(f"a journal header needs {', '.join(missing)}")
        full = _normalised({"t": "header", "format": FORMAT, **header})
        full["t"], full["format"] = "header", FORMAT
        full.setdefault("version", __version__)
        full.setdefault("created", time.time())
        line = orjson.dumps(full) + b"\n"
        _check_secrets(full, line, forbidden)
        fd, state, size = await anyio.to_thread.run_sync(_open_locked, p, full, line)
        return cls(p, fd, state, size, forbidden)

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def write_plan(self, items: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Write the plan and seal it, with one fsync: nothing has been sent for it yet."""
        if self.state.planned:
            raise JournalError(f"{self.path}: the plan is already sealed")
        recs: list[dict[str, Any]] = []
        seen: set[str] = set()
        for key, data in items:
            if not isinstance(key, str) or not key:
                raise ValueError(f"a plan key must be a non-empty string, not {key!r}")
            if key in seen:
                raise ValueError(f"plan key {key!r} twice")
            seen.add(key)
            recs.append({"t": "item", "key": key, "data": dict(data)})
        recs.append({"t": "planned", "count": len(recs)})
        await self._append(recs, sync=True)

    async def intent(self, key: str, op: str, *, attempt: int = 1,
                     data: Mapping[str, Any] | None = None) -> None:
        """Record, durably, that a request for ``key`` is about to be sent."""
        await self._append([{"t": "intent", "key": key, "op": op, "attempt": attempt,
                             "data": dict(data or {}), "at": time.time()}], sync=True)

    async def outcome(self, key: str, status: Literal["done", "failed", "skipped"], *,
                      http: int | None = None, error_id: str | None = None,
                      reason: str | None = None,
                      data: Mapping[str, Any] | None = None) -> None:
        """Record, durably, how the item ended (``done``, ``failed`` or ``skipped``)."""
        rec: dict[str, Any] = {"t": "outcome", "key": key, "status": status}
        for name, val in (("http", http), ("errorId", error_id), ("reason", reason)):
            if val is not None:
                rec[name] = val
        rec["data"] = dict(data or {})
        rec["at"] = time.time()
        await self._append([rec], sync=True)

    async def event(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        """Record something that is not item state (a verification, the job finishing).

        Written at once but fsynced with the next record or on close: an event is a note,
        and losing the last one to a power cut changes no item.
        """
        await self._append([{"t": "event", "name": name, "data": dict(data or {}),
                             "at": time.time()}], sync=False)

    async def aclose(self) -> None:
        """Flush to disk and release the lock; shielded, so a cancelled job still flushes."""
        with anyio.CancelScope(shield=True):
            async with self._lock:
                fd, self._fd = self._fd, None
                if fd is not None:
                    await anyio.to_thread.run_sync(_sync_and_close, fd, self._failed is None)

    async def _append(self, recs: list[dict[str, Any]], *, sync: bool) -> None:
        lines = []
        for rec in recs:
            line = orjson.dumps(rec) + b"\n"
            _check_secrets(rec, line, self._forbidden)
            lines.append(line)
        data = b"".join(lines)
        async with self._lock:
            if self._fd is None:
                raise JournalError(f"{self.path}: the journal is closed")
            if self._failed is not None:
                raise JournalError(f"{self.path}: the journal stopped accepting records after "
                                   f"a write failed ({self._failed})")
            # a batch is a plan that write_plan built consistent; only its start depends on
            # the state, and that is checked here, under the lock
            try:
                self.state._check(recs[0])
            except _Invalid as exc:
                raise ValueError(f"{self.path}: {exc}") from None
            # once the bytes are on their way the state must follow them, even if the
            # caller is cancelled, or the in-memory view would lag the file
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(_append_bytes, self._fd, data, self._size, sync)
                except OSError as exc:
                    self._failed = exc.strerror or str(exc)
                    raise JournalError(
                        f"{self.path}: cannot write the journal: {self._failed}; the job stops "
                        "here and resumes from the journal once that is fixed"
                    ) from None
                self._size += len(data)
                for rec in recs:
                    self.state._apply(rec)


def _check_secrets(rec: Mapping[str, Any], line: bytes, forbidden: Forbidden | None) -> None:
    what = f"the {rec.get('t')!r} journal record"
    if name := _secret_field(rec):
        raise JournalError(f"refusing to write {what} with a {name!r} field: secrets never "
                           "go to the journal (a bug in bulkcred; nothing was written)")
    if forbidden is None:
        return
    if callable(forbidden):
        hit = forbidden(line)
    else:
        text = line.decode()
        hit = any(s and (s in text or orjson.dumps(s)[1:-1].decode() in text)
                  for s in list(forbidden))
    if hit:
        raise JournalError(f"refusing to write {what} that holds a known secret (a bug in "
                           "bulkcred; nothing was written)")


def _open_locked(path: str, header: dict[str, Any], header_line: bytes
                 ) -> tuple[int, JournalState, int]:
    created = False
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        created = True
    except FileExistsError:
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise JournalError(f"{path}: cannot open the journal: {exc.strerror}") from None
    except FileNotFoundError:
        raise JournalError(f"{path}: the directory {os.path.dirname(os.path.abspath(path))} "
                           "does not exist; create it or give --journal another path") from None
    except OSError as exc:
        raise JournalError(f"{path}: cannot create the journal: {exc.strerror}") from None
    try:
        if created:
            os.fchmod(fd, 0o600)  # whatever the umask
        elif not stat.S_ISREG(os.fstat(fd).st_mode):
            raise JournalError(f"{path}: not a regular file; give --journal a file path")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise JournalError(f"{path}: cannot lock the journal ({exc.strerror}); put it "
                                   "on a local file system") from None
            pid = _lock_holder(fd)
            if pid == os.getpid():
                raise JournalLocked(f"{path}: this process has the journal open already") from None
            who = f" (pid {pid})" if pid is not None else ""
            raise JournalLocked(
                f"{path}: another bulkcred process{who} is running this journal; wait for it "
                "to finish or stop it, then run the command again"
            ) from None
        rep = _replay_bytes(_read_all(fd), path)
        state = rep.state
        if state.header is not None:
            verify_header(path, state.header, header)
        # cut a torn record, or a plan that was never sealed, before anything is appended
        cut = 0 if state.header is None else rep.end if rep.unsealed_at is None else rep.unsealed_at
        if cut != os.fstat(fd).st_size:
            os.ftruncate(fd, cut)
        if state.header is None:
            _write_all(fd, header_line)
            state._apply(header)
            cut = len(header_line)
        os.fsync(fd)
        if created:
            _fsync_dir(path)
        return fd, state, cut
    except BaseException:
        os.close(fd)
        raise


def verify_header(path: str | os.PathLike[str], have: Mapping[str, Any],
                  want: Mapping[str, Any]) -> None:
    """Raise :class:`JournalMismatch` unless ``have`` is the header of the job ``want``."""
    diffs: list[str] = []
    for name in _IDENTITY:
        diffs += _differences(have.get(name, _ABSENT), want.get(name, _ABSENT), name)
    if diffs:
        raise JournalMismatch(
            f"{path} belongs to a different job: {'; '.join(diffs)}. Use another --journal "
            "path to start this job, or rerun the original command to resume that one"
        )


def _append_bytes(fd: int, data: bytes, size: int, sync: bool) -> None:
    try:
        _write_all(fd, data)
        if sync:
            os.fsync(fd)
    except OSError:
        # leave no half record for the next append to be glued to
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


def _sync_and_close(fd: int, sync: bool) -> None:
    try:
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)  # releases the flock
