"""Sign-in flavours, token lifetimes, single-flight refresh on expiry (case 9), refusals."""

from __future__ import annotations

import base64
import logging
import time

import anyio
import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bulkcred.auth import (
    JWT_BEARER,
    LegacyApiKey,
    OneApiClientSecret,
    OneApiPrivateKey,
    StaticToken,
    TokenManager,
)
from bulkcred.client import ZPAClient
from bulkcred.config import Rate
from bulkcred.errors import AuthError, ServerError, UsageError
from bulkcred.limiter import Limiter
from bulkcred.models import Secret
from bulkcred.retry import RetryPolicy
from bulkcred.transport import MockTransport, Request, Response

from .test_limiter import VIRTUAL

CID = "216196257331281920"
BASE = "https://config.zpa.test"
TOKEN_URL = "https://acme.zslogin.net/oauth2/v1/token"
SECRET = "s3cr3t-value-never-shown"
CRED = {"id": "7", "name": "c", "credentialType": "PASSWORD"}


@pytest.fixture
def anyio_backend():  # type: ignore[no-untyped-def]
    return VIRTUAL


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def jwt(claims: dict) -> str:  # type: ignore[type-arg]
    def enc(d: dict) -> str:  # type: ignore[type-arg]
        return base64.urlsafe_b64encode(orjson.dumps(d)).rstrip(b"=").decode()

    return f"{enc({'alg': 'none'})}.{enc(claims)}.sig"


class Tenant:
    """A mock ZPA: /signin issues numbered tokens living ``server_ttl`` seconds."""

    def __init__(self, *, expires_in: object = "3600", server_ttl: float = 3600.0,
                 rtt: float = 0.05) -> None:
        self.expires_in = expires_in
        self.server_ttl = server_ttl
        self.rtt = rtt
        self.issued: dict[str, float] = {}
        self.sign_in_forms: list[dict[str, str]] = []
        self.api_auth: list[str] = []
        self.refuse_sign_in: Response | None = None

    def revoke_all(self) -> None:
        self.issued.clear()

    async def __call__(self, req: Request) -> Response:
        now = anyio.current_time()
        if req.path == "/signin":
            assert req.method == "POST"
            assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
            assert "Authorization" not in req.headers
            self.sign_in_forms.append(req.form())
            if self.refuse_sign_in is not None:
                return self.refuse_sign_in
            token = f"tok-{len(self.sign_in_forms)}"
            self.issued[token] = now
            body = {"token_type": "Bearer", "access_token": token}
            if self.expires_in is not None:
                body["expires_in"] = self.expires_in
            return Response.from_json(200, body)
        header = req.headers["Authorization"]
        self.api_auth.append(header)
        await anyio.sleep(self.rtt)
        token = header.removeprefix("Bearer ")
        if token not in self.issued or anyio.current_time() >= self.issued[token] + self.server_ttl:
            return Response.from_json(401, {"id": "access.denied", "reason": "Access denied"})
        return Response.from_json(200, CRED)


def client_for(tenant, auth=None, **kw) -> ZPAClient:  # type: ignore[no-untyped-def]
    return ZPAClient(
        base_url=BASE, customer_id=CID,
        auth=auth or LegacyApiKey("client-1", Secret(SECRET)),
        transport=MockTransport(tenant),
        limiter=Limiter(read=Rate(1000, 1.0), write=Rate(1000, 1.0)),
        retry=RetryPolicy(jitter=0.0), **kw,
    )


# -- case 9 --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_case9_twenty_401s_after_expiry_cause_one_sign_in() -> None:
    tenant = Tenant(rtt=0.5)
    async with client_for(tenant) as client:
        await client.get_credential("7")
        assert client.stats().sign_ins == 1
        tenant.revoke_all()  # the server ends the session early; the client cannot know
        results = []

        async def caller() -> None:
            results.append(await client.get_credential("7"))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(caller)
        stats = client.stats()
    assert len(results) == 20
    assert stats.sign_ins == 2 and len(tenant.sign_in_forms) == 2  # exactly one more
    assert stats.responses[401] == 20
    # the 20 that met the 401 went again, all with the new token
    assert tenant.api_auth[1:21] == ["Bearer tok-1"] * 20
    assert tenant.api_auth[21:] == ["Bearer tok-2"] * 20
    assert stats.limiter.acquired["read"] == 41  # sign-ins take no API slot


@pytest.mark.anyio
async def test_case9_short_lived_tokens_are_renewed_once_per_expiry() -> None:
    tenant = Tenant(expires_in="3", server_ttl=3.0, rtt=0.05)
    async with client_for(tenant, read_rate=Rate(20, 10.0)) as client:
        client_limiter = client.limiter
        t0 = anyio.current_time()

        async def caller() -> None:
            while anyio.current_time() - t0 < 12.0:
                await client.get_credential("7")

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(caller)
        stats = client.stats()
    assert client_limiter.stats().acquired["read"] >= 20
    assert 401 not in stats.responses  # renewed before it ran out (at 90 % of 3 s)
    # one sign-in per 2.7 s lifetime over ~12 s, never one per request
    assert 4 <= stats.sign_ins <= 6


@pytest.mark.anyio
async def test_jwt_exp_claim_renews_before_a_longer_expires_in() -> None:
    issued: list[str] = []

    def handler(req: Request) -> Response:
        if req.path == "/signin":
            token = jwt({"exp": int(time.time()) + 60, "n": len(issued)})
            issued.append(token)
            return Response.from_json(200, {"access_token": token, "expires_in": "3600"})
        return Response.from_json(200, CRED)

    tokens = TokenManager(LegacyApiKey("c", SECRET), MockTransport(handler), base_url=BASE)
    first = await tokens.token()
    await anyio.sleep(45)
    assert await tokens.token() is first
    await anyio.sleep(10)  # past exp - 10 s
    second = await tokens.token()
    assert second is not first and tokens.sign_ins == 2


@pytest.mark.anyio
async def test_a_401_with_a_fresh_token_is_final() -> None:
    calls = []

    def handler(req: Request) -> Response:
        if req.path == "/signin":
            return Response.from_json(200, {"access_token": f"t{len(calls)}", "expires_in": 3600})
        calls.append(req.headers["Authorization"])
        return Response.from_json(401, {"id": "access.denied", "reason": "Access denied"})

    async with client_for(handler) as client:
        with pytest.raises(AuthError, match="Access denied") as info:
            await client.get_credential("7")
        assert client.stats().sign_ins == 2
    assert len(calls) == 2 and calls[0] != calls[1]
    assert info.value.status == 401 and info.value.error_id == "access.denied"


@pytest.mark.anyio
async def test_static_token_is_never_refreshed() -> None:
    calls = []

    def handler(req: Request) -> Response:
        calls.append(req)
        return Response.from_json(401, {"id": "access.denied"})

    async with client_for(handler, auth=StaticToken(Secret("ready-token"))) as client:
        with pytest.raises(AuthError):
            await client.get_credential("7")
    assert len(calls) == 1 and calls[0].headers["Authorization"] == "Bearer ready-token"


# -- legacy and OneAPI sign-in -------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("expires_in, ttl", [("3600", 3600), (3600, 3600), ("120", 120),
                                             (None, 3600), ("soon", 3600), (0, 3600),
                                             ("inf", 3600), (True, 3600)])
async def test_legacy_sign_in_and_expires_in_forms(expires_in: object, ttl: float) -> None:
    tenant = Tenant(expires_in=expires_in)
    tokens = TokenManager(LegacyApiKey("client-1", SECRET), MockTransport(tenant),
                          base_url=BASE + "/")
    t0 = anyio.current_time()
    token = await tokens.token()
    assert token.value.reveal() == "tok-1"
    assert token.expires_at - t0 == pytest.approx(ttl - min(10.0, 0.1 * ttl))
    assert tenant.sign_in_forms == [{"client_id": "client-1", "client_secret": SECRET}]


@pytest.mark.anyio
async def test_oneapi_client_secret_form() -> None:
    seen: list[Request] = []

    def handler(req: Request) -> Response:
        seen.append(req)
        return Response.from_json(200, {"access_token": "one", "token_type": "Bearer",
                                        "expires_in": 3600})

    auth = OneApiClientSecret(TOKEN_URL, "cid", Secret(SECRET))
    tokens = TokenManager(auth, MockTransport(handler), base_url="https://api.zsapi.net")
    assert (await tokens.token()).value.reveal() == "one"
    (req,) = seen
    assert req.url == TOKEN_URL and req.method == "POST"
    assert req.form() == {"grant_type": "client_credentials", "client_id": "cid",
                          "client_secret": SECRET, "audience": "https://api.zscaler.com"}


def _rsa_pem() -> tuple[str, object]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return pem, key.public_key()


def _ec_pem() -> tuple[str, object]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return pem, key.public_key()


@pytest.mark.anyio
@pytest.mark.parametrize("make_key, alg", [(_rsa_pem, "RS256"), (_ec_pem, "ES256")])
async def test_oneapi_private_key_assertion(make_key, alg) -> None:  # type: ignore[no-untyped-def]
    pem, public = make_key()
    seen: list[Request] = []

    def handler(req: Request) -> Response:
        seen.append(req)
        return Response.from_json(200, {"access_token": "pk", "expires_in": 600})

    auth = OneApiPrivateKey(TOKEN_URL, "cid", Secret(pem), key_id="k1")
    assert pem not in repr(auth) and "cid" in repr(auth)
    tokens = TokenManager(auth, MockTransport(handler), base_url="https://api.zsapi.net")
    await tokens.token()
    form = seen[0].form()
    assert form["grant_type"] == "client_credentials" and form["client_id"] == "cid"
    assert form["client_assertion_type"] == JWT_BEARER
    assert form["audience"] == "https://api.zscaler.com"
    assert "client_secret" not in form
    head, claims, sig = form["client_assertion"].split(".")
    header = orjson.loads(b64url_decode(head))
    body = orjson.loads(b64url_decode(claims))
    assert header == {"alg": alg, "typ": "JWT", "kid": "k1"}
    assert body["iss"] == body["sub"] == "cid"
    assert body["aud"] == "https://acme.zslogin.net"  # the token URL's origin, per the guide
    assert body["exp"] - body["iat"] == 600 and abs(body["iat"] - time.time()) < 5
    assert len(body["jti"]) >= 16
    signed = f"{head}.{claims}".encode()
    raw = b64url_decode(sig)
    if alg == "RS256":
        public.verify(raw, signed, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[attr-defined]
    else:
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        public.verify(der, signed, ec.ECDSA(hashes.SHA256()))  # type: ignore[attr-defined]


def test_private_key_audience_override_and_bad_keys() -> None:
    pem, _ = _ec_pem()
    auth = OneApiPrivateKey(TOKEN_URL, "cid", pem, assertion_audience="https://api.zscaler.com")
    claims = orjson.loads(b64url_decode(auth.assertion().split(".")[1]))
    assert claims["aud"] == "https://api.zscaler.com"
    junk = "-----BEGIN PRIVATE KEY-----\nnot-a-key-" + SECRET + "\n-----END PRIVATE KEY-----"
    with pytest.raises(UsageError) as info:
        OneApiPrivateKey(TOKEN_URL, "cid", junk)
    assert SECRET not in str(info.value) and info.value.__cause__ is None
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    with pytest.raises(UsageError, match="P-256"):
        OneApiPrivateKey(TOKEN_URL, "cid", p384)


# -- refusals and failures -------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_refused_sign_in_is_an_auth_error_without_the_secret(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tenant = Tenant()
    # a careless server that echoes what it was sent
    tenant.refuse_sign_in = Response.from_json(
        status, {"id": "invalid.credentials", "reason": f"bad client_secret {SECRET}",
                 "params": [SECRET]})
    async with client_for(tenant) as client:
        errors: list[AuthError] = []

        async def caller() -> None:
            try:
                await client.get_credential("7")
            except AuthError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(caller)
    assert len(errors) == 10
    assert len(tenant.sign_in_forms) == 1  # refused keys are not tried again per request
    assert tenant.api_auth == []
    err = errors[0]
    assert err.status == status and err.error_id == "invalid.credentials"
    assert err.path == "/signin"
    for text in (str(err), repr(err), err.reason or "", repr(err.params), caplog.text):
        assert SECRET not in text


@pytest.mark.anyio
async def test_sign_in_5xx_is_retried_then_reported() -> None:
    answers = [Response(502), Response.from_json(503, {}, {"retry-after": "2s"}),
               Response.from_json(200, {"access_token": "ok", "expires_in": "3600"})]
    sent: list[float] = []

    def handler(req: Request) -> Response:
        sent.append(anyio.current_time())
        return answers.pop(0)

    tokens = TokenManager(LegacyApiKey("c", SECRET), MockTransport(handler), base_url=BASE,
                          retry=RetryPolicy(jitter=0.0))
    assert (await tokens.token()).value.reveal() == "ok"
    assert sent[2] - sent[1] >= 2.0

    failing = TokenManager(LegacyApiKey("c", SECRET), MockTransport(lambda r: Response(500)),
                           base_url=BASE, retry=RetryPolicy(max_attempts=3, jitter=0.0))
    with pytest.raises(ServerError):
        await failing.token()
    assert failing.sign_ins == 0


@pytest.mark.anyio
async def test_sign_in_answer_without_a_token() -> None:
    tokens = TokenManager(LegacyApiKey("c", SECRET),
                          MockTransport(lambda r: Response.from_json(200, {"token_type": "x"})),
                          base_url=BASE)
    with pytest.raises(AuthError, match="no access_token"):
        await tokens.token()


def test_reprs_hide_secrets() -> None:
    pem, _ = _rsa_pem()
    objects = [
        StaticToken(SECRET),
        LegacyApiKey("client-1", SECRET),
        OneApiClientSecret(TOKEN_URL, "cid", SECRET),
        OneApiPrivateKey(TOKEN_URL, "cid", pem),
    ]
    for obj in objects:
        assert SECRET not in repr(obj) and SECRET not in str(obj)
        assert "BEGIN" not in repr(obj)
    assert "client-1" in repr(objects[1])


@pytest.mark.anyio
async def test_token_repr_and_invalidate_of_a_replaced_token() -> None:
    tenant = Tenant()
    tokens = TokenManager(LegacyApiKey("c", SECRET), MockTransport(tenant), base_url=BASE)
    first = await tokens.token()
    assert "tok-1" not in repr(first)
    tokens.invalidate(first)
    second = await tokens.token()
    tokens.invalidate(first)  # a late 401 for the old token changes nothing
    assert await tokens.token() is second and tokens.sign_ins == 2
