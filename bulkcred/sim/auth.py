"""Bearer tokens: JWT-shaped, unsigned, expiring after the configured TTL, one store per flow."""

from __future__ import annotations

import base64
import binascii
import secrets
import time

import orjson

__all__ = ["JWT_BEARER", "TokenStore", "decode_jwt_claims"]

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_PRUNE_AT = 1024


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def decode_jwt_claims(token: str) -> dict[str, object] | None:
    """The claims of a well-formed compact JWT (three base64url parts), unverified."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


class TokenStore:
    """Issued tokens by flow (``legacy`` or ``oneapi``); a token works only on its own flow."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._expiry: dict[str, tuple[float, str]] = {}

    def issue(self, flow: str, subject: str) -> str:
        now = time.monotonic()
        if len(self._expiry) >= _PRUNE_AT:
            self._expiry = {t: e for t, e in self._expiry.items() if e[0] > now}
        wall = time.time()
        header = {"alg": "RS256", "kid": "bulkcred-sim", "typ": "JWT"}
        claims = {
            "iss": "bulkcred-sim",
            "sub": subject,
            "aud": flow,
            "iat": int(wall),
            # RFC 7519 allows a fractional NumericDate, so sub-second TTLs stay exact.
            "exp": round(wall + self.ttl, 3),
            "jti": secrets.token_hex(16),
        }
        token = ".".join(
            (
                _b64url(orjson.dumps(header)),
                _b64url(orjson.dumps(claims)),
                _b64url(secrets.token_bytes(32)),
            )
        )
        self._expiry[token] = (now + self.ttl, flow)
        return token

    def valid(self, token: str, flow: str) -> bool:
        entry = self._expiry.get(token)
        if entry is None or entry[1] != flow:
            return False
        if entry[0] <= time.monotonic():
            del self._expiry[token]
            return False
        return True

    def revoke(self, token: str) -> None:
        self._expiry.pop(token, None)
