"""Credential, CredentialType, Microtenant and the Secret wrapper; wire <-> model.

The wire contract is written here for the client and again, independently, in
``bulkcred.sim``: a drift between the two fails the tests instead of hiding.
"""

from __future__ import annotations

import enum
import html
from dataclasses import dataclass, field, replace
from typing import Any, Final, Mapping

__all__ = [
    "DEFAULT_MICROTENANT",
    "UNSET",
    "Credential",
    "CredentialSecret",
    "CredentialType",
    "Microtenant",
    "PolicyRule",
    "Secret",
    "Unset",
    "normalize_microtenant_id",
    "normalize_name",
]

#: How requests address the Default microtenant (always the string "0", never falsy 0).
DEFAULT_MICROTENANT: Final = "0"


class Unset(enum.Enum):
    """Sentinel type: "not passed" is distinct from ``None`` and from microtenant ``"0"``."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = Unset.UNSET


class Secret:
    """A secret value whose ``repr`` and ``str`` never show it.

    Only the code that writes a request body or the secret sink calls :meth:`reveal`.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    def __str__(self) -> str:
        return "********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __len__(self) -> int:
        return len(self._value)

    def __reduce__(self) -> Any:  # never pickle a secret by accident
        raise TypeError("Secret values are not picklable")


class CredentialType(str, enum.Enum):
    USERNAME_PASSWORD = "USERNAME_PASSWORD"
    SSH_KEY = "SSH_KEY"
    PASSWORD = "PASSWORD"

    def __str__(self) -> str:
        return self.value

    @property
    def secret_field(self) -> str:
        """The wire field that holds this type's secret."""
        return "privateKey" if self is CredentialType.SSH_KEY else "password"

    @property
    def takes_user_name(self) -> bool:
        return self is not CredentialType.PASSWORD


def normalize_microtenant_id(value: object) -> str:
    """A microtenant id as ZPA's query string wants it: a string of digits, Default ``"0"``.

    Accepts ``0``/``"0"``/``"default"`` for Default and ints or digit strings otherwise.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a microtenant id: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"not a microtenant id: {value!r}")
        return str(value)
    if isinstance(value, str):
        v = value.strip()
        if v.lower() == "default":
            return DEFAULT_MICROTENANT
        if v.isascii() and v.isdigit():
            # ZPA ids are int64; a stray leading zero (seen in a doc sample) is not part of it
            return str(int(v))
    raise ValueError(
        f"not a microtenant id: {value!r} (expected digits, or 0 for the Default microtenant)"
    )


def normalize_name(name: str) -> str:
    """The key under which ZPA names compare: HTML entities undone, trimmed, case folded.

    ZPA may return names entity-encoded (``&#x2a;``); whether its comparison is
    case-sensitive is undocumented, so bulkcred treats names that differ only in case
    as the same name (the safe reading for duplicate detection).
    """
    prev = None
    cur = name
    for _ in range(3):  # the Go SDK unescapes twice; a third pass is harmless
        prev, cur = cur, html.unescape(cur)
        if cur == prev:
            break
    return cur.strip().casefold()


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    v = d.get(key)
    if v is None or v == "":
        return None
    return str(v)


def _opt_int(d: Mapping[str, Any], key: str) -> int | None:
    v = d.get(key)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Credential:
    """A privileged credential as ZPA returns it (never with its secret)."""

    id: str
    name: str
    credential_type: CredentialType
    user_name: str | None = None
    user_domain: str | None = None
    description: str | None = None
    #: the owning microtenant's id; ``None`` for the Default microtenant
    microtenant_id: str | None = None
    microtenant_name: str | None = None
    creation_time: int | None = None
    modified_time: int | None = None
    last_credential_reset_time: int | None = None
    modified_by: str | None = None
    #: wire fields this version does not model, kept so a full-object PUT loses nothing
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def scope(self) -> str:
        """The microtenant id to address this credential with (Default is ``"0"``)."""
        return self.microtenant_id if self.microtenant_id else DEFAULT_MICROTENANT

    @property
    def display_name(self) -> str:
        return html.unescape(self.name)

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> "Credential":
        known = {
            "id", "name", "credentialType", "userName", "userDomain", "description",
            "microtenantId", "microtenantName", "creationTime", "modifiedTime",
            "lastCredentialResetTime", "modifiedBy",
            # secrets are never kept even if a server were to echo one
            "password", "privateKey", "passphrase",
        }
        mt = _opt_str(d, "microtenantId")
        if mt == DEFAULT_MICROTENANT:
            mt = None
        return cls(
            id=str(d["id"]),
            name=str(d.get("name", "")),
            credential_type=CredentialType(str(d["credentialType"])),
            user_name=_opt_str(d, "userName"),
            user_domain=_opt_str(d, "userDomain"),
            description=_opt_str(d, "description"),
            microtenant_id=mt,
            microtenant_name=_opt_str(d, "microtenantName"),
            creation_time=_opt_int(d, "creationTime"),
            modified_time=_opt_int(d, "modifiedTime"),
            last_credential_reset_time=_opt_int(d, "lastCredentialResetTime"),
            modified_by=_opt_str(d, "modifiedBy"),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_wire(self, secret: "CredentialSecret | None" = None) -> dict[str, Any]:
        """The full object for a create (no id) or a full-object PUT (with id)."""
        body: dict[str, Any] = {}
        if self.id:
            body["id"] = self.id
        body["name"] = self.name
        body["credentialType"] = self.credential_type.value
        if self.credential_type.takes_user_name and self.user_name is not None:
            body["userName"] = self.user_name
        if self.user_domain is not None and self.credential_type.takes_user_name:
            body["userDomain"] = self.user_domain
        if self.description is not None:
            body["description"] = self.description
        if self.microtenant_id:
            body["microtenantId"] = self.microtenant_id
        if secret is not None:
            body.update(secret.to_wire())
        return body

    def with_changes(self, **changes: Any) -> "Credential":
        return replace(self, **changes)

    def to_record(self) -> dict[str, Any]:
        """Metadata for journals and reports: never a secret."""
        d: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "credentialType": self.credential_type.value,
            "microtenantId": self.scope,
        }
        for key, val in (
            ("userName", self.user_name),
            ("userDomain", self.user_domain),
            ("description", self.description),
            ("microtenantName", self.microtenant_name),
            ("lastCredentialResetTime", self.last_credential_reset_time),
            ("creationTime", self.creation_time),
        ):
            if val is not None:
                d[key] = val
        return d


@dataclass(frozen=True, slots=True)
class CredentialSecret:
    """The secret half of a credential: a password, or a private key (and passphrase)."""

    password: Secret | None = None
    private_key: Secret | None = None
    passphrase: Secret | None = None

    def __post_init__(self) -> None:
        if (self.password is None) == (self.private_key is None):
            raise ValueError("a credential secret is a password or a private key, not both")
        if self.passphrase is not None and self.private_key is None:
            raise ValueError("a passphrase goes with a private key")

    def fits(self, ctype: CredentialType) -> bool:
        if ctype is CredentialType.SSH_KEY:
            return self.private_key is not None
        return self.password is not None

    def to_wire(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.password is not None:
            out["password"] = self.password.reveal()
        if self.private_key is not None:
            out["privateKey"] = self.private_key.reveal()
        if self.passphrase is not None:
            out["passphrase"] = self.passphrase.reveal()
        return out

    def values(self) -> list[str]:
        """Every secret string held, for redaction scans."""
        return [s.reveal() for s in (self.password, self.private_key, self.passphrase) if s]


@dataclass(frozen=True, slots=True)
class Microtenant:
    """A microtenant; the Default one has ``id`` ``"0"`` (ZPA lists it by name only)."""

    id: str
    name: str
    enabled: bool = True

    @property
    def is_default(self) -> bool:
        return self.id == DEFAULT_MICROTENANT

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> "Microtenant":
        raw = _opt_str(d, "id")
        name = str(d.get("name", ""))
        mid = raw if raw else DEFAULT_MICROTENANT
        en = d.get("enabled", True)
        enabled = en if isinstance(en, bool) else str(en).lower() != "false"
        return cls(id=mid, name=name or ("Default" if mid == DEFAULT_MICROTENANT else mid),
                   enabled=enabled)


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """A credential policy rule (``INJECT_CREDENTIALS``) and the credential it names."""

    id: str
    name: str
    action: str | None = None
    credential_id: str | None = None
    credential_name: str | None = None
    credential_pool_id: str | None = None
    microtenant_id: str | None = None

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> "PolicyRule":
        cred = d.get("credential") or {}
        pool = d.get("credentialPool") or {}
        return cls(
            id=str(d.get("id", "")),
            name=str(d.get("name", "")),
            action=_opt_str(d, "action"),
            credential_id=_opt_str(cred, "id") if isinstance(cred, Mapping) else None,
            credential_name=_opt_str(cred, "name") if isinstance(cred, Mapping) else None,
            credential_pool_id=_opt_str(pool, "id") if isinstance(pool, Mapping) else None,
            microtenant_id=_opt_str(d, "microtenantId"),
        )
