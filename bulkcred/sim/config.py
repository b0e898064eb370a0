"""SimConfig: the frozen, keyword-only settings of one simulated tenant, and rate parsing."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .faults import parse_faults

__all__ = ["Rate", "SimConfig", "parse_rate"]

_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s)\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``limit`` accepted requests per ``window`` seconds."""

    limit: int
    window: float


def parse_rate(spec: str) -> Rate:
    """Parse ``N/Ts`` or ``N/Tms`` (``20/10s``, ``5/250ms``, ``10/0.5s``)."""
    match = _RATE_RE.match(spec)
    if not match:
        raise ValueError(f"rate {spec!r} is not of the form N/Ts or N/Tms")
    limit = int(match.group(1))
    window = float(match.group(2)) / (1000.0 if match.group(3) == "ms" else 1.0)
    if limit < 1 or window <= 0:
        raise ValueError(f"rate {spec!r} needs N >= 1 and T > 0")
    return Rate(limit, window)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Everything one simulator instance needs; validated on construction."""

    host: str = "127.0.0.1"
    port: int = 0
    customer_id: str = "216196257331281920"
    client_id: str = "sim-client"
    client_secret: str = "sim-secret"
    credentials: int = 0
    microtenants: int = 2
    seed: int = 0
    read_rate: str = "20/10s"
    write_rate: str = "10/10s"
    token_ttl: float = 3600.0
    faults: str = ""
    state: str | Path | None = None
    limit_mode: str = "sliding"
    policy_rules: int = 0
    examples: bool = True

    def __post_init__(self) -> None:
        if not _is_loopback(self.host):
            raise ValueError(f"the simulator serves loopback only, not {self.host!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} out of range")
        if not (self.customer_id.isascii() and self.customer_id.isdigit()):
            raise ValueError("customer_id must be a string of digits")
        for name in ("credentials", "microtenants", "policy_rules"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not (0 < self.token_ttl < math.inf):
            raise ValueError("token_ttl must be a positive number of seconds")
        if self.limit_mode not in ("sliding", "fixed"):
            raise ValueError("limit_mode must be 'sliding' or 'fixed'")
        parse_rate(self.read_rate)
        parse_rate(self.write_rate)
        parse_faults(self.faults)

    @property
    def rates(self) -> dict[str, Rate]:
        """The parsed limit of each request class."""
        return {"read": parse_rate(self.read_rate), "write": parse_rate(self.write_rate)}
