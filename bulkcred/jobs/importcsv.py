"""Import: credentials from a CSV, every row validated before a single request, then
created (or updated) on the runner. A create whose answer was lost is looked up by name
before anything is re-sent, so no credential is ever created twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import secrets as _stdlib_secrets
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Final, Iterable, Literal, Mapping, Sequence

from .. import __version__
from ..csvio import CsvRow, read_csv
from ..errors import APIError, InputError, OutcomeUnknown, UsageError
from ..journal import Journal, JournalState, replay, verify_header
from ..models import (
    DEFAULT_MICROTENANT,
    UNSET,
    Credential,
    CredentialSecret,
    CredentialType,
    Microtenant,
    Secret,
    normalize_microtenant_id,
    normalize_name,
)
from ..report import write_report
from ..runner import (
    DEFAULT_CONCURRENCY_CAP,
    REJECT_ERROR_ID,
    ItemResult,
    RunSummary,
    Window,
)
from ..secrets import MASK, Redactor, validate_private_key
from ..text import plural
from .common import (
    JobContext,
    JobProgressSink,
    distinct_files,
    journal_has_records,
    list_scope,
    resolve_microtenants,
    run_job_items,
)

__all__ = [
    "IMPORT_COLUMNS",
    "MAX_LENGTH",
    "REJECT_ERROR_ID",
    "ImportFile",
    "ImportOptions",
    "ImportPlan",
    "ImportResult",
    "ImportRow",
    "PlanItem",
    "Reject",
    "import_credentials",
    "job_header",
    "load_import_csv",
    "names_outside_ui_set",
    "plan_import",
    "write_import_csv",
    "write_reject_file",
]

KIND: Final = "import"

#: The columns of an import CSV (cli.md), in the order the writer puts them.
IMPORT_COLUMNS: Final = ("name", "credentialType", "userName", "password", "privateKey",
                         "privateKeyFile", "passphrase", "userDomain", "description",
                         "microtenantId")
_SECRET_COLUMNS: Final = frozenset({"password", "privateKey", "passphrase"})

#: The longest value bulkcred takes per column. ZPA documents none; 255 for names and
#: user fields is what the simulator enforces, the rest are generous bounds that still
#: catch a cell that swallowed half a row (an RSA 2048 PEM is about 1,700 characters).
MAX_LENGTH: Final[Mapping[str, int]] = {
    "name": 255, "userName": 255, "userDomain": 255, "description": 1024,
    "password": 1024, "passphrase": 1024, "privateKey": 16384, "privateKeyFile": 4096,
}
_INT64_MAX: Final = 2**63 - 1

#: The columns each type takes besides name, credentialType and microtenantId.
_TAKES: Final[Mapping[CredentialType, frozenset[str]]] = {
    CredentialType.USERNAME_PASSWORD: frozenset({"userName", "password", "userDomain",
                                                 "description"}),
    CredentialType.SSH_KEY: frozenset({"userName", "privateKey", "privateKeyFile",
                                       "passphrase", "description"}),
    CredentialType.PASSWORD: frozenset({"password", "description"}),
}
_TYPES: Final = ", ".join(t.value for t in CredentialType)
#: The characters the admin portal allows in names (zpa-api.md §9 item 8).
_UI_SAFE: Final = re.compile(r"[A-Za-z0-9._-]+")
#: A long id as Excel shows (and saves) it once it took the cell for a number: 1.45261E+17.
_EXCEL_NUMBER: Final = re.compile(r"\d+(\.\d+)?[eE]\+?\d+")

#: Secrets this long or longer are what the journal refuses (and what is scrubbed out of
#: names and reasons before they are journaled): a shorter password ("test") would make
#: innocent text ("test-1") unwritable.
_GUARD_MIN: Final = 8
#: The fingerprint of the CSV: scrypt with a random per-job salt kept in the journal's
#: header. The file holds secrets, so a fast hash (or an HMAC whose key sits next to it)
#: would let anyone holding the journal test guesses of a weak password cheaply; scrypt
#: makes each guess cost 16 MiB and tens of milliseconds. Hashing with the secret cells
#: blanked out instead would miss a corrected password or key on resume.
_SCRYPT: Final = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
#: POSTs of one item within one run, each after a name lookup found nothing.
_CREATE_TRIES: Final = 3

Action = Literal["create", "update", "skip", "reject"]
OnExisting = Literal["fail", "skip", "update"]


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class ImportRow:
    """A valid row: the credential to create (no id yet) and its secret."""

    line: int
    credential: Credential
    secret: CredentialSecret
    #: the microtenant the row goes to, as the POST's query names it (``None``: not sent,
    #: which is Default)
    microtenant_id: str | None

    @property
    def scope(self) -> str:
        return self.microtenant_id or DEFAULT_MICROTENANT

    @property
    def name_key(self) -> tuple[str, str]:
        return self.scope, normalize_name(self.credential.name)


@dataclass(frozen=True, slots=True)
class Reject:
    """A row that is not sent: where it is, what is wrong and what to do (never a secret)."""

    line: int
    column: str | None
    reason: str

    def error(self, file: str | os.PathLike[str]) -> InputError:
        return InputError(self.reason, file=str(file), line=self.line, column=self.column)


class _Bad(Exception):
    def __init__(self, column: str | None, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


@dataclass(slots=True)
class ImportFile:
    """An import CSV read and validated: its valid rows, its rejects, its fingerprint input."""

    path: Path
    header: list[str]
    rows: list[ImportRow]
    rejects: list[Reject]
    #: each data row's cells as read, and whether they sit under their header
    raw: dict[int, tuple[tuple[str, ...], bool]]
    #: the file's secrets of :data:`_GUARD_MIN` characters or more
    guard: Redactor
    #: the CSV bytes and those of every key file it names, framed: what is fingerprinted
    content: bytes

    @property
    def data_rows(self) -> int:
        """The file's rows below the header (blank lines aside), valid or not."""
        return len(self.raw)

    def fingerprint(self, salt: bytes) -> str:
        return hashlib.scrypt(self.content, salt=salt, **_SCRYPT).hex()

    def secrets(self) -> list[CredentialSecret]:
        return [r.secret for r in self.rows]

    def problems_text(self) -> str:
        """The rejects found offline. A row's microtenant is checked against the tenant
        only once the file is otherwise valid (it takes a connection); say so, lest
        fixing these rows look like the end of it."""
        text = _rejects_text(self.path, self.rejects)
        elsewhere = sum(1 for r in self.rows if r.scope != DEFAULT_MICROTENANT)
        if elsewhere:
            text += ("\nMicrotenant ids are checked against the tenant only once the file is"
                     " otherwise valid"
                     f" ({plural(elsewhere, 'valid row goes', 'valid rows go')} outside"
                     " Default); --dry-run checks them now.")
        return text


def _rejects_text(path: Path, rejects: Sequence[Reject]) -> str:
    lines = [f"{path}: {plural(len(rejects), 'invalid row')}; nothing was sent:"]
    lines += [f"  {r.error(path)}" for r in rejects]
    lines.append("Fix them and run the command again, or pass --skip-invalid to import the"
                 " valid rows and write the invalid ones to --reject-file.")
    return "\n".join(lines)


def _control(text: str, *, allow: str = "", formatting: bool = True) -> int | None:
    """The position of the first control character in ``text`` (``formatting``: also the
    invisible ones, bidi overrides and line separators), or None."""
    bad = ("Cc", "Cf", "Zl", "Zp") if formatting else ("Cc",)
    for i, ch in enumerate(text):
        if ch not in allow and unicodedata.category(ch) in bad:
            return i
    return None


def _shown(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


class _Loader:
    """Validates rows one by one; caches key files and key checks (an RSA check takes
    ~30 ms, and a migration file often gives many rows the same key)."""

    def __init__(self, path: Path, header: list[str], microtenant: str | None) -> None:
        self.path = path
        self.header = header
        self.columns = frozenset(header)
        self.microtenant = microtenant
        self.key_files: dict[Path, str | _Bad] = {}
        self.key_bytes: dict[Path, bytes] = {}
        self.key_checks: dict[tuple[str, str | None], str | None] = {}

    def row(self, row: CsvRow) -> ImportRow:
        if row.error:
            raise _Bad(None, row.error)
        # a cell of spaces only is an empty cell, as ZPA treats a blank field as missing
        v = {k: c for k, c in row.values.items() if c.strip()}
        name = v.get("name")
        if name is None:
            raise _Bad("name", "the name is empty; every credential needs a name")
        if name != name.strip():
            raise _Bad("name", "the name has leading or trailing spaces; remove them (ZPA"
                               " compares names trimmed)")
        for col, value in v.items():
            self._check_cell(col, value)
        raw_type = v.get("credentialType")
        if raw_type is None:
            raise _Bad("credentialType", f"the credentialType is empty; give one of {_TYPES}")
        try:
            ctype = CredentialType(raw_type.strip().upper())
        except ValueError:
            raise _Bad("credentialType", f"credentialType {_shown(raw_type)} is not one of"
                                         f" {_TYPES}") from None
        microtenant = self.microtenant
        if "microtenantId" in v:
            microtenant = _microtenant(v["microtenantId"])
        extra = sorted(set(v) - _TAKES[ctype] - {"name", "credentialType", "microtenantId"},
                       key=self.header.index)
        if extra:
            raise _Bad(extra[0], f"{extra[0]} is not a field of {ctype.value} credentials;"
                                 " leave the cell empty (or fix the credentialType)")
        needs = ["userName"] if ctype.takes_user_name else []
        if ctype is not CredentialType.SSH_KEY:
            needs.append("password")
        for col in needs:
            if col not in v:
                raise self._missing(col, ctype)
        if ctype is CredentialType.SSH_KEY:
            secret = self._ssh_secret(v)
        else:
            secret = CredentialSecret(password=Secret(v["password"]))
        cred = Credential(
            id="",
            name=name,
            credential_type=ctype,
            user_name=v.get("userName"),
            user_domain=v.get("userDomain"),
            description=v.get("description"),
        )
        return ImportRow(row.line, cred, secret, microtenant)

    def _missing(self, col: str, ctype: CredentialType) -> _Bad:
        if col in self.columns:
            return _Bad(col, f"the {col} is empty; a {ctype.value} credential needs one")
        return _Bad(col, f"a {ctype.value} credential needs a {col}, and the file has no"
                         f" {col!r} column; add one")

    def _check_cell(self, col: str, value: str) -> None:
        limit = MAX_LENGTH.get(col)
        what = "the private key file name" if col == "privateKeyFile" else f"the {col}"
        if limit is not None and len(value) > limit:
            raise _Bad(col, f"{what} has {len(value)} characters; bulkcred takes at most"
                            f" {limit}")
        if col == "privateKey":
            pos = _control(value, allow="\r\n", formatting=False)
        else:
            pos = _control(value, formatting=col not in _SECRET_COLUMNS)
        if pos is None:
            return
        if col in _SECRET_COLUMNS:  # not even which character: it is part of a secret
            raise _Bad(col, f"{what} holds a control character (a tab, a line break or"
                            " similar); remove it")
        raise _Bad(col, f"{what} holds the control character U+{ord(value[pos]):04X} at"
                        f" position {pos + 1}; remove it")

    def _ssh_secret(self, v: Mapping[str, str]) -> CredentialSecret:
        if "privateKey" in v and "privateKeyFile" in v:
            raise _Bad("privateKeyFile", "give the key in privateKey or in privateKeyFile,"
                                         " not both")
        if "privateKeyFile" in v:
            col = "privateKeyFile"
            pem = self._key_file(v[col])
        elif "privateKey" in v:
            col, pem = "privateKey", v["privateKey"]
        else:
            if not {"privateKey", "privateKeyFile"} & self.columns:
                raise _Bad("privateKey", "an SSH_KEY credential needs a private key, and the"
                                         " file has no 'privateKey' or 'privateKeyFile' column;"
                                         " add one")
            raise _Bad("privateKey", "the private key is empty; give it in privateKey (the"
                                     " PEM text) or privateKeyFile (a path)")
        # a CRLF file makes CRLF lines inside a quoted PEM cell; keys travel with LF
        pem = pem.replace("\r\n", "\n").strip() + "\n"
        passphrase = v.get("passphrase")
        check = (pem, passphrase)
        if check not in self.key_checks:
            self.key_checks[check] = validate_private_key(pem, passphrase)
        problem = self.key_checks[check]
        if problem:
            where = "passphrase" if "passphrase" in problem else col
            raise _Bad(where, f"the private key is not one ZPA accepts: {problem}")
        return CredentialSecret(private_key=Secret(pem),
                                passphrase=Secret(passphrase) if passphrase else None)

    def _key_file(self, cell: str) -> str:
        path = (self.path.parent / cell).resolve()
        if path not in self.key_files:
            self.key_files[path] = self._read_key_file(path)
        got = self.key_files[path]
        if isinstance(got, _Bad):
            raise _Bad(got.column, got.reason)  # a fresh one: each row has its own traceback
        return got

    def _read_key_file(self, path: Path) -> str | _Bad:
        limit = MAX_LENGTH["privateKey"]
        hint = "(a relative path is taken from the CSV's folder)"
        try:
            with path.open("rb") as f:
                data = f.read(limit + 1)
        except IsADirectoryError:
            return _Bad("privateKeyFile", f"the key file {str(path)!r} is a directory; name"
                                          f" the key file itself {hint}")
        except OSError as exc:
            return _Bad("privateKeyFile", f"cannot read the key file {str(path)!r}"
                                          f" ({exc.strerror}) {hint}")
        self.key_bytes[path] = data
        if len(data) > limit:
            return _Bad("privateKeyFile", f"the key file {str(path)!r} is larger than"
                                          f" {limit} bytes: not a private key ZPA takes")
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError:
            return _Bad("privateKeyFile", f"the key file {str(path)!r} is not a PEM or"
                                          " OpenSSH text file")


def _microtenant(cell: str) -> str:
    try:
        mt = normalize_microtenant_id(cell)
    except ValueError:
        mt = None
    if mt is None or int(mt) > _INT64_MAX:
        if _EXCEL_NUMBER.fullmatch(cell.strip()):
            raise _Bad("microtenantId", f"microtenantId {_shown(cell)} is not a microtenant"
                                        " id: Excel turned the id into a number; format the"
                                        " column as Text and re-enter it")
        raise _Bad("microtenantId", f"microtenantId {_shown(cell)} is not a microtenant id;"
                                    " give its digits, or 0 (or an empty cell) for Default")
    return mt


def _frame(label: bytes, data: bytes) -> bytes:
    return label + b"\0" + len(data).to_bytes(8, "big") + data


def load_import_csv(path: str | os.PathLike[str], *,
                    microtenant: str | None = None) -> ImportFile:
    """Read and validate an import CSV; no network. Raises :class:`InputError` when the
    file as a whole is unusable (not UTF-8, no header, an unknown column, broken quoting);
    a bad row becomes a :class:`Reject` with its line, column and reason.

    ``microtenant``: where rows with an empty ``microtenantId`` go (default: Default,
    without a ``microtenantId`` in the request).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the file ({exc.strerror})", file=str(p)) from None
    header, records = read_csv(
        p, allowed=frozenset(IMPORT_COLUMNS),
        required_any=(frozenset({"name"}), frozenset({"credentialType"})),
        data=data, strict_rows=False,
    )
    loader = _Loader(p, header, microtenant)
    rows: list[ImportRow] = []
    rejects: list[Reject] = []
    raw: dict[int, tuple[tuple[str, ...], bool]] = {}
    first_line: dict[tuple[str, str], int] = {}
    for rec in records:
        raw[rec.line] = (tuple(rec.raw), rec.error is None)
        try:
            row = loader.row(rec)
            seen = first_line.setdefault(row.name_key, row.line)
            if seen != row.line:
                raise _Bad("name", f"the name {_shown(row.credential.name)} is used on line"
                                   f" {seen} already, in microtenant {row.scope} (names"
                                   " compare ignoring case and HTML entities); names must be"
                                   " unique within a microtenant")
        except _Bad as bad:
            rejects.append(Reject(rec.line, bad.column, bad.reason))
            continue
        rows.append(row)
    guard = Redactor()
    for row in rows:
        guard.add(*(s for s in row.secret.values() if len(s) >= _GUARD_MIN))
    for cells, aligned in raw.values():  # a rejected row's secrets are secrets too
        if aligned:
            guard.add(*(c for col, c in zip(header, cells, strict=True)
                        if col in _SECRET_COLUMNS and len(c) >= _GUARD_MIN))
    # a reason quotes cells (a name, a bad type); none may carry a secret of the file on
    rejects = [replace(r, reason=guard.redact(r.reason)) for r in rejects]
    content = _frame(b"csv", data) + b"".join(
        _frame(str(kp).encode(), loader.key_bytes.get(kp, b"\0unreadable"))
        for kp in sorted(loader.key_files))
    return ImportFile(p, header, rows, rejects, raw, guard, content)


def write_import_csv(rows: Iterable[Mapping[str, str | None]], path: str | os.PathLike[str],
                     *, columns: Sequence[str] = IMPORT_COLUMNS) -> Path:
    """Write ``rows`` (column -> value; ``None`` or ``""`` is an empty cell) as a CSV that
    :func:`load_import_csv` reads back cell for cell: RFC 4180 quoting with CRLF between
    records (so a cell's own CR or LF is always quoted), UTF-8 without BOM. The file may
    hold secrets: it is created with mode 0600, and replaced atomically.
    """
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return _write_private(Path(path), buf.getvalue().encode("utf-8"))


def _write_private(path: Path, data: bytes) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask, and if tmp was left by an older run
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def write_reject_file(path: Path, source: ImportFile, rejects: Iterable[tuple[int, str]]
                      ) -> Path:
    """The rejected rows as read (secret cells masked), after their line and reason.

    A row whose cells do not sit under the header is masked whole: a shifted cell may
    hold a password in any column.
    """
    def rows() -> Iterable[dict[str, str]]:
        for line, reason in rejects:
            cells, aligned = source.raw[line]
            out = {"line": str(line), "reason": reason}
            for i, col in enumerate(source.header):
                cell = cells[i] if i < len(cells) else ""
                if cell and (not aligned or col in _SECRET_COLUMNS):
                    cell = MASK
                out[col] = source.guard.redact(cell)
            yield out

    return write_import_csv(rows(), path, columns=["line", "reason", *source.header])


# ---------------------------------------------------------------------------- planning


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportOptions:
    csv: Path
    journal: Path
    on_existing: OnExisting = "fail"
    skip_invalid: bool = False
    #: where rejected rows go (``--skip-invalid``); None: nowhere
    reject_file: Path | None = None
    #: where rows with an empty ``microtenantId`` go; None: Default
    microtenant: str | None = None
    report: Path | None = None

    def spec(self, fingerprint: str) -> dict[str, Any]:
        """The normalised job spec the journal header holds (never a secret)."""
        return {
            "csv": str(self.csv.resolve()),
            "fingerprint": fingerprint,
            "onExisting": self.on_existing,
            "skipInvalid": self.skip_invalid,
            "microtenant": self.microtenant,
        }


@dataclass(frozen=True, slots=True)
class PlanItem:
    """What the import does with one data row of the file."""

    line: int
    action: Action
    row: ImportRow | None = None
    #: update and skip: the credential of that name
    existing: Credential | None = None
    #: reject and skip: why (and for a reject, the column at fault)
    reason: str | None = None
    column: str | None = None

    @property
    def key(self) -> str:
        return f"row:{self.line}"

    def record(self, source: ImportFile) -> dict[str, Any]:
        """The plan item's journal data: metadata only, scrubbed of the file's secrets."""
        scrub = source.guard.redact
        d: dict[str, Any] = {"line": self.line, "action": self.action}
        if self.row is not None:
            d.update(name=scrub(self.row.credential.name),
                     credentialType=self.row.credential.credential_type.value,
                     microtenantId=self.row.scope)
        else:
            cells, aligned = source.raw[self.line]
            if aligned:  # a shifted row's cells may be anything, a password included
                for col in ("name", "credentialType", "microtenantId"):
                    if col in source.header and cells[source.header.index(col)]:
                        d[col] = scrub(cells[source.header.index(col)])
        if self.existing is not None:
            d["id"] = self.existing.id
        if self.reason is not None:
            d["reason"] = self.reason
        return d


@dataclass(slots=True)
class ImportPlan:
    source: ImportFile
    items: list[PlanItem]
    #: valid rows naming existing credentials under ``--on-existing fail`` (not in items:
    #: such a plan is never journaled)
    refused: list[PlanItem]

    def of(self, action: Action) -> list[PlanItem]:
        return [i for i in self.items if i.action == action]

    @property
    def rejects(self) -> list[Reject]:
        return [Reject(i.line, i.column, i.reason or "") for i in self.of("reject")]

    @property
    def existing(self) -> int:
        """Rows that name a credential that exists already."""
        return sum(1 for i in self.items if i.existing is not None) + len(self.refused)

    @property
    def writes(self) -> int:
        return sum(1 for i in self.items if i.action in ("create", "update"))

    def refusal(self, opts: ImportOptions) -> str | None:
        """Why the import must not start (nothing is sent then), or None."""
        parts = []
        if self.rejects and not opts.skip_invalid:
            parts.append(_rejects_text(self.source.path, self.rejects))
        if self.refused:
            parts.append(self.refused_text())
        return "\n".join(parts) or None

    def refused_text(self) -> str:
        scrub = self.source.guard.redact
        rows = "; ".join(
            f"line {i.line} {scrub(_shown(i.row.credential.name))} (id {i.existing.id},"
            f" microtenant {i.row.scope})"
            for i in self.refused if i.row is not None and i.existing is not None)
        return (f"{self.source.path}: {plural(len(self.refused), 'row names', 'rows name')}"
                f" credentials that exist already, and --on-existing is fail: {rows}. Pass"
                " --on-existing skip to leave them as they are, --on-existing update to"
                " overwrite them, or remove those rows; nothing was sent.")


async def _microtenant_map(ctx: JobContext) -> dict[str, Microtenant]:
    return {m.id: m for m in await resolve_microtenants(ctx.client, None)}


async def plan_import(ctx: JobContext, source: ImportFile, opts: ImportOptions) -> ImportPlan:
    """Decide each row: one listing (500 a page) per microtenant the rows go to gives the
    names that exist; ``--on-existing`` decides what becomes of those rows. Reads only."""
    by_line: dict[int, PlanItem] = {
        r.line: PlanItem(r.line, "reject", reason=r.reason, column=r.column)
        for r in source.rejects}
    refused: list[PlanItem] = []
    existing: dict[tuple[str, str], Credential] = {}
    scopes = sorted({r.scope for r in source.rows})
    tenants = await _microtenant_map(ctx) if scopes else {}
    if opts.microtenant is not None and opts.microtenant not in tenants and scopes:
        raise UsageError(f"--microtenant {opts.microtenant} does not exist in this tenant;"
                         f" known microtenants: {_known(tenants)}")
    for scope in scopes:
        if scope in tenants:
            async for cred in list_scope(ctx.client, tenants[scope]):
                existing[(scope, normalize_name(cred.name))] = cred
    scrub = source.guard.redact
    for row in source.rows:
        if row.scope not in tenants:
            item = PlanItem(row.line, "reject", row, column="microtenantId", reason=scrub(
                f"microtenant {row.scope} does not exist in this tenant; give one of"
                f" {_known(tenants)}"))
        elif (found := existing.get(row.name_key)) is None:
            item = PlanItem(row.line, "create", row)
        elif opts.on_existing == "update":
            if found.credential_type is row.credential.credential_type:
                item = PlanItem(row.line, "update", row, found)
            else:
                item = PlanItem(row.line, "reject", row, found, column="credentialType",
                                reason=scrub(
                    f"a credential named {_shown(found.display_name)} exists in microtenant"
                    f" {row.scope} as a {found.credential_type.value} (id {found.id}); ZPA"
                    " cannot change a credential's type: fix the credentialType, or rename"
                    " the row"))
        elif opts.on_existing == "skip":
            item = PlanItem(row.line, "skip", row, found, reason=(
                f"exists already (id {found.id}); --on-existing skip leaves it as it is"))
        else:
            refused.append(PlanItem(row.line, "skip", row, found))
            continue
        by_line[row.line] = item
    return ImportPlan(source, [by_line[k] for k in sorted(by_line)], refused)


def _known(tenants: Mapping[str, Microtenant]) -> str:
    return ", ".join(f"{m.id} ({m.name})" for m in tenants.values())


# ----------------------------------------------------------------------------- applying


@dataclass(slots=True)
class ImportResult:
    total: int
    created: int
    updated: int
    skipped: int
    rejected: int
    failed: int
    #: items sent whose outcome is not known yet (reconciled by name when run again)
    unfinished: int
    summary: RunSummary
    journal: Path
    report: Path | None
    reject_file: Path | None
    resumed: bool

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.rejected == 0 and self.unfinished == 0


def _updated(cred: Credential, row: ImportRow, columns: frozenset[str]) -> Credential:
    """The full object an update PUTs: the row's fields, and for a column the file does
    not have, the credential's current value (an empty cell in a column it has clears)."""
    new = row.credential
    keep = {"userName": "user_name", "userDomain": "user_domain", "description": "description"}
    changes: dict[str, Any] = {"name": new.name}
    for col, attr in keep.items():
        if col in columns:
            changes[attr] = getattr(new, attr)
    return cred.with_changes(**changes)


def _counts(state: JournalState) -> Counter[str]:
    out: Counter[str] = Counter()
    for key, data in state.items.items():
        status = state.status(key)
        if status == "done":
            out["updated" if data.get("action") == "update" else "created"] += 1
        elif status == "failed":
            error_id = (state.states[key].last_outcome or {}).get("errorId")
            out["rejected" if error_id == REJECT_ERROR_ID else "failed"] += 1
        elif status == "skipped":
            out["skipped"] += 1
        else:
            out["unfinished"] += 1
    return out


def _check_same_file(opts: ImportOptions, prior_spec: object, spec: Mapping[str, Any]) -> None:
    """Refuse, with a message that says so, a resume whose CSV (or key file) changed."""
    if not isinstance(prior_spec, dict) or prior_spec.get("fingerprint") == spec["fingerprint"]:
        return
    if {k: v for k, v in prior_spec.items() if k != "fingerprint"} \
            == {k: v for k, v in spec.items() if k != "fingerprint"}:
        raise UsageError(
            f"{opts.csv} (or a key file it names) has changed since the job in {opts.journal}"
            " was planned: its rows' secrets are read from it again on resume, so it must be"
            " the same file. Restore it to resume that job, or start a new import with"
            " another --journal")


def job_header(ctx: JobContext, opts: ImportOptions, source: ImportFile,
               prior: JournalState | None) -> dict[str, Any]:
    """The journal header of this import; a resume reuses the journal's salt, and a
    changed CSV or key file is refused with its own message."""
    prior_header = (prior.header or {}) if prior is not None else {}
    salt_hex = prior_header.get("fingerprintSalt") if prior_header.get("kind") == KIND else None
    salt = bytes.fromhex(salt_hex) if isinstance(salt_hex, str) else _stdlib_secrets.token_bytes(16)
    spec = opts.spec(source.fingerprint(salt))
    if salt_hex:
        _check_same_file(opts, prior_header.get("spec"), spec)
    return {"kind": KIND, "spec": spec, "tenant": ctx.tenant_record(),
            "version": __version__, "fingerprintSalt": salt.hex()}


async def import_credentials(
    ctx: JobContext,
    opts: ImportOptions,
    source: ImportFile,
    *,
    progress: JobProgressSink | None = None,
    redactor: Redactor | None = None,
    confirm: Callable[[ImportPlan | None, int], bool] | None = None,
) -> ImportResult | None:
    """Run (or resume) an import of ``source`` (read by :func:`load_import_csv`).

    ``confirm(plan, writes)`` is asked before anything is written (``plan`` is None when
    the journal already holds one); declined, it returns None and leaves no journal
    behind. Raises UsageError when the plan is refused (invalid rows without
    ``skip_invalid``, existing names under ``on_existing="fail"``, a CSV changed since
    the journal was planned): nothing was sent then. Raises JobStopped on auth,
    permission or network failures; the journal stays consistent either way.
    """
    if source.rejects and not opts.skip_invalid:
        raise UsageError(source.problems_text())  # before any request, even a read
    distinct_files([(flag, path) for flag, path in (
        ("--journal", opts.journal),
        ("--reject-file", opts.reject_file),
        ("--report", opts.report),
        ("CSV", opts.csv),
    ) if path is not None])
    client = ctx.client
    prior = replay(opts.journal) if journal_has_records(opts.journal) else None
    header = job_header(ctx, opts, source, prior)
    if prior is not None and prior.header is not None:
        # refuse another job's journal before reading the tenant, not after
        verify_header(opts.journal, prior.header, header)

    plan: ImportPlan | None = None
    if prior is None or not prior.planned:
        # plan before the journal exists, so that a declined prompt (or a refused plan)
        # leaves no journal behind to refuse the corrected command
        plan = await plan_import(ctx, source, opts)
        refusal = plan.refusal(opts)
        if refusal:
            raise UsageError(refusal)
        if confirm is not None and not confirm(plan, plan.writes):
            return None
    elif confirm is not None:
        left = sum(1 for k, d in prior.items.items()
                   if prior.status(k) in ("pending", "uncertain")
                   and d.get("action") in ("create", "update"))
        if not confirm(None, left):
            return None

    if redactor is not None:
        redactor.add(*source.secrets())
    async with await Journal.open(opts.journal, header=header,
                                  forbidden=source.guard.found_in) as journal:
        resumed = journal.state.planned
        if not resumed:
            assert plan is not None
            await journal.write_plan((i.key, i.record(source)) for i in plan.items)
        state = journal.state
        todo = [k for k in state.items if state.status(k) in ("pending", "uncertain")]
        apply = _Apply(ctx, journal, source)
        if plan is not None:
            apply.by_id = {i.existing.id: i.existing for i in plan.of("update") if i.existing}
        else:
            await apply.list_current(todo)
        if opts.reject_file is not None:
            write_reject_file(opts.reject_file, source, [
                (int(d["line"]), str(d.get("reason", ""))) for d in state.items.values()
                if d.get("action") == "reject"])
        if progress is not None:
            writes = sum(1 for k in todo if state.items[k].get("action") in ("create", "update"))
            before = _counts(state)
            progress.start(len(state.items), len(state.items) - len(todo),
                           writes / client.write_rate.per_second, failed=before["failed"],
                           rejected=before["rejected"], skipped=before["skipped"])
        cap = ctx.concurrency or DEFAULT_CONCURRENCY_CAP
        window = Window(cap, client.write_rate, lambda: client.stats().latency_ewma)
        summary = await run_job_items(ctx, journal, todo, apply.work, window=window,
                                      progress=progress)
        if progress is not None:
            progress.finish()
        counts = _counts(state)
        if opts.report is not None:
            write_report(state, opts.report)
        await journal.event("finished", {"counts": state.counts()})
        return ImportResult(
            total=len(state.items),
            created=counts["created"],
            updated=counts["updated"],
            skipped=counts["skipped"],
            rejected=counts["rejected"],
            failed=counts["failed"],
            unfinished=counts["unfinished"],
            summary=summary,
            journal=opts.journal,
            report=opts.report,
            reject_file=opts.reject_file,
            resumed=resumed,
        )


class _Apply:
    """What one row's item does on the runner: nothing (reject, skip), a create or a PUT."""

    def __init__(self, ctx: JobContext, journal: Journal, source: ImportFile) -> None:
        self.ctx = ctx
        self.client = ctx.client
        self.journal = journal
        self.state = journal.state
        self.rows = {r.line: r for r in source.rows}
        self.columns = frozenset(source.header)
        #: the credentials as they stand: what an update PUTs over
        self.by_id: dict[str, Credential] = {}
        #: on resume, by (microtenant, name): what an uncertain create is reconciled with
        self.by_name: dict[tuple[str, str], Credential] = {}

    async def list_current(self, todo: list[str]) -> None:
        """On resume, one listing per microtenant that still has an update to PUT (the PUT
        carries the object as it stands now, not as planned) or a create to reconcile."""
        items, state = self.state.items, self.state
        scopes = {str(items[k].get("microtenantId")) for k in todo
                  if items[k].get("action") == "update"
                  or (items[k].get("action") == "create" and state.status(k) == "uncertain")}
        if not scopes:
            return
        tenants = await _microtenant_map(self.ctx)
        for scope in sorted(scopes & set(tenants)):
            async for cred in list_scope(self.client, tenants[scope]):
                self.by_id[cred.id] = cred
                self.by_name[(scope, normalize_name(cred.name))] = cred

    async def work(self, key: str) -> ItemResult:
        data = self.state.items[key]
        action = data.get("action")
        if action == "reject":
            return ItemResult("failed", error_id=REJECT_ERROR_ID, reason=data.get("reason"))
        if action == "skip":
            return ItemResult("skipped", reason=data.get("reason"))
        row = self.rows.get(int(data["line"]))
        if row is None:  # the same file, read by a bulkcred with stricter checks
            return ItemResult("failed", error_id=REJECT_ERROR_ID,
                              reason="the row does not pass this bulkcred's checks any more;"
                                     " import it with a new --journal once fixed")
        if action == "update":
            return await self.update(key, row, str(data["id"]))
        return await self.create(key, row)

    async def intent(self, key: str, op: str, **data: str) -> None:
        await self.journal.intent(key, op, attempt=self.state.states[key].attempts + 1,
                                  data={**data, "ts": round(time.time(), 3)})

    async def create(self, key: str, row: ImportRow) -> ItemResult:
        st = self.state.states[key]
        if st.status == "uncertain":
            # sent by an earlier run whose answer never made it to the journal
            found = self.by_name.get(row.name_key)
            if found is not None:
                return _adopted(found, row)
        for _ in range(_CREATE_TRIES):
            await self.intent(key, "create")
            try:
                made = await self.client.create_credential(
                    row.credential, row.secret,
                    microtenant_id=UNSET if row.microtenant_id is None else row.microtenant_id)
            except OutcomeUnknown:
                if (adopted := await self.lookup(row)) is not None:
                    return adopted
                continue  # it did not land: sending it again cannot make a second one
            except APIError:
                # a refusal after an earlier attempt may be the name that attempt took
                if st.attempts > 1 and (adopted := await self.lookup(row)) is not None:
                    return adopted
                raise
            return ItemResult("done", http=201, reason=f"created as id {made.id}",
                              data={"id": made.id})
        raise OutcomeUnknown(f"{_CREATE_TRIES} creates of line {row.line} went unanswered and"
                             " the name lookups found nothing; run the same command again to"
                             " reconcile it")

    async def lookup(self, row: ImportRow) -> ItemResult | None:
        """The row's credential if it exists now (then adopted, never created again)."""
        found = [c for c in await self.client.find_credentials_by_name(
            row.credential.name, microtenant_id=row.scope) if c.scope == row.scope]
        return _adopted(found[0], row) if found else None

    async def update(self, key: str, row: ImportRow, cred_id: str) -> ItemResult:
        cred = self.by_id.get(cred_id)
        if cred is None:
            return ItemResult("failed", http=404, error_id="resource.not.found",
                              reason=f"credential {cred_id} no longer exists")
        await self.intent(key, "update", id=cred_id)
        await self.client.update_credential(_updated(cred, row, self.columns), row.secret)
        return ItemResult("done", http=204, reason=f"updated id {cred_id}")


def _adopted(found: Credential, row: ImportRow) -> ItemResult:
    if found.credential_type is not row.credential.credential_type:
        return ItemResult("failed", error_id="bulkcred.name.taken", reason=(
            f"a {found.credential_type.value} credential of this name (id {found.id})"
            " appeared after the plan; not adopted: rename the row or delete that one"))
    return ItemResult("done", http=200, data={"id": found.id, "adopted": True},
                      reason=f"created as id {found.id} (the create's answer was lost;"
                             " found by name, not sent again)")


def names_outside_ui_set(source: ImportFile) -> list[int]:
    """The lines of the valid rows whose names the admin portal would not take (the API
    does)."""
    return [r.line for r in source.rows if not _UI_SAFE.fullmatch(r.credential.name)]
