"""Deterministic seeding: the API article's example credentials, plus generated microtenants,
credentials and credential policy rules that are the same for the same seed.
"""

from __future__ import annotations

import random
import string

from .config import SimConfig
from .tenant import (
    DEFAULT_MT,
    FIRST_GENERATED_ID,
    Credential,
    Microtenant,
    PolicyRule,
    Tenant,
    name_key,
    sha256_hex,
)

__all__ = ["SCOPE_C_ID", "seed_tenant"]

SCOPE_C_ID = 145260601092866314
DAY = 86400

# The article's list examples, verbatim: id, type, name, userName, creationTime,
# modifiedTime (absent on some), lastCredentialResetTime, modifiedBy, description, userDomain.
_DEFAULT_EXAMPLES = [
    (47, "SSH_KEY", "test", "test123",
     1668431272, None, 1668431272, "72057594038052745", None, None),
    (259, "USERNAME_PASSWORD", "test43782389823", "admin@lE54dmi5ytV2JsPejpxTP6jzy.com",
     1681193467, 1681193539, 1681193539, "72057594038071302",
     "8h5KXKVxFOi92gpwy0RUbNGqa", "yaYDDsmnke7sclsshifGnfuua.com"),
    (80, "SSH_KEY", "test8&^%$", "simha",
     1671722598, 1681112288, 1671722598, "72057594038071302", None, None),
    (20, "USERNAME_PASSWORD", "testCred", "test123",
     1664475368, 1668433318, 1668433318, "72057594038052745", None, None),
    (113, "SSH_KEY", "testCred22", "test",
     1676338296, None, 1676338296, "72057594038006701", None, None),
    (57, "USERNAME_PASSWORD", "trial01", "Zscaler",
     1669048095, None, 1669048095, "72057594038072642", None, None),
]
_SCOPE_C_EXAMPLES = [
    (453, "SSH_KEY", "key size test", "testkey",
     1667515573, None, 1667515573, "72057594038067446", None, None),
    (128, "USERNAME_PASSWORD", "Test Credentials", "test",
     1663696264, 1667932422, 1667932422, "72057594038006701", None, None),
    (455, "SSH_KEY", "Test Key Size 1", "test-key-1",
     1667515783, None, 1667515783, "72057594038067446", None, None),
    (11262, "USERNAME_PASSWORD", "test-test-test-1", "krishna",
     1683125378, None, 1683125378, "72057594038624153", "test-test-test-1", "zscaler.com"),
]

_ADMINS = ["72057594038052745", "72057594038071302", "72057594038006701", "216196257331372705"]
_PREFIXES = ["srv", "db", "web", "rdp", "vnc", "ssh", "jump", "app", "ops", "bkp", "win", "lnx"]
_ROLES = ["admin", "svc", "root", "deploy", "ro", "sql", "oracle", "build", "backup", "monitor"]
_USERS = ["administrator", "root", "svc_backup", "deploy", "oracle", "ubuntu", "ec2-user", "dba"]
_DESCRIPTIONS = [None, None, "seeded {p} {r}", "*.example.com jump host"]
# Shapes of names outside the UI-safe set [A-Za-z0-9._-], as seen in API samples and real data.
_UNSAFE = ["{p} {r} {n}", "{p}/{r}{n}", "{p}&{r}-{n}", "{p}-{r}*{n}", "{p}.{r} #{n}", "{p}:{r}{n}"]


def _secret(rng: random.Random, ctype: str, ident: int) -> str:
    # Seeded SSH keys get a placeholder, not a real key: generating RSA keys for tens
    # of thousands of credentials would take minutes. Only the hash is kept anyway.
    if ctype == "SSH_KEY":
        return f"sim-placeholder-ssh-key:{ident}:{rng.getrandbits(128):032x}"
    return f"{rng.getrandbits(128):032x}"


def _example(row: tuple, mt: int, rng: random.Random) -> Credential:
    ident, ctype, name, user, created, modified, reset, by, description, domain = row
    return Credential(
        id=ident,
        name=name,
        credential_type=ctype,
        microtenant_id=mt,
        secret_sha256=sha256_hex(_secret(rng, ctype, ident)),
        creation_time=created,
        modified_time=modified,
        reset_time=reset,
        modified_by=by,
        user_name=user,
        user_domain=domain,
        description=description,
    )


def _scope_name(k: int) -> str:
    # Scope C (the article's), then Scope D ... Scope Z, Scope AA, Scope AB ...
    letters = string.ascii_uppercase
    k += 2
    label = ""
    while True:
        label = letters[k % 26] + label
        k = k // 26 - 1
        if k < 0:
            return f"Scope {label}"


def _microtenants(tenant: Tenant, count: int, now: int) -> None:
    for k in range(count):
        created = now - (400 - k % 300) * DAY
        name = _scope_name(k)
        tenant.add_microtenant(
            Microtenant(
                id=SCOPE_C_ID + k,
                name=name,
                description=f"{name} (seeded)",
                criteria_value=f"{name.lower().replace(' ', '-')}.example.com",
                creation_time=created,
                modified_time=created,
                modified_by=_ADMINS[0],
            )
        )


def _generated(
    tenant: Tenant, examples: list[Credential], count: int, rng: random.Random, now: int
) -> list[Credential]:
    owners = [DEFAULT_MT, *sorted(tenant.microtenants)]
    taken = {(c.microtenant_id, name_key(c.name)) for c in examples}
    made: list[Credential] = []
    for k in range(count):
        ident = FIRST_GENERATED_ID + k
        owner = DEFAULT_MT if len(owners) == 1 or rng.random() < 0.4 else rng.choice(owners[1:])
        ctype = rng.choices(("USERNAME_PASSWORD", "SSH_KEY", "PASSWORD"), (5, 3, 2))[0]
        prefix, role = rng.choice(_PREFIXES), rng.choice(_ROLES)
        shape = rng.random()
        name = f"{prefix}-{role}-{k:05d}"
        if shape < 0.03:
            name = rng.choice(_UNSAFE).format(p=prefix, r=role, n=f"{k:05d}")
        elif shape < 0.06 and made:
            # A name (or a case variant of it) that already exists in another scope.
            earlier = made[rng.randrange(len(made))]
            candidate = earlier.name if rng.random() < 0.5 else earlier.name.upper()
            if earlier.microtenant_id != owner and (owner, name_key(candidate)) not in taken:
                name = candidate
        taken.add((owner, name_key(name)))
        age = rng.randint(2, 1000)
        created = now - age * DAY - rng.randrange(DAY)
        if rng.random() < 0.2:
            reset = created  # never rotated
        else:
            reset = created + rng.randint(0, age - 1) * DAY
        modified = None if rng.random() < 0.1 else reset
        user = rng.choice(_USERS) if rng.random() < 0.7 else f"user{k}"
        domain = "corp.example.com" if rng.random() < 0.3 else None
        description = rng.choice(_DESCRIPTIONS)
        made.append(
            Credential(
                id=ident,
                name=name,
                credential_type=ctype,
                microtenant_id=owner,
                secret_sha256=sha256_hex(_secret(rng, ctype, ident)),
                creation_time=created,
                modified_time=modified,
                reset_time=reset,
                modified_by=rng.choice(_ADMINS),
                user_name=user if ctype != "PASSWORD" else None,
                user_domain=domain if ctype == "USERNAME_PASSWORD" else None,
                description=description.format(p=prefix, r=role) if description else None,
            )
        )
    return made


def _rules(tenant: Tenant, count: int, rng: random.Random, now: int) -> None:
    ids = sorted(tenant.credentials)
    for k in range(count if ids else 0):
        cred = tenant.credentials[rng.choice(ids)]
        tenant.add_rule(
            PolicyRule(
                id=tenant.allocate_id(),
                name=f"inject-{k:04d}",
                credential_id=cred.id,
                microtenant_id=cred.microtenant_id,
                creation_time=now - rng.randint(1, 300) * DAY,
                modified_by=rng.choice(_ADMINS),
            )
        )


def seed_tenant(config: SimConfig, now: int) -> Tenant:
    """A tenant built from ``config`` alone; ``now`` (epoch seconds) anchors the ages."""
    rng = random.Random(config.seed)
    tenant = Tenant(config.customer_id)
    _microtenants(tenant, config.microtenants, now)
    examples: list[Credential] = []
    if config.examples:
        examples += [_example(row, DEFAULT_MT, rng) for row in _DEFAULT_EXAMPLES]
        if config.microtenants:
            examples += [_example(row, SCOPE_C_ID, rng) for row in _SCOPE_C_EXAMPLES]
    tenant.load_credentials(examples + _generated(tenant, examples, config.credentials, rng, now))
    tenant.next_id = FIRST_GENERATED_ID + config.credentials
    _rules(tenant, config.policy_rules, rng, now)
    return tenant
