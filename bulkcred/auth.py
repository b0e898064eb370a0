"""Bearer tokens: a static token, the legacy ``/signin`` API key, OneAPI client credentials
(secret or private-key JWT), and :class:`TokenManager`, which refreshes them one at a time.
"""

from __future__ import annotations

import abc
import base64
import binascii
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, ClassVar, Mapping, Sequence
from urllib.parse import urlencode, urlsplit

import anyio
import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .errors import AuthError, TransportError, UsageError, api_error_for, parse_error_body
from .models import Secret
from .retry import Action, RetryPolicy, classify_sign_in, parse_retry_after
from .transport import Response, Transport

__all__ = [
    "DEFAULT_AUDIENCE",
    "JWT_BEARER",
    "Auth",
    "LegacyApiKey",
    "OneApiClientSecret",
    "OneApiPrivateKey",
    "StaticToken",
    "Token",
    "TokenGrant",
    "TokenManager",
]

log = logging.getLogger("bulkcred.auth")

DEFAULT_AUDIENCE = "https://api.zscaler.com"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: the lifetime assumed when a token answer gives none (the documented default)
DEFAULT_TTL = 3600.0
#: a private-key assertion is valid this long (the SDKs' value)
ASSERTION_TTL = 600

#: ``post_form(url, fields, secrets)``: POST a form, return the decoded JSON of a 2xx
#: answer; ``secrets`` are masked in any error text
PostForm = Callable[[str, Mapping[str, str], Sequence[str]], Awaitable[Mapping[str, Any]]]


def _secret(value: Secret | str) -> Secret:
    return value if isinstance(value, Secret) else Secret(value)


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a sign-in returned: the token and the lifetime the server stated."""

    access_token: Secret
    expires_in: float | None


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token in use, and the clock time to stop using it (refresh margin applied)."""

    value: Secret
    expires_at: float

    def header(self) -> str:
        return f"Bearer {self.value.reveal()}"


def _seconds(value: object) -> float | None:
    """``expires_in`` as seconds: legacy sends the string "3600", OneAPI a number."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        seconds = float(value) if isinstance(value, (int, float, str)) else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 < seconds < math.inf else None


def _grant(data: Mapping[str, Any]) -> TokenGrant:
    token = data.get("access_token")
    if not isinstance(token, str) or not token.strip():
        raise AuthError("the sign-in answer holds no access_token")
    return TokenGrant(Secret(token.strip()), _seconds(data.get("expires_in")))


class Auth(abc.ABC):
    """How a client gets its bearer token."""

    #: False when asking again cannot give a different token (a 401 is then final)
    refreshable: ClassVar[bool] = True

    @abc.abstractmethod
    async def fetch(self, post_form: PostForm, *, base_url: str) -> TokenGrant:
        """Sign in (through ``post_form``) and return the new token."""


class StaticToken(Auth):
    """A ready bearer token; never refreshed."""

    refreshable = False

    def __init__(self, token: Secret | str) -> None:
        self._token = _secret(token)

    async def fetch(self, post_form: PostForm, *, base_url: str) -> TokenGrant:
        return TokenGrant(self._token, None)

    def __repr__(self) -> str:
        return "StaticToken(token=********)"


class LegacyApiKey(Auth):
    """A ZPA portal API key: form POST of ``client_id`` and ``client_secret`` to ``/signin``."""

    def __init__(self, client_id: str, client_secret: Secret | str) -> None:
        self.client_id = client_id
        self._secret = _secret(client_secret)

    async def fetch(self, post_form: PostForm, *, base_url: str) -> TokenGrant:
        secret = self._secret.reveal()
        data = await post_form(
            f"{base_url.rstrip('/')}/signin",
            {"client_id": self.client_id, "client_secret": secret},
            (secret,),
        )
        return _grant(data)

    def __repr__(self) -> str:
        return f"LegacyApiKey(client_id={self.client_id!r}, client_secret=********)"


class OneApiClientSecret(Auth):
    """OneAPI (ZIdentity) client credentials with a client secret, as form fields."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: Secret | str,
        audience: str = DEFAULT_AUDIENCE,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.audience = audience
        self._secret = _secret(client_secret)

    async def fetch(self, post_form: PostForm, *, base_url: str) -> TokenGrant:
        secret = self._secret.reveal()
        data = await post_form(
            self.token_url,
            {
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": secret,
                "audience": self.audience,
            },
            (secret,),
        )
        return _grant(data)

    def __repr__(self) -> str:
        return (f"OneApiClientSecret(token_url={self.token_url!r},"
                f" client_id={self.client_id!r}, client_secret=********)")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class OneApiPrivateKey(Auth):
    """OneAPI client credentials proven by a JWT signed with a private key (RS256/ES256).

    The assertion's ``aud`` is the token URL's origin (``https://<vanity>.zslogin.net``),
    as the OneAPI guide says; the SDKs sign for ``https://api.zscaler.com`` instead. Which
    one ZIdentity checks is unconfirmed, so ``assertion_audience`` overrides it.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        private_key_pem: Secret | str,
        audience: str = DEFAULT_AUDIENCE,
        *,
        assertion_audience: str | None = None,
        key_password: Secret | str | None = None,
        key_id: str | None = None,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.audience = audience
        parts = urlsplit(token_url)
        self.assertion_audience = assertion_audience or f"{parts.scheme}://{parts.netloc}"
        self.key_id = key_id
        password = _secret(key_password).reveal().encode() if key_password else None
        try:
            key = serialization.load_pem_private_key(
                _secret(private_key_pem).reveal().encode(), password=password
            )
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # the library's message is not shown: it is about the key's bytes
            raise UsageError(
                "the OneAPI private key cannot be read: expected a PEM RSA or P-256 EC"
                " private key (with key_password if it is encrypted)"
            ) from None
        if isinstance(key, rsa.RSAPrivateKey):
            self.algorithm = "RS256"
        elif isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            self.algorithm = "ES256"
        else:
            raise UsageError("the OneAPI private key must be RSA (RS256) or EC P-256 (ES256)")
        self._key = key

    def assertion(self, *, now: float | None = None) -> str:
        """A freshly signed ``client_assertion``."""
        issued = int(time.time() if now is None else now)
        header: dict[str, str] = {"alg": self.algorithm, "typ": "JWT"}
        if self.key_id:
            header["kid"] = self.key_id
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.assertion_audience,
            "iat": issued,
            "exp": issued + ASSERTION_TTL,
            "jti": uuid.uuid4().hex,
        }
        signing_input = f"{_b64url(orjson.dumps(header))}.{_b64url(orjson.dumps(claims))}"
        data = signing_input.encode("ascii")
        if isinstance(self._key, rsa.RSAPrivateKey):
            signature = self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        else:
            assert isinstance(self._key, ec.EllipticCurvePrivateKey)
            r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{_b64url(signature)}"

    async def fetch(self, post_form: PostForm, *, base_url: str) -> TokenGrant:
        assertion = self.assertion()
        data = await post_form(
            self.token_url,
            {
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_assertion": assertion,
                "client_assertion_type": JWT_BEARER,
                "audience": self.audience,
            },
            (assertion,),
        )
        return _grant(data)

    def __repr__(self) -> str:
        return (f"OneApiPrivateKey(token_url={self.token_url!r}, client_id={self.client_id!r},"
                f" algorithm={self.algorithm!r}, private_key=********)")


def _jwt_exp(token: str) -> float | None:
    """The ``exp`` claim of a JWT, or None when the token is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return float(exp)


class TokenManager:
    """Keeps one valid token for a client: refreshed before it expires, one sign-in at a
    time however many requests wait for it, and dropped by :meth:`invalidate` on a 401.

    Sign-ins go straight to the transport (they are not API calls the limiter paces).
    """

    def __init__(
        self,
        auth: Auth,
        transport: Transport,
        *,
        base_url: str,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        user_agent: str = "bulkcred/0.1.0",
        refresh_margin: float = 10.0,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._auth = auth
        self._transport = transport
        self._base_url = base_url
        self._retry = retry or RetryPolicy()
        self._timeout = timeout
        self._user_agent = user_agent
        self._refresh_margin = refresh_margin
        self._clock = clock or anyio.current_time
        self._wall_clock = wall_clock
        self._token: Token | None = None
        self._refused: AuthError | None = None
        self._lock = anyio.Lock()
        self._sign_ins = 0

    @property
    def sign_ins(self) -> int:
        """Successful sign-ins so far."""
        return self._sign_ins

    @property
    def refreshable(self) -> bool:
        return self._auth.refreshable

    def peek(self) -> Token | None:
        """The current token if it is still good, without signing in."""
        token = self._token
        return token if token is not None and self._clock() < token.expires_at else None

    async def token(self) -> Token:
        """The current token, signing in first when there is none or it is about to expire."""
        token = self.peek()
        if token is not None:
            return token
        async with self._lock:
            # whoever waited here while another task signed in uses that token
            token = self.peek()
            if token is not None:
                return token
            if self._refused is not None:
                # refused credentials stay refused; asking again per request only risks
                # locking the API key out
                raise self._refused
            try:
                grant = await self._auth.fetch(self._post_form, base_url=self._base_url)
            except AuthError as exc:
                self._refused = exc
                raise
            token = self._token = Token(grant.access_token, self._expiry(grant))
            self._sign_ins += 1
            return token

    def invalidate(self, token: Token) -> None:
        """``token`` met a 401: drop it, unless it was already replaced by a newer one."""
        if self._token is token:
            self._token = None

    def _expiry(self, grant: TokenGrant) -> float:
        now = self._clock()
        if not self._auth.refreshable:
            return math.inf
        ttl = grant.expires_in
        exp = _jwt_exp(grant.access_token.reveal())
        if exp is not None:
            jwt_ttl = exp - self._wall_clock()
            if jwt_ttl > 0:
                ttl = jwt_ttl if ttl is None else min(ttl, jwt_ttl)
            else:
                log.warning("the token's exp claim has passed by the local clock (clock"
                            " skew?); trusting expires_in and 401s instead")
        if ttl is None:
            ttl = DEFAULT_TTL
        # the SDKs renew 10 s early; a token living seconds (tests) renews at 90 %
        margin = min(self._refresh_margin, 0.1 * ttl)
        log.info("signed in; token valid for %.4g s", ttl)
        return now + ttl - margin

    async def _post_form(
        self, url: str, fields: Mapping[str, str], secrets: Sequence[str]
    ) -> Mapping[str, Any]:
        path = urlsplit(url).path
        body = urlencode(dict(fields)).encode("ascii")
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            "User-Agent": self._user_agent,
        }
        attempt = 0
        while True:
            resp: Response | None = None
            exc: TransportError | None = None
            try:
                resp = await self._transport.send(
                    "POST", url, params=None, headers=headers, body=body, timeout=self._timeout
                )
            except TransportError as e:
                exc = e
            if resp is not None and 200 <= resp.status < 300:
                try:
                    data = resp.json()
                except orjson.JSONDecodeError:
                    data = None
                if not isinstance(data, dict):
                    raise AuthError("the sign-in answer is not a JSON object", method="POST",
                                    path=path, status=resp.status)
                return data
            status = resp.status if resp is not None else None
            error_id, reason, params = (
                parse_error_body(resp.body, redact=secrets) if resp is not None
                else (None, None, [])
            )
            wait = parse_retry_after(resp.headers.get("retry-after")) if resp else None
            decision = classify_sign_in(status, exc, retry_after=wait)
            attempt += 1
            if decision.action is not Action.RETRY or attempt >= self._retry.max_attempts:
                if exc is not None:
                    raise exc
                assert status is not None
                # any 4xx is the key being refused (or a wrong sign-in URL), not an API error
                refused = 400 <= status < 500 and status != 429
                cls = AuthError if refused else api_error_for(status, error_id)
                raise cls(
                    f"sign-in refused: {reason or f'HTTP {status}'}",
                    method="POST", path=path, status=status, error_id=error_id,
                    reason=reason, params=params,
                )
            delay = self._retry.backoff(attempt, server_wait=decision.wait)
            self._retry.check_wait(delay, method="POST", path=path, status=status)
            log.warning("sign-in failed (%s); retrying in %.1f s", decision.why, delay)
            await self._retry.wait(delay)
