"""The in-memory tenant: credentials, microtenants and credential policy rules, with ZPA's
validation rules, ordered per-microtenant indexes (O(page) listing), wire rendering and snapshots.
"""

from __future__ import annotations

import bisect
import hashlib
import html
from dataclasses import dataclass
from typing import Any, Sequence

from .keys import KeyProblem, check_private_key

__all__ = [
    "CREDENTIAL_TYPES",
    "DEFAULT_MT",
    "FIRST_GENERATED_ID",
    "Credential",
    "Microtenant",
    "PolicyRule",
    "Tenant",
    "ZpaError",
    "invalid",
    "is_digits",
    "name_key",
    "sha256_hex",
]

DEFAULT_MT = 0
DEFAULT_MT_NAME = "Default"
CREDENTIAL_TYPES = ("USERNAME_PASSWORD", "SSH_KEY", "PASSWORD")
MAX_NAME_LENGTH = 255
FIRST_GENERATED_ID = 20000
SIM_ADMIN_ID = "216196257331372705"
CREDENTIAL_POLICY_TYPE = "8"
INJECT_CREDENTIALS = "INJECT_CREDENTIALS"
SNAPSHOT_FORMAT = "bulkcred-sim-state/1"


class ZpaError(Exception):
    """An error answered with ZPA's ``{"id", "reason", "params"}`` body."""

    def __init__(self, status: int, error_id: str, reason: str, params: Sequence[object] = ()):
        super().__init__(reason)
        self.status = status
        self.error_id = error_id
        self.reason = reason
        self.params = [str(p) for p in params]

    def body(self) -> dict[str, Any]:
        return {"id": self.error_id, "reason": self.reason, "params": self.params}


def not_found(ident: object) -> ZpaError:
    # Wording and status copied from ZPA's documented not-found example (a 400).
    return ZpaError(
        400, "resource.not.found", f"No resource exists with the given id/name :{ident}", [ident]
    )


def invalid(field: str, reason: str) -> ZpaError:
    return ZpaError(400, "request.validation.failed", reason, [field])


def is_digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes superscripts, which int() refuses)."""
    return text.isascii() and text.isdigit()


def name_key(name: str) -> str:
    """Names compare after HTML-unescaping, case-insensitively."""
    return html.unescape(name).casefold()


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def html_escape(text: str) -> str:
    """Entity-encode every ASCII character but letters and digits, like ``&#x2a;``."""
    return "".join(c if c.isalnum() or not c.isascii() else f"&#x{ord(c):x};" for c in text)


def _same(text: str) -> str:
    return text


@dataclass(slots=True)
class Microtenant:
    id: int
    name: str
    description: str
    criteria_value: str
    creation_time: int
    modified_time: int
    modified_by: str


@dataclass(slots=True)
class Credential:
    id: int
    name: str
    credential_type: str
    microtenant_id: int
    secret_sha256: str
    creation_time: int
    reset_time: int
    modified_by: str
    modified_time: int | None = None
    user_name: str | None = None
    user_domain: str | None = None
    description: str | None = None
    puts: int = 0
    created: bool = False


@dataclass(slots=True)
class PolicyRule:
    id: int
    name: str
    credential_id: int
    microtenant_id: int
    creation_time: int
    modified_by: str
    description: str | None = None


@dataclass(frozen=True, slots=True)
class _TypeRules:
    required: tuple[str, ...]
    optional: tuple[str, ...]
    secret: str


_TYPE_RULES = {
    "USERNAME_PASSWORD": _TypeRules(
        ("name", "userName", "password"), ("description", "userDomain"), "password"
    ),
    "SSH_KEY": _TypeRules(
        ("name", "userName", "privateKey"), ("description", "passphrase"), "privateKey"
    ),
    "PASSWORD": _TypeRules(("name", "password"), ("description",), "password"),
}
_SECRET_FIELDS = ("password", "privateKey", "passphrase")
_TEXT_FIELDS = ("name", "credentialType", "userName", "userDomain", "description", *_SECRET_FIELDS)


def _validated(body: object, existing: Credential | None) -> dict[str, Any]:
    """The stored fields of a create or full-replace PUT body, or a ZpaError."""
    if not isinstance(body, dict):
        raise ZpaError(400, "json.parse.error", "The request body must be a JSON object")
    values: dict[str, str] = {}
    for field in _TEXT_FIELDS:
        value = body.get(field)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise invalid(field, f"{field} must be a string")
        values[field] = value
    ctype = values.get("credentialType")
    if ctype is None:
        raise invalid("credentialType", "credentialType is required")
    if ctype not in _TYPE_RULES:
        raise ZpaError(
            400,
            "invalid.credential.type",
            f"credentialType must be one of {', '.join(CREDENTIAL_TYPES)}",
            [ctype],
        )
    if existing is not None and ctype != existing.credential_type:
        raise ZpaError(
            400,
            "credential.type.immutable",
            f"The credential type cannot change from {existing.credential_type} to {ctype}",
            [existing.credential_type, ctype],
        )
    rules = _TYPE_RULES[ctype]
    for field in rules.required:
        if not values.get(field, "").strip():
            raise invalid(field, f"{field} is required for {ctype} credentials")
    for field in _SECRET_FIELDS:
        if field in values and field not in rules.required + rules.optional:
            raise invalid(field, f"{field} is not a field of {ctype} credentials")
    if len(values["name"]) > MAX_NAME_LENGTH:
        raise invalid("name", f"name must be at most {MAX_NAME_LENGTH} characters")
    if ctype == "SSH_KEY":
        try:
            check_private_key(values["privateKey"], values.get("passphrase"))
        except KeyProblem as problem:
            raise ZpaError(400, problem.error_id, problem.reason, ["privateKey"]) from None
    takes = set(rules.required + rules.optional)
    # Fields the type does not take (userName on PASSWORD) are dropped, not echoed.
    return {
        "name": values["name"],
        "credential_type": ctype,
        "user_name": values.get("userName") if "userName" in takes else None,
        "user_domain": values.get("userDomain") if "userDomain" in takes else None,
        "description": values.get("description"),
        "secret_sha256": sha256_hex(values[rules.secret]),
    }


def _remove_sorted(seq: list[Any], item: Any) -> None:
    i = bisect.bisect_left(seq, item)
    if i < len(seq) and seq[i] == item:
        del seq[i]


def _split(a: Sequence[Any], b: Sequence[Any], k: int) -> int:
    """How many of the k smallest items of the disjoint sorted a and b come from a."""
    lo, hi = max(0, k - len(b)), min(k, len(a))
    while lo < hi:
        i = (lo + hi) // 2
        if a[i] < b[k - i - 1]:
            lo = i + 1
        else:
            hi = i
    return lo


def _ascending(lists: Sequence[Sequence[Any]], start: int, count: int) -> list[Any]:
    if len(lists) == 1:
        return list(lists[0][start : start + count])
    a, b = lists
    i = _split(a, b, start)
    j = start - i
    out: list[Any] = []
    while len(out) < count:
        if j >= len(b) or (i < len(a) and a[i] < b[j]):
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out


def page_of(lists: Sequence[Sequence[Any]], start: int, count: int, descending: bool) -> list[Any]:
    """Items [start, start+count) of the union of one or two disjoint sorted lists."""
    total = sum(len(seq) for seq in lists)
    if start >= total or count <= 0:
        return []
    if not descending:
        return _ascending(lists, start, min(count, total - start))
    end = total - start
    begin = max(0, end - count)
    page = _ascending(lists, begin, end - begin)
    page.reverse()
    return page


class _Index:
    """One scope's credentials, sorted by id and by (name key, id)."""

    __slots__ = ("ids", "names")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.names: list[tuple[str, int]] = []

    def add(self, cred: Credential) -> None:
        bisect.insort(self.ids, cred.id)
        bisect.insort(self.names, (name_key(cred.name), cred.id))

    def remove(self, cred: Credential) -> None:
        _remove_sorted(self.ids, cred.id)
        _remove_sorted(self.names, (name_key(cred.name), cred.id))


class Tenant:
    """One ZPA tenant. Mutations are synchronous, so each is atomic on the event loop."""

    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id
        self.customer_name = "bulkcred sim tenant"
        self.policy_set_id = str(int(customer_id) + 801)
        self.next_id = FIRST_GENERATED_ID
        self.microtenants: dict[int, Microtenant] = {}
        self.credentials: dict[int, Credential] = {}
        self.rules: dict[int, PolicyRule] = {}
        self._scopes: dict[int, _Index] = {DEFAULT_MT: _Index()}
        self._all = _Index()
        self._by_name: dict[str, set[int]] = {}
        self._rules_of: dict[int, set[int]] = {}

    # ---- building -------------------------------------------------------------------

    def allocate_id(self) -> int:
        ident = self.next_id
        self.next_id += 1
        return ident

    def add_microtenant(self, mt: Microtenant) -> None:
        self.microtenants[mt.id] = mt
        self._scopes.setdefault(mt.id, _Index())

    def load_credentials(self, creds: Sequence[Credential]) -> None:
        """Bulk insert, then sort each index once (insort per item would be quadratic)."""
        for cred in creds:
            self.credentials[cred.id] = cred
        for index in (*self._scopes.values(), self._all):
            index.ids.clear()
            index.names.clear()
        self._by_name.clear()
        for cred in self.credentials.values():
            key = name_key(cred.name)
            for index in (self._scopes[cred.microtenant_id], self._all):
                index.ids.append(cred.id)
                index.names.append((key, cred.id))
            self._by_name.setdefault(key, set()).add(cred.id)
        for index in (*self._scopes.values(), self._all):
            index.ids.sort()
            index.names.sort()

    def add_rule(self, rule: PolicyRule) -> None:
        self.rules[rule.id] = rule
        self._rules_of.setdefault(rule.credential_id, set()).add(rule.id)

    def _index(self, cred: Credential) -> None:
        self._scopes[cred.microtenant_id].add(cred)
        self._all.add(cred)
        self._by_name.setdefault(name_key(cred.name), set()).add(cred.id)

    def _unindex(self, cred: Credential) -> None:
        self._scopes[cred.microtenant_id].remove(cred)
        self._all.remove(cred)
        key = name_key(cred.name)
        same = self._by_name[key]
        same.discard(cred.id)
        if not same:
            del self._by_name[key]

    # ---- microtenants -----------------------------------------------------------

    def parse_microtenant(self, text: str | None, field: str = "microtenantId") -> int | None:
        """None when absent; 0 for Default; refuses malformed and unknown ids."""
        if text is None:
            return None
        if not is_digits(text) or str(int(text)) != text:
            raise ZpaError(
                400, "invalid.microtenant", f"{field} {text!r} is not a microtenant id", [text]
            )
        mt = int(text)
        if mt != DEFAULT_MT and mt not in self.microtenants:
            raise ZpaError(
                400, "microtenant.not.found", f"No microtenant exists with id {text}", [text]
            )
        return mt

    def microtenant_name(self, mt: int) -> str:
        return DEFAULT_MT_NAME if mt == DEFAULT_MT else self.microtenants[mt].name

    # ---- credential reads -------------------------------------------------------

    def _lookup(self, ident: str) -> Credential:
        cred = self.credentials.get(int(ident)) if is_digits(ident) else None
        if cred is None:
            raise not_found(ident)
        return cred

    def get(self, ident: str, scope: int | None) -> Credential:
        """Absent scope sees all; 0 sees Default's; X sees X's own and Default's (inherited)."""
        cred = self._lookup(ident)
        if scope is not None and cred.microtenant_id not in (scope, DEFAULT_MT):
            raise not_found(ident)
        return cred

    def _owned(self, ident: str, scope: int | None) -> Credential:
        # Writes without microtenantId act on Default, as the API documents for create/update.
        cred = self._lookup(ident)
        if cred.microtenant_id != (DEFAULT_MT if scope is None else scope):
            raise not_found(ident)
        return cred

    @staticmethod
    def owners(scope: int | None, ownership: str | None) -> frozenset[int] | None:
        """The owning microtenants a listing covers; None means every one."""
        if ownership == "INHERITED":
            return frozenset([DEFAULT_MT]) if scope not in (None, DEFAULT_MT) else frozenset()
        if scope is None:
            return None
        if scope == DEFAULT_MT or ownership == "MICROTENANT_SPECIFIC":
            return frozenset([scope])
        return frozenset([scope, DEFAULT_MT])

    def list_credentials(
        self,
        *,
        scope: int | None,
        ownership: str | None,
        name: str | None,
        by_name: bool,
        descending: bool,
        start: int,
        count: int,
    ) -> tuple[int, list[Credential]]:
        """(total matches, the page) in id order, or (name, id) order when by_name."""
        owners = self.owners(scope, ownership)
        if name is not None:
            matches = [
                self.credentials[i]
                for i in self._by_name.get(name_key(name), ())
                if owners is None or self.credentials[i].microtenant_id in owners
            ]
            if by_name:
                matches.sort(key=lambda c: (name_key(c.name), c.id), reverse=descending)
            else:
                matches.sort(key=lambda c: c.id, reverse=descending)
            return len(matches), matches[start : start + count]
        indexes = [self._all] if owners is None else [self._scopes[m] for m in sorted(owners)]
        lists = [ix.names if by_name else ix.ids for ix in indexes]
        keys = page_of(lists, start, count, descending)
        ids = [k[1] for k in keys] if by_name else keys
        return sum(len(seq) for seq in lists), [self.credentials[i] for i in ids]

    # ---- credential writes ------------------------------------------------------

    def _check_unique(self, name: str, mt: int, self_id: int | None = None) -> None:
        for other in self._by_name.get(name_key(name), ()):
            if other != self_id and self.credentials[other].microtenant_id == mt:
                raise ZpaError(
                    400,
                    "resource.already.exist",
                    f"A credential named {name!r} already exists in microtenant "
                    f"{self.microtenant_name(mt)!r}",
                    [name],
                )

    def _check_unused(self, cred: Credential, action: str) -> None:
        rule_ids = sorted(self._rules_of.get(cred.id, ()))
        if rule_ids:
            names = [self.rules[r].name for r in rule_ids]
            listed = ", ".join(f"{r} ({n!r})" for r, n in zip(rule_ids, names))
            raise ZpaError(
                400,
                "credential.in.use",
                f"Cannot {action} credential {cred.id}: credential policy rules use it: {listed}",
                names,
            )

    def create(self, body: object, scope: int | None, now: int) -> Credential:
        mt = DEFAULT_MT if scope is None else scope
        values = _validated(body, None)
        self._check_unique(values["name"], mt)
        cred = Credential(
            id=self.allocate_id(),
            microtenant_id=mt,
            creation_time=now,
            modified_time=now,
            reset_time=now,
            modified_by=SIM_ADMIN_ID,
            created=True,
            **values,
        )
        self.credentials[cred.id] = cred
        self._index(cred)
        return cred

    def update(self, ident: str, body: object, scope: int | None, now: int) -> Credential:
        cred = self._owned(ident, scope)
        if isinstance(body, dict) and body.get("id") not in (None, "") and str(body["id"]) != ident:
            raise invalid("id", f"The body id {body['id']} does not match the path id {ident}")
        values = _validated(body, cred)
        self._check_unique(values["name"], cred.microtenant_id, cred.id)
        self._unindex(cred)
        for attr, value in values.items():
            setattr(cred, attr, value)
        cred.modified_time = cred.reset_time = now
        cred.modified_by = SIM_ADMIN_ID
        cred.puts += 1
        self._index(cred)
        return cred

    def delete(self, ident: str, scope: int | None) -> Credential:
        cred = self._owned(ident, scope)
        self._check_unused(cred, "delete")
        self._unindex(cred)
        del self.credentials[cred.id]
        return cred

    def move(self, ident: str, source: int | None, target: int | None, now: int) -> Credential:
        cred = self._owned(ident, source)
        if target is None:
            raise invalid("targetMicrotenantId", "targetMicrotenantId is required to move")
        if target == cred.microtenant_id:
            raise ZpaError(
                400,
                "invalid.move.target",
                f"Credential {cred.id} already belongs to microtenant "
                f"{self.microtenant_name(target)!r}",
                [target],
            )
        self._check_unused(cred, "move")
        self._check_unique(cred.name, target)
        self._unindex(cred)
        cred.microtenant_id = target
        cred.modified_time = now
        cred.modified_by = SIM_ADMIN_ID
        self._index(cred)
        return cred

    # ---- credential policy rules ------------------------------------------------

    def check_policy_set(self, set_id: str) -> None:
        if set_id != self.policy_set_id:
            raise not_found(set_id)

    def rules_in(self, scope: int | None) -> list[PolicyRule]:
        """Rules are not inherited: a scope sees only its own; absent sees all."""
        rules = sorted(self.rules.values(), key=lambda r: r.id)
        return rules if scope is None else [r for r in rules if r.microtenant_id == scope]

    def create_rule(self, body: object, scope: int | None, now: int) -> PolicyRule:
        mt = DEFAULT_MT if scope is None else scope
        if not isinstance(body, dict):
            raise ZpaError(400, "json.parse.error", "The request body must be a JSON object")
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise invalid("name", "name is required")
        if body.get("action") != INJECT_CREDENTIALS:
            raise invalid("action", f"credential policy rules need action {INJECT_CREDENTIALS}")
        ref = body.get("credential")
        cred_id = ref.get("id") if isinstance(ref, dict) else None
        if not isinstance(cred_id, (str, int)) or isinstance(cred_id, bool):
            raise invalid("credential", "credential.id is required")
        cred = self.get(str(cred_id), mt)
        key = name_key(name)
        if any(r.microtenant_id == mt and name_key(r.name) == key for r in self.rules.values()):
            raise ZpaError(
                400, "resource.already.exist", f"A rule named {name!r} already exists", [name]
            )
        description = body.get("description")
        rule = PolicyRule(
            id=self.allocate_id(),
            name=name,
            credential_id=cred.id,
            microtenant_id=mt,
            creation_time=now,
            modified_by=SIM_ADMIN_ID,
            description=description if isinstance(description, str) and description else None,
        )
        self.add_rule(rule)
        return rule

    def delete_rule(self, ident: str, scope: int | None) -> PolicyRule:
        rule = self.rules.get(int(ident)) if is_digits(ident) else None
        if rule is None or rule.microtenant_id != (DEFAULT_MT if scope is None else scope):
            raise not_found(ident)
        del self.rules[rule.id]
        users = self._rules_of[rule.credential_id]
        users.discard(rule.id)
        if not users:
            del self._rules_of[rule.credential_id]
        return rule

    # ---- wire rendering -----------------------------------------------------------

    def _owner_fields(self, out: dict[str, Any], mt: int) -> None:
        # Default items carry only the name; others carry both id and name.
        if mt != DEFAULT_MT:
            out["microtenantId"] = str(mt)
        out["microtenantName"] = self.microtenant_name(mt)

    def credential_wire(self, cred: Credential, escape: bool = False) -> dict[str, Any]:
        enc = html_escape if escape else _same
        out: dict[str, Any] = {"id": str(cred.id)}
        if cred.modified_time is not None:
            out["modifiedTime"] = str(cred.modified_time)
        out["creationTime"] = str(cred.creation_time)
        out["modifiedBy"] = cred.modified_by
        out["name"] = enc(cred.name)
        if cred.description:
            out["description"] = enc(cred.description)
        if cred.user_domain:
            out["userDomain"] = cred.user_domain
        if cred.user_name is not None:
            out["userName"] = cred.user_name
        out["credentialType"] = cred.credential_type
        out["lastCredentialResetTime"] = str(cred.reset_time)
        self._owner_fields(out, cred.microtenant_id)
        return out

    def microtenant_wires(self) -> list[dict[str, Any]]:
        """Default first (name only, no id), then every microtenant by id."""
        out: list[dict[str, Any]] = [{"name": DEFAULT_MT_NAME}]
        for mt in sorted(self.microtenants.values(), key=lambda m: m.id):
            out.append(
                {
                    "id": str(mt.id),
                    "name": mt.name,
                    "description": mt.description,
                    "enabled": True,
                    "criteriaAttribute": "AuthDomain",
                    "criteriaAttributeValues": [mt.criteria_value],
                    "creationTime": str(mt.creation_time),
                    "modifiedTime": str(mt.modified_time),
                    "modifiedBy": mt.modified_by,
                }
            )
        return out

    def rule_wire(self, rule: PolicyRule, escape: bool = False) -> dict[str, Any]:
        enc = html_escape if escape else _same
        cred = self.credentials[rule.credential_id]
        out: dict[str, Any] = {
            "id": str(rule.id),
            "name": enc(rule.name),
            "action": INJECT_CREDENTIALS,
            "policySetId": self.policy_set_id,
            "policyType": CREDENTIAL_POLICY_TYPE,
            "credential": {"id": str(cred.id), "name": enc(cred.name)},
            "creationTime": str(rule.creation_time),
            "modifiedTime": str(rule.creation_time),
            "modifiedBy": rule.modified_by,
        }
        if rule.description:
            out["description"] = enc(rule.description)
        self._owner_fields(out, rule.microtenant_id)
        return out

    def policy_set_wire(self, scope: int | None, escape: bool = False) -> dict[str, Any]:
        return {
            "id": self.policy_set_id,
            "name": "Credential Policy",
            "enabled": True,
            "policyType": CREDENTIAL_POLICY_TYPE,
            "rules": [self.rule_wire(r, escape) for r in self.rules_in(scope)],
        }

    # ---- snapshots ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything but raw secrets, which the sim never holds: only their SHA-256."""
        return {
            "format": SNAPSHOT_FORMAT,
            "customerId": self.customer_id,
            "nextId": self.next_id,
            "microtenants": list(self.microtenants.values()),
            "credentials": list(self.credentials.values()),
            "rules": list(self.rules.values()),
        }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> Tenant:
        if data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"not a simulator state file (format {data.get('format')!r})")
        tenant = cls(str(data["customerId"]))
        tenant.next_id = int(data["nextId"])
        for item in data["microtenants"]:
            tenant.add_microtenant(Microtenant(**item))
        tenant.load_credentials([Credential(**item) for item in data["credentials"]])
        for item in data["rules"]:
            tenant.add_rule(PolicyRule(**item))
        return tenant
