"""Secrets: password and SSH key generation, key checks, the secrets file, redaction.

Besides the request body builder, only :class:`SecretSink` unwraps a :class:`Secret`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import stat
import string
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, Final

import anyio
import anyio.to_thread
import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_ssh_private_key,
)

from .errors import SecretSinkError
from .fsio import fsync_dir
from .fsio import write_all as _write_all  # a module name tests can fault
from .models import CredentialSecret, Secret

__all__ = [
    "check_sink_path",
    "MASK",
    "MAX_RSA_BITS",
    "PASSWORD_ALPHABET",
    "SECRET_FIELDS",
    "RedactingFilter",
    "Redactor",
    "SecretSink",
    "agenerate_ssh_key",
    "generate_password",
    "generate_ssh_key",
    "mask_mapping",
    "public_key_openssh",
    "read_sink",
    "validate_private_key",
]

#: What a secret is replaced with wherever it would show.
MASK: Final = "********"

#: Keys whose values are secrets in any mapping (compared case-insensitively).
SECRET_FIELDS: Final = frozenset({
    "password", "privateKey", "passphrase", "client_secret", "clientSecret", "access_token",
    "client_assertion",
})
_SECRET_KEYS: Final = frozenset(k.casefold() for k in SECRET_FIELDS)

_SYMBOLS: Final = "!#%*+-=?@^_"
#: Characters of generated passwords: no quotes, backslash, ``$``, ``&``, space or ``;``,
#: which shells, CSV files and connection strings would need escaped.
PASSWORD_ALPHABET: Final = string.ascii_letters + string.digits + _SYMBOLS
_CLASSES: Final = (string.ascii_lowercase, string.ascii_uppercase, string.digits, _SYMBOLS)

#: The most RSA bits ZPA takes for an SSH key.
MAX_RSA_BITS: Final = 2048
#: The curves an SSH server speaks (OpenSSH's ecdsa-sha2-nistp*).
_SSH_CURVES: Final = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def generate_password(length: int = 32) -> Secret:
    """A password from :mod:`secrets` with a lower, an upper, a digit and a symbol."""
    if length < len(_CLASSES):
        raise ValueError(f"a password needs at least {len(_CLASSES)} characters")
    while True:
        # redraw rather than patch in missing classes: every valid password stays
        # equally likely (a redraw is needed for about 1 in 180 at length 32)
        pw = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))
        if all(any(c in cls for c in pw) for cls in _CLASSES):
            return Secret(pw)


def generate_ssh_key() -> tuple[Secret, str]:
    """An RSA 2048 key: the private key as unencrypted PKCS#8 PEM, the public as OpenSSH."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=MAX_RSA_BITS)
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode("ascii")
    return Secret(pem), _openssh(key)


async def agenerate_ssh_key() -> tuple[Secret, str]:
    """:func:`generate_ssh_key` in a worker thread (keygen takes a CPU for ~0.1 s)."""
    return await anyio.to_thread.run_sync(generate_ssh_key)


class _Rejected(ValueError):
    """A private key ZPA would not take; the message never holds key material."""


_SSHKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _openssh(key: _SSHKey) -> str:
    return key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode("ascii")


def _load_private_key(pem: str, passphrase: str | None) -> _SSHKey:
    data = pem.strip().encode("utf-8", "replace")
    if not data:
        raise _Rejected("the private key is empty")
    password = passphrase.encode() if passphrase else None
    key: PrivateKeyTypes
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            key = load_ssh_private_key(data, password)
        elif b"PRIVATE KEY-----" in data:
            key = load_pem_private_key(data, password)
        elif b"PUBLIC KEY" in data or data.startswith((b"ssh-", b"ecdsa-")):
            raise _Rejected("this is a public key; ZPA needs the private key")
        else:
            raise _Rejected("not a PEM or OpenSSH private key")
    except TypeError as exc:
        # cryptography says whether a password was missing or superfluous, nothing more
        if "not encrypted" in str(exc):
            raise _Rejected("a passphrase was given but the private key is not encrypted; "
                            "leave the passphrase out") from None
        raise _Rejected("the private key is encrypted and no passphrase was given") from None
    except UnsupportedAlgorithm as exc:
        if "bcrypt" in str(exc):  # cryptography needs it for encrypted OpenSSH keys
            raise _Rejected("checking an encrypted OpenSSH private key needs the bcrypt "
                            "package (pip install bcrypt)") from None
        raise _Rejected("the private key uses an algorithm this bulkcred cannot read") from None
    except ValueError as exc:
        if isinstance(exc, _Rejected):
            raise
        if password is not None:
            raise _Rejected("the passphrase is wrong, or the private key is damaged") from None
        raise _Rejected("the private key cannot be read: it is damaged or not in PEM or "
                        "OpenSSH format") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size > MAX_RSA_BITS:
            raise _Rejected(f"an RSA key of {key.key_size} bits; ZPA takes RSA keys of up to "
                            f"{MAX_RSA_BITS} bits")
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, _SSH_CURVES):
            raise _Rejected(f"an EC key on curve {key.curve.name}, which SSH does not use "
                            "(use P-256, P-384 or P-521)")
    elif not isinstance(key, ed25519.Ed25519PrivateKey):
        kind = type(key).__name__.removesuffix("PrivateKey")
        raise _Rejected(f"the key type is {kind}; ZPA takes RSA (up to {MAX_RSA_BITS} bits), "
                        "EC or Ed25519 keys")
    return key


def validate_private_key(pem: str, passphrase: str | None = None) -> str | None:
    """``None`` if ZPA would take this private key, else why not (never key material)."""
    try:
        _load_private_key(pem, passphrase)
    except _Rejected as exc:
        return str(exc)
    return None


def public_key_openssh(pem: str, passphrase: str | None = None) -> str:
    """The OpenSSH public key (``ssh-rsa AAAA...``) of a private key ZPA would take.

    Raises :class:`ValueError` with the reason :func:`validate_private_key` gives.
    """
    return _openssh(_load_private_key(pem, passphrase))


# ---------------------------------------------------------------------------- the sink

#: How every sink record starts (the key order :meth:`SecretSink.append` writes).
_RECORD_START: Final = b'{"id":'


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _secret_of(rec: Any) -> tuple[str, str, CredentialSecret] | None:
    """(id, job id or "", secret) of one sink record, or None if it is not one."""
    if not isinstance(rec, dict):
        return None
    cid, job, pw, key, phrase = (rec.get(k) for k in
                                 ("id", "jobId", "password", "privateKey", "passphrase"))
    if not isinstance(cid, str) or not cid:
        return None
    if not all(v is None or isinstance(v, str) for v in (job, pw, key, phrase)):
        return None
    try:
        return cid, job or "", CredentialSecret(
            password=Secret(pw) if pw is not None else None,
            private_key=Secret(key) if key is not None else None,
            passphrase=Secret(phrase) if phrase is not None else None,
        )
    except ValueError:
        return None


def _parse_sink(data: bytes, path: str) -> tuple[dict[str, tuple[str, CredentialSecret]], int]:
    """Each id's last (job id, secret), and where a torn last line starts (else ``len(data)``).

    A ``"void": true`` line withdraws what its job recorded for the id before (ZPA
    refused it): the id's secret is then its last line from another job, if any.
    """
    hist: dict[str, list[tuple[str, CredentialSecret]]] = {}

    def current() -> dict[str, tuple[str, CredentialSecret]]:
        return {k: h[-1] for k, h in hist.items() if h}

    pos, lineno, size = 0, 0, len(data)
    while pos < size:
        nl = data.find(b"\n", pos)
        end = size if nl == -1 else nl
        lineno += 1
        line = data[pos:end]
        if not line.strip():  # a blank line left by an editor holds nothing
            pos = end + 1
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            if end + 1 >= size:
                return current(), pos  # the process died writing this line; never used
            rec = None
        if isinstance(rec, dict) and rec.get("void") is True and isinstance(rec.get("id"), str):
            job = rec.get("jobId") or ""
            hist[rec["id"]] = [e for e in hist.get(rec["id"], []) if e[0] != job]
            pos = end + 1
            continue
        found = _secret_of(rec) if rec is not None else None
        if found is None:
            raise SecretSinkError(
                f"{path}: line {lineno} is not a bulkcred secrets record: the file was edited "
                "or damaged, or it is not a secrets file; repair it or choose another path"
            )
        hist.setdefault(found[0], []).append(found[1:])
        pos = end + 1
    return current(), size


def _read_fd(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def read_sink(path: str | os.PathLike[str]) -> dict[str, CredentialSecret]:
    """Each credential id's current secret: the last line for it (a torn last line aside)."""
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretSinkError(f"{p}: cannot read the secrets file: {exc.strerror}") from None
    try:
        return {k: s for k, (_, s) in _parse_sink(_read_fd(fd), p)[0].items()}
    finally:
        os.close(fd)


def check_sink_path(path: str | os.PathLike[str]) -> None:
    """The checks :meth:`SecretSink.open` makes, without creating or locking anything:
    so a job can refuse a bad ``--secrets-out`` before it signs in or reads the tenant."""
    p = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(p))
    if not os.path.isdir(folder):
        raise SecretSinkError(f"{p}: the directory {folder} does not exist; create it or give"
                              " --secrets-out another path")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise SecretSinkError(f"{p} is a symbolic link; give --secrets-out the real path of a"
                              " regular file")
    _refuse_unsafe(p, st)


def _refuse_unsafe(path: str, st: os.stat_result) -> None:
    """A secrets file must be a regular file of ours that nobody else can read."""
    if not stat.S_ISREG(st.st_mode):
        raise SecretSinkError(f"{path} is not a regular file; give --secrets-out a file path")
    if st.st_uid != os.geteuid():
        raise SecretSinkError(f"{path} belongs to uid {st.st_uid}, not to you (uid "
                              f"{os.geteuid()}); choose a secrets file of your own")
    if st.st_mode & 0o077:
        raise SecretSinkError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}, so other users may read the "
            f"secrets in it; run `chmod 600 {path}` or choose a new path")


def _open_sink(path: str) -> int:
    # O_NOFOLLOW: a symlink could point the secrets anywhere; O_NONBLOCK: a FIFO must not hang us
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    created = False
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise SecretSinkError(f"{path}: the directory "
                                  f"{os.path.dirname(os.path.abspath(path))} does not exist; "
                                  "create it or give --secrets-out another path") from None
        if exc.errno == errno.ELOOP:
            raise SecretSinkError(f"{path} is a symbolic link; give --secrets-out the real "
                                  "path of a regular file") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):
            raise SecretSinkError(f"{path} is not a regular file; give --secrets-out a file "
                                  "path") from None
        raise SecretSinkError(f"{path}: cannot open the secrets file: {exc.strerror}") from None
    try:
        if created:
            os.fchmod(fd, 0o600)  # whatever the umask
        _refuse_unsafe(path, os.fstat(fd))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SecretSinkError(f"{path}: another bulkcred process is writing this secrets "
                                  "file; wait for it to finish, or choose another path") from None
        except OSError as exc:
            raise SecretSinkError(f"{path}: cannot lock the secrets file ({exc.strerror}); "
                                  "put it on a local file system") from None
        if created:
            fsync_dir(path)  # the new file's name must survive a crash like its lines
        else:
            _repair_tail(fd, path)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _repair_tail(fd: int, path: str) -> None:
    """Start the next line clean: cut a torn last line, end a complete one with a newline."""
    data = _read_fd(fd)
    _, torn_at = _parse_sink(data, path)
    tail = data[torn_at:]
    if tail:
        if not (tail.startswith(_RECORD_START) or _RECORD_START.startswith(tail)):
            raise SecretSinkError(f"{path} does not end in a bulkcred secrets record; it is "
                                  "not a secrets file, or it was damaged: choose another path")
        # a torn line was never fsynced, so no credential holds the secret it started
        os.ftruncate(fd, torn_at)
        os.fsync(fd)
    elif data and not data.endswith(b"\n"):
        _write_all(fd, b"\n")  # a hand-edited file whose last record lacks its newline
        os.fsync(fd)


class SecretSink:
    """The secrets file (``--secrets-out``): one JSON line per secret set, fsynced.

    Use as ``async with await SecretSink.open(path) as sink:``. The file is the only copy of
    a new secret, so :meth:`append` returns only once the line is on disk.
    """

    def __init__(self, path: str, fd: int, redactor: Redactor | None) -> None:
        self.path = path
        self._fd: int | None = fd
        self._redactor = redactor
        self._lock = anyio.Lock()
        self._failed: str | None = None

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *,
                   redactor: Redactor | None = None) -> SecretSink:
        """Create (mode 0600) or reopen the file and lock it; refuse an unsafe one.

        Every secret written or read back is added to ``redactor`` if one is given.
        """
        p = os.fspath(path)
        return cls(p, await anyio.to_thread.run_sync(_open_sink, p), redactor)

    async def __aenter__(self) -> SecretSink:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def append(self, record: Mapping[str, Any], secret: CredentialSecret,
                     public_key: str | None = None) -> None:
        """Write and fsync the line that makes ``secret`` the current one of ``record``.

        ``record`` is the credential's metadata (``Credential.to_record()``); a ``jobId`` in
        it is kept on the line, so that a resume can tell its own secrets from those of
        earlier jobs writing to the same file (:meth:`last_records`).
        """
        if self._redactor is not None:
            self._redactor.add(secret)
        line: dict[str, Any] = {
            "id": str(record["id"]),
            **{k: record.get(k) for k in ("name", "microtenantId", "credentialType", "userName")},
        }
        if record.get("jobId"):
            line["jobId"] = str(record["jobId"])
        line.update(secret.to_wire())
        if public_key is not None:
            line["publicKey"] = public_key
        line["rotatedAt"] = _utc_now()
        await self._write(line, "; the credential whose secret it was could not be recorded"
                                " was not changed in ZPA")

    async def void(self, record: Mapping[str, Any], reason: str) -> None:
        """Withdraw the secrets this job recorded for ``record``'s id: ZPA refused them.

        The line holds no secret; readers then take the id's last line from another job
        (the secret it still has), so the file never names a secret ZPA does not hold.
        """
        line: dict[str, Any] = {
            "id": str(record["id"]),
            **{k: record.get(k) for k in ("name", "microtenantId", "credentialType", "userName")},
            "jobId": str(record.get("jobId") or ""),
            "void": True,
            "reason": reason,
            "rotatedAt": _utc_now(),
        }
        await self._write(line)

    async def _write(self, line: Mapping[str, Any], consequence: str = "") -> None:
        """Append one line and fsync it (in a worker thread), or raise SecretSinkError."""
        data = orjson.dumps(line) + b"\n"
        async with self._lock:
            if self._fd is None:
                raise SecretSinkError(f"{self.path}: the secrets file is closed")
            if self._failed is not None:
                raise SecretSinkError(f"{self.path}: the secrets file stopped accepting "
                                      f"secrets after a write failed ({self._failed})")
            try:
                await anyio.to_thread.run_sync(_append_line, self._fd, data)
            except OSError as exc:
                self._failed = exc.strerror or str(exc)
                raise SecretSinkError(f"{self.path}: cannot write the secrets file: "
                                      f"{self._failed}{consequence}") from None

    def last_secrets(self) -> dict[str, CredentialSecret]:
        """Each id's last recorded secret, read back from the file (for a resume)."""
        return {k: s for k, (_, s) in self.last_records().items()}

    def last_records(self) -> dict[str, tuple[str, CredentialSecret]]:
        """Each id's last ``(jobId, secret)``; the job id is ``""`` on lines without one."""
        if self._fd is None:
            raise SecretSinkError(f"{self.path}: the secrets file is closed")
        found = _parse_sink(_read_fd(self._fd), self.path)[0]
        if self._redactor is not None:
            self._redactor.add(*(s for _, s in found.values()))
        return found

    async def aclose(self) -> None:
        """Release the lock (every line is already fsynced)."""
        with anyio.CancelScope(shield=True):
            async with self._lock:
                fd, self._fd = self._fd, None
                if fd is not None:
                    os.close(fd)


def _append_line(fd: int, data: bytes) -> None:
    size = os.fstat(fd).st_size
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except OSError:
        # a half line would glue itself to the next secret and make both unreadable
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


# ---------------------------------------------------------------------------- redaction

#: Secrets at least this long are indexed by their first characters; shorter ones by length.
_PREFIX: Final = 8


def _fragments(value: str) -> Iterable[str]:
    """``value`` and the pieces of it that can show on their own (PEM lines, escaped forms)."""
    yield value
    yield orjson.dumps(value)[1:-1].decode()  # as it shows inside a JSON log line
    if "-----BEGIN" in value:
        body = [ln.strip() for ln in value.splitlines()]
        body = [ln for ln in body if ln and not ln.startswith("-----") and ": " not in ln]
        yield from body
        yield "".join(body)


class Redactor:
    """The secrets known so far; :meth:`redact` masks every one in a text. Thread-safe.

    Matching costs one dict lookup per character whatever the number of secrets, so a
    redactor holding every password of a 10,000-credential job still scrubs log lines fast.
    """

    def __init__(self, values: Iterable[str | Secret | CredentialSecret] = ()) -> None:
        self._lock = threading.Lock()
        self._known: set[str] = set()
        # first _PREFIX chars -> secrets with that start, longest first
        self._long: dict[str, list[str]] = {}
        # length -> secrets of that length, for those shorter than _PREFIX
        self._short: dict[int, set[str]] = {}
        self.add(*values)

    def add(self, *values: str | Secret | CredentialSecret | None) -> None:
        """Learn secrets (a string, a :class:`Secret` or all of a :class:`CredentialSecret`)."""
        for v in values:
            if v is None:
                continue
            if isinstance(v, CredentialSecret):
                strings = v.values()
            elif isinstance(v, Secret):
                strings = [v.reveal()]
            else:
                strings = [v]
            with self._lock:
                for s in strings:
                    for frag in _fragments(s):
                        self._index(frag)

    def _index(self, s: str) -> None:
        if not s or s in self._known:
            return
        self._known.add(s)
        if len(s) >= _PREFIX:
            same = self._long.setdefault(s[:_PREFIX], [])
            same.append(s)
            same.sort(key=len, reverse=True)
        else:
            self._short.setdefault(len(s), set()).add(s)

    def _spans(self, text: str, first_only: bool) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        with self._lock:
            if not self._known:
                return spans
            short = sorted(self._short.items(), reverse=True)
            long = self._long
            for i in range(len(text)):
                end = i
                for s in long.get(text[i:i + _PREFIX], ()):
                    if text.startswith(s, i):
                        end = i + len(s)
                        break
                if end == i:
                    for n, group in short:
                        if text[i:i + n] in group:
                            end = i + n
                            break
                if end > i:
                    spans.append((i, end))
                    if first_only:
                        break
        return spans

    def redact(self, text: str) -> str:
        """``text`` with every known secret, and every part of one that overlaps, masked."""
        spans = self._spans(text, first_only=False)
        if not spans:
            return text
        out: list[str] = []
        pos = 0
        start, end = spans[0]
        # mask the union of all matches: overlapping secrets must not leave a piece showing
        for s, e in spans[1:]:
            if s <= end:
                end = max(end, e)
                continue
            out += (text[pos:start], MASK)
            pos, start, end = end, s, e
        out += (text[pos:start], MASK, text[end:])
        return "".join(out)

    def found_in(self, data: str | bytes) -> bool:
        """Whether a known secret occurs in ``data`` (the journal's ``forbidden`` check)."""
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        return bool(self._spans(text, first_only=True))


_LOG_RECORD_FIELDS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None))
) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Masks known secrets in a log record before any handler formats it.

    Attach it to the handlers (a logger's filters do not see records from child loggers).
    The message is formatted here and its arguments dropped; a traceback is formatted,
    masked and kept as ``exc_text`` while ``exc_info`` is cleared, so no formatter can
    render the raw exception again.
    """

    def __init__(self, redactor: Redactor, name: str = "") -> None:
        super().__init__(name)
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        r = self.redactor
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string: logging would print the raw arguments
            msg = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = r.redact(msg), None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = r.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = r.redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _LOG_RECORD_FIELDS:
                setattr(record, name, _masked(value, r))
        return True


def _masked(value: Any, redactor: Redactor | None) -> Any:
    if isinstance(value, Mapping):
        return mask_mapping(value, redactor=redactor)
    if isinstance(value, list | tuple):
        return [_masked(v, redactor) for v in value]
    if isinstance(value, str) and redactor is not None:
        return redactor.redact(value)
    return value


def mask_mapping(d: Mapping[str, Any], *, redactor: Redactor | None = None) -> dict[str, Any]:
    """A copy of ``d`` with the value of every :data:`SECRET_FIELDS` key masked, at any depth.

    With a ``redactor``, known secrets in the other string values are masked too.
    """
    return {
        k: MASK if isinstance(k, str) and k.casefold() in _SECRET_KEYS and v is not None
        else _masked(v, redactor)
        for k, v in d.items()
    }
