"""The ``--state`` file: an orjson snapshot of the tenant (secret SHA-256s, never secrets)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson

from .config import SimConfig
from .seed import seed_tenant
from .tenant import Tenant

__all__ = ["load_tenant", "save_tenant"]


def load_tenant(config: SimConfig) -> Tenant:
    """The saved tenant when ``config.state`` exists, else a freshly seeded one."""
    if config.state is not None and Path(config.state).exists():
        tenant = Tenant.from_snapshot(orjson.loads(Path(config.state).read_bytes()))
        if tenant.customer_id != config.customer_id:
            raise ValueError(
                f"{config.state} holds customer {tenant.customer_id}, not {config.customer_id}"
            )
        return tenant
    return seed_tenant(config, int(time.time()))


def save_tenant(tenant: Tenant, path: str | os.PathLike[str]) -> None:
    """Write atomically, so a crash mid-save leaves the previous state intact."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps(tenant.snapshot()))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
