"""Frozen configuration values: rates (``20/10s``), clouds and their base URLs.

Nothing here reads the environment; ``cli.py`` does that once and builds these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import UsageError

__all__ = [
    "CLOUDS",
    "DEFAULT_READ_RATE",
    "DEFAULT_WRITE_RATE",
    "Cloud",
    "Rate",
    "cloud_named",
    "oneapi_token_url",
]

_RATE_RE = re.compile(
    r"^\s*(?P<n>\d+)\s*/\s*(?P<t>\d+(?:\.\d+)?)?\s*(?P<unit>ms|s|m|min)?\s*$", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` requests in any window of ``per`` seconds."""

    count: int
    per: float

    def __post_init__(self) -> None:
        if self.count < 1:
            raise UsageError(f"a rate needs at least 1 request per window, not {self.count}")
        if not self.per > 0:
            raise UsageError(f"a rate's window must be longer than 0 s, not {self.per}")

    @property
    def per_second(self) -> float:
        return self.count / self.per

    @classmethod
    def parse(cls, text: str) -> "Rate":
        """Parse ``N/Ts`` (also ``N/T``, ``N/Tms``, ``N/Tm``, ``N/s``)."""
        m = _RATE_RE.match(text or "")
        if not m:
            raise UsageError(
                f"cannot read the rate {text!r}: write it as COUNT/SECONDSs, e.g. 10/10s"
            )
        n = int(m.group("n"))
        t = float(m.group("t")) if m.group("t") else 1.0
        unit = (m.group("unit") or "s").lower()
        if unit == "ms":
            t /= 1000.0
        elif unit in ("m", "min"):
            t *= 60.0
        return cls(n, t)

    def __str__(self) -> str:
        per = f"{self.per:g}"
        return f"{self.count}/{per}s"


DEFAULT_READ_RATE: Final = Rate(20, 10.0)
DEFAULT_WRITE_RATE: Final = Rate(10, 10.0)


@dataclass(frozen=True, slots=True)
class Cloud:
    name: str
    legacy_base: str
    oneapi_base: str
    #: ``{vanity}`` is replaced by the ZIdentity vanity domain
    token_host: str


CLOUDS: Final[dict[str, Cloud]] = {
    c.name: c
    for c in (
        Cloud("PRODUCTION", "https://config.private.zscaler.com", "https://api.zsapi.net",
              "{vanity}.zslogin.net"),
        Cloud("ZPATWO", "https://config.zpatwo.net", "https://api.zsapi.net",
              "{vanity}.zslogin.net"),
        Cloud("BETA", "https://config.zpabeta.net", "https://api.beta.zsapi.net",
              "{vanity}.zsloginbeta.net"),
        Cloud("GOV", "https://config.zpagov.net", "https://api.zscalergov.net",
              "{vanity}.zidentitygov.net"),
        Cloud("GOVUS", "https://config.zpagov.us", "https://api.zscalergov.us",
              "{vanity}.zidentitygov.us"),
        Cloud("PREVIEW", "https://config.zpapreview.net", "https://api.preview.zsapi.net",
              "{vanity}.zsloginpreview.net"),
    )
}


def cloud_named(name: str) -> Cloud:
    """The cloud for a name, case-insensitively; an unknown name is an error, not a fallback."""
    key = (name or "").strip().upper()
    try:
        return CLOUDS[key]
    except KeyError:
        raise UsageError(
            f"unknown ZPA cloud {name!r}: use one of {', '.join(CLOUDS)}"
            " (or give --base-url)"
        ) from None


def oneapi_token_url(vanity_domain: str, cloud: Cloud) -> str:
    vanity = vanity_domain.strip()
    if not vanity or not re.fullmatch(r"[A-Za-z0-9-]+", vanity):
        raise UsageError(
            f"the vanity domain {vanity_domain!r} is not a host label (letters, digits, '-')"
        )
    return f"https://{cloud.token_host.format(vanity=vanity)}/oauth2/v1/token"
