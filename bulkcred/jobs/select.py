"""``--select`` filters: parsing, a normalised form for the journal header, matching."""

from __future__ import annotations

import fnmatch
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import UsageError
from ..models import Credential, CredentialType

__all__ = ["Filter", "Selection", "parse_selection"]

_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_AGE_UNIT = {"": 86400.0, "d": 86400.0, "w": 7 * 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


@dataclass(frozen=True, slots=True)
class Filter:
    kind: str  # name | type | id | older-than
    values: tuple[str, ...]

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "values": list(self.values)}

    def matches(self, cred: Credential, now: float) -> bool:
        if self.kind == "name":
            return any(fnmatch.fnmatchcase(cred.display_name, g) for g in self.values)
        if self.kind == "type":
            return cred.credential_type.value in self.values
        if self.kind == "id":
            return cred.id in self.values
        if self.kind == "older-than":
            seconds = float(self.values[0])
            last = cred.last_credential_reset_time or cred.creation_time or 0
            return last <= now - seconds
        raise AssertionError(self.kind)


@dataclass(frozen=True, slots=True)
class Selection:
    """All filters apply (AND); within one filter, values are alternatives (OR)."""

    filters: tuple[Filter, ...] = ()
    #: fixed when the job is planned so that a resumed job selects by the same clock
    now: float = 0.0

    def matches(self, cred: Credential) -> bool:
        now = self.now or time.time()
        return all(f.matches(cred, now) for f in self.filters)

    def to_record(self) -> list[dict[str, Any]]:
        return [f.to_record() for f in self.filters]

    @property
    def ids(self) -> frozenset[str] | None:
        """The ids the selection is limited to, when an ``id=`` filter names them."""
        sets = [frozenset(f.values) for f in self.filters if f.kind == "id"]
        if not sets:
            return None
        out = sets[0]
        for s in sets[1:]:
            out &= s
        return out


def _split(values: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in values.split(",") if v.strip())


def _read_ids(path: str) -> tuple[str, ...]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UsageError(f"--select ids-from={path}: cannot read the file ({exc.strerror})") from None
    ids: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        for part in _split(line):
            if not part.isdigit():
                raise UsageError(
                    f"--select ids-from={path}: line {n}: {part!r} is not a credential id"
                    " (ids are digits, one or more per line, comma-separated)"
                )
            ids.append(part)
    if not ids:
        raise UsageError(f"--select ids-from={path}: the file names no credential id")
    return tuple(ids)


def parse_selection(specs: Iterable[str], *, now: float | None = None) -> Selection:
    """Parse ``--select`` values: ``name=GLOB``, ``type=T``, ``id=1,2``, ``ids-from=F``,
    ``older-than=90d``."""
    filters: list[Filter] = []
    for spec in specs:
        key, sep, value = spec.partition("=")
        key = key.strip().lower()
        value = value.strip()
        if not sep or not value:
            raise UsageError(
                f"--select {spec!r}: write FILTER=VALUE, one of name=GLOB, type=TYPE,"
                " id=1,2,3, ids-from=FILE, older-than=90d"
            )
        if key == "name":
            filters.append(Filter("name", (value,)))
        elif key == "type":
            types = []
            for t in _split(value):
                try:
                    types.append(CredentialType(t.upper()).value)
                except ValueError:
                    raise UsageError(
                        f"--select type={t}: unknown credential type; use "
                        + ", ".join(c.value for c in CredentialType)
                    ) from None
            filters.append(Filter("type", tuple(types)))
        elif key == "id":
            ids = _split(value)
            bad = [i for i in ids if not i.isdigit()]
            if bad or not ids:
                raise UsageError(f"--select id={value}: ids are digits, comma-separated")
            filters.append(Filter("id", ids))
        elif key == "ids-from":
            filters.append(Filter("id", _read_ids(value)))
        elif key == "older-than":
            m = _AGE_RE.match(value)
            if not m:
                raise UsageError(
                    f"--select older-than={value}: write an age like 90d, 12h, 30m or 2w"
                )
            seconds = float(m.group(1)) * _AGE_UNIT[m.group(2).lower()]
            filters.append(Filter("older-than", (f"{seconds:g}",)))
        else:
            raise UsageError(
                f"--select {spec!r}: unknown filter {key!r}; use name, type, id, ids-from"
                " or older-than"
            )
    return Selection(tuple(filters), now=now if now is not None else time.time())
