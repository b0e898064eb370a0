"""What every job shares: listing a scope of the tenant, job headers, options."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from ..client import ZPAClient
from ..errors import BadRequest, NotFound, PermissionDenied, UsageError
from ..models import DEFAULT_MICROTENANT, Credential, Microtenant, normalize_microtenant_id

log = logging.getLogger("bulkcred.jobs")

__all__ = [
    "JobContext",
    "list_scope",
    "resolve_microtenants",
    "scope_credentials",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobContext:
    """What a job needs besides its own options: the client and the tenant's identity."""

    client: ZPAClient
    base_url: str
    customer_id: str
    concurrency: int | None = None
    #: called with (class, seconds) when the server pauses a request class
    on_pause: Callable[[str, float], None] | None = None

    def tenant_record(self) -> dict[str, str]:
        return {"baseUrl": self.base_url.rstrip("/"), "customerId": self.customer_id}


async def resolve_microtenants(client: ZPAClient, only: str | None) -> list[Microtenant]:
    """The microtenants a job covers: ``only`` (checked to exist), or all of them.

    A tenant without microtenants (or a key that may not list them) is just Default.
    """
    try:
        tenants = [m async for m in client.iter_microtenants()]
    except (NotFound, PermissionDenied):
        tenants = []
    if not any(m.is_default for m in tenants):
        tenants.insert(0, Microtenant(id=DEFAULT_MICROTENANT, name="Default"))
    if only is None:
        return tenants
    want = normalize_microtenant_id(only)
    for m in tenants:
        if m.id == want:
            return [m]
    known = ", ".join(f"{m.id} ({m.name})" for m in tenants)
    raise UsageError(
        f"microtenant {only!r} does not exist in this tenant; known microtenants: {known}"
    )


#: ZPA's documented filter for what a microtenant defines itself (not inherited)
OWN_ONLY = "ownershipType EQ MICROTENANT_SPECIFIC"


async def list_scope(client: ZPAClient, microtenant: Microtenant) -> AsyncIterator[Credential]:
    """The credentials a microtenant owns (not the ones it inherits from Default).

    A microtenant's listing includes Default's inherited credentials; the ownership
    filter keeps them off the wire (a tenant of many microtenants would otherwise read
    Default once per microtenant). The owner check below stays, so a server that
    ignores the filter still gives the right answer, only slower.
    """
    search = None if microtenant.is_default else OWN_ONLY
    pages = 0
    try:
        async for page in client.iter_credential_pages(microtenant_id=microtenant.id,
                                                       search=search):
            pages += 1
            for cred in page:
                if cred.scope == microtenant.id:
                    yield cred
    except BadRequest:
        if search is None or pages:
            raise
        log.warning("the server refused the ownership filter; listing microtenant %s"
                    " with its inherited credentials", microtenant.id)
        async for page in client.iter_credential_pages(microtenant_id=microtenant.id):
            for cred in page:
                if cred.scope == microtenant.id:
                    yield cred


async def scope_credentials(
    client: ZPAClient, microtenants: list[Microtenant]
) -> AsyncIterator[Credential]:
    """Every credential owned by the given microtenants, each exactly once."""
    seen: set[str] = set()
    for mt in microtenants:
        async for cred in list_scope(client, mt):
            if cred.id not in seen:
                seen.add(cred.id)
                yield cred
