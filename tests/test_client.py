"""ZPAClient over a mock transport: URLs, pagination, writes, microtenant 0, errors, secrets."""

from __future__ import annotations

import logging
import math
from typing import Any

import anyio
import pytest

from bulkcred.auth import LegacyApiKey, StaticToken
from bulkcred.client import ZPAClient
from bulkcred.config import Rate
from bulkcred.errors import (
    APIError,
    AuthError,
    BadRequest,
    ConnectError,
    NotFound,
    OutcomeUnknown,
    TransportError,
    UsageError,
    ZPAError,
)
from bulkcred.limiter import Limiter
from bulkcred.models import UNSET, Credential, CredentialSecret, CredentialType, Secret
from bulkcred.retry import RetryPolicy
from bulkcred.transport import AiohttpTransport, MockTransport, Request, Response

from .test_limiter import VIRTUAL

CID = "216196257331281920"
BASE = "https://config.zpa.test"
P = f"/mgmtconfig/v1/admin/customers/{CID}/credential"
PASSWORD = "Pa55-w0rd-that-must-never-show"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIEv-secret-key-material\n-----END PRIVATE KEY-----"
TOKEN = "bearer-token-never-logged"


@pytest.fixture
def anyio_backend():  # type: ignore[no-untyped-def]
    return VIRTUAL


def wire(i: int, **kw: Any) -> dict[str, Any]:
    d = {"id": str(i), "name": f"cred-{i}", "credentialType": "USERNAME_PASSWORD",
         "userName": f"user{i}", "creationTime": "1684413013", "modifiedTime": "1684413013",
         "lastCredentialResetTime": "1684413013", "microtenantName": "Default"}
    d.update(kw)
    return d


class FakeZPA:
    """A mock credential controller with a store; records every request."""

    def __init__(self, n: int = 0, *, rtt: float = 0.05, total_pages: str = "str",
                 total_count: Any = "0") -> None:
        self.store: dict[str, dict[str, Any]] = {str(1000 + i): wire(1000 + i) for i in range(n)}
        self.rtt = rtt
        self.total_pages = total_pages  # "str", "int" or "missing"
        self.total_count = total_count
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail_next: list[Any] = []  # Responses or exceptions served before routing

    async def __call__(self, req: Request) -> Response:
        self.requests.append(req)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await anyio.sleep(self.rtt)
            if self.fail_next:
                nxt = self.fail_next.pop(0)
                if isinstance(nxt, BaseException):
                    raise nxt
                return nxt
            return self.route(req)
        finally:
            self.in_flight -= 1

    def page(self, items: list[dict[str, Any]], q: dict[str, str]) -> dict[str, Any]:
        page, size = int(q.get("page", "1")), int(q.get("pagesize", "20"))
        chunk = items[(page - 1) * size: page * size]
        body: dict[str, Any] = {}
        pages = math.ceil(len(items) / size)
        if self.total_pages == "str":
            body["totalPages"] = str(pages)
        elif self.total_pages == "int":
            body["totalPages"] = pages
        if self.total_count is not None:
            body["totalCount"] = self.total_count
        if chunk:  # ZPA leaves "list" out of an empty page
            body["list"] = chunk
        return body

    def route(self, req: Request) -> Response:
        q = req.query
        path, method = req.path, req.method
        if path == P and method == "GET":
            items = sorted(self.store.values(), key=lambda d: int(d["id"]))
            if "microtenantId" in q:
                mt = q["microtenantId"]
                items = [d for d in items if d.get("microtenantId", "0") == mt]
            if "search" in q:
                value = q["search"].split(" EQ ", 1)[1]
                items = [d for d in items if d["name"].lower().startswith(value.lower())]
            return Response.from_json(200, self.page(items, q))
        if path == P and method == "POST":
            body = req.json()
            new_id = str(max([int(k) for k in self.store] + [0]) + 1)
            stored = {k: v for k, v in body.items() if k not in ("password", "privateKey")}
            stored.update(id=new_id, creationTime="1700000000")
            self.store[new_id] = stored
            return Response.from_json(201, stored)
        cid = path.removeprefix(P + "/").split("/")[0]
        if cid not in self.store:
            reason = f"No resource exists with the given id/name :{cid}"
            return Response.from_json(400, {"id": "resource.not.found", "reason": reason,
                                            "params": [cid]})
        if method == "GET":
            return Response.from_json(200, self.store[cid])
        if method == "PUT":
            body = req.json()
            self.store[cid] = {k: v for k, v in body.items() if k not in ("password", "privateKey")}
            return Response(204)
        if method == "DELETE":
            del self.store[cid]
            return Response(204)
        if method == "POST" and path.endswith("/move"):
            target = q["targetMicrotenantId"]
            if target == "0":
                self.store[cid].pop("microtenantId", None)
            else:
                self.store[cid]["microtenantId"] = target
            return Response(204)
        return Response.from_json(405, {"id": "method.not.allowed"})

    def of(self, method: str, path: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.method == method and (path is None or r.path == path)]


def client_for(handler: Any, **kw: Any) -> ZPAClient:
    kw.setdefault("auth", StaticToken(TOKEN))
    kw.setdefault("limiter", Limiter(read=Rate(1000, 1.0), write=Rate(1000, 1.0)))
    kw.setdefault("retry", RetryPolicy(jitter=0.0))
    return ZPAClient(base_url=BASE, customer_id=CID, transport=MockTransport(handler), **kw)


PW = CredentialSecret(password=Secret(PASSWORD))


# -- requests on the wire ----------------------------------------------------------------


@pytest.mark.anyio
async def test_headers_and_urls_legacy_and_oneapi() -> None:
    fake = FakeZPA(1)
    async with client_for(fake, user_agent="bulkcred/test") as client:
        await client.get_credential("1000")
    req = fake.requests[0]
    assert req.url == BASE + P + "/1000"
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"
    assert req.headers["Accept"] == "application/json"
    assert req.headers["User-Agent"] == "bulkcred/test"
    assert "Content-Type" not in req.headers and req.body is None
    assert req.params is None  # microtenantId not passed: not sent

    seen: list[Request] = []

    def oneapi(r: Request) -> Response:
        seen.append(r)
        return Response.from_json(200, wire(5))

    async with client_for(oneapi, api_prefix="/zpa") as client:
        await client.get_credential("5")
    assert seen[0].url == f"https://config.zpa.test/zpa{P}/5"


def test_constructor_checks() -> None:
    with pytest.raises(UsageError):
        ZPAClient(base_url="config.zpa.test", customer_id=CID, auth=StaticToken("x"),
                  transport=MockTransport(lambda r: Response(200)))
    with pytest.raises(UsageError):
        ZPAClient(base_url=BASE, customer_id="12/../34", auth=StaticToken("x"),
                  transport=MockTransport(lambda r: Response(200)))


@pytest.mark.anyio
async def test_owned_transport_is_closed() -> None:
    client = ZPAClient(base_url=BASE, customer_id=CID, auth=StaticToken("x"),
                       limiter=Limiter())
    assert isinstance(client._transport, AiohttpTransport)
    await client.aclose()


# -- pagination (cases 3, 4) -----------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("total_pages", ["str", "int", "missing"])
@pytest.mark.parametrize("n", [0, 1, 499, 500, 501, 1234, 2000])
async def test_every_page_at_500_union_is_exactly_the_set(total_pages: str, n: int) -> None:
    fake = FakeZPA(n, total_pages=total_pages)
    async with client_for(fake) as client:
        got = [c.id async for c in client.iter_credentials()]
        pages = [p async for p in client.iter_credential_pages(concurrency=3)]
    assert sorted(got) == sorted(fake.store) and len(got) == len(set(got))
    paged = [c.id for p in pages for c in p]
    assert sorted(paged) == sorted(fake.store) and len(paged) == len(set(paged))
    lists = fake.of("GET", P)
    assert {r.query["pagesize"] for r in lists} == {"500"}  # never changed mid-walk
    expected_pages = max(1, math.ceil(n / 500))
    if total_pages == "missing" and n and n % 500 == 0:
        expected_pages += 1  # without totalPages only an empty page says "the end"
    assert len(lists) == 2 * expected_pages


@pytest.mark.anyio
async def test_total_count_zero_and_no_next_page_key() -> None:
    fake = FakeZPA(1100, total_count="0")  # the doc sample: totalPages "3", totalCount "0"
    async with client_for(fake) as client:
        creds = await client.list_credentials()
    assert len(creds) == 1100
    assert [r.query["page"] for r in fake.of("GET", P)] == ["1", "2", "3"]


@pytest.mark.anyio
async def test_pages_after_the_first_are_fetched_concurrently_and_bounded() -> None:
    fake = FakeZPA(500 * 10, rtt=1.0)
    async with client_for(fake) as client:
        t0 = anyio.current_time()
        count = 0
        async for page in client.iter_credential_pages(concurrency=4):
            count += len(page)
        elapsed = anyio.current_time() - t0
    assert count == 5000
    assert fake.max_in_flight == 4
    assert elapsed < 5.0  # 1 s for page 1, then 9 pages 4 at a time: ~3 batches


@pytest.mark.anyio
async def test_a_walk_stopped_early_leaves_nothing_running() -> None:
    fake = FakeZPA(3000)
    async with client_for(fake) as client:
        async for page in client.iter_credential_pages(concurrency=4):
            assert page
            break
        async for _ in client.iter_credentials():
            break
    await anyio.sleep(1)
    assert fake.in_flight == 0


@pytest.mark.anyio
async def test_pages_added_during_the_walk_are_walked_and_nothing_is_doubled() -> None:
    fake = FakeZPA(1000)
    seen_first = False
    base_route = fake.route

    def route(req: Request) -> Response:
        nonlocal seen_first
        if req.method == "GET" and req.path == P and req.query["page"] == "1" and not seen_first:
            seen_first = True
            resp = base_route(req)
            for i in range(600):  # a big import lands while we walk
                fake.store[str(5000 + i)] = wire(5000 + i)
            return resp
        return base_route(req)

    fake.route = route  # type: ignore[method-assign]
    async with client_for(fake) as client:
        ids = [c.id async for c in client.iter_credentials()]
    assert len(ids) == len(set(ids)) == 1600


@pytest.mark.anyio
async def test_a_server_ignoring_page_does_not_loop_forever() -> None:
    items = [wire(i) for i in range(500)]

    def handler(req: Request) -> Response:
        return Response.from_json(200, {"list": items})  # no totalPages, always page 1

    async with client_for(handler) as client:
        assert len(await client.list_credentials()) == 500


@pytest.mark.anyio
async def test_unreadable_items_are_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    items = [wire(1), {"id": "2", "name": "x", "credentialType": "CERTIFICATE"}, "junk"]

    def handler(req: Request) -> Response:
        return Response.from_json(200, {"totalPages": "1", "list": items})

    async with client_for(handler) as client:
        assert [c.id for c in await client.list_credentials()] == ["1"]
    assert "'2'" in caplog.text


@pytest.mark.anyio
async def test_page_size_is_checked() -> None:
    async with client_for(FakeZPA()) as client:
        with pytest.raises(UsageError):
            await client.list_credentials(page_size=501)


# -- microtenant 0 (case 13) -----------------------------------------------------------------


MT = "216196257331285825"


@pytest.mark.anyio
@pytest.mark.parametrize("value, sent", [(UNSET, None), (None, None), ("0", "0"), (0, "0"),
                                         ("default", "0"), (MT, MT), (int(MT), MT),
                                         (" 42 ", "42")])
async def test_microtenant_id_on_the_wire(value: Any, sent: str | None) -> None:
    fake = FakeZPA(0)
    async with client_for(fake) as client:
        await client.list_credentials(microtenant_id=value)
    assert fake.requests[0].query.get("microtenantId") == sent


@pytest.mark.anyio
async def test_a_bad_microtenant_id_sends_nothing() -> None:
    fake = FakeZPA(1)
    async with client_for(fake) as client:
        with pytest.raises(UsageError):
            await client.get_credential("1000", microtenant_id="scope-c")
        with pytest.raises(UsageError):
            await client.get_credential("1000", microtenant_id=False)
    assert fake.requests == []


@pytest.mark.anyio
async def test_move_sends_source_and_target_with_zero_as_a_string() -> None:
    fake = FakeZPA(1)
    async with client_for(fake) as client:
        await client.move_credential("1000", source_microtenant_id=0,  # type: ignore[arg-type]
                                     target_microtenant_id="216196257331285825")
        moved = await client.get_credential("1000")
        await client.move_credential("1000", source_microtenant_id="216196257331285825",
                                     target_microtenant_id="0")
    first, second = fake.of("POST")
    assert first.path == P + "/1000/move" and first.body is None
    assert first.query == {"microtenantId": "0", "targetMicrotenantId": "216196257331285825"}
    assert second.query == {"microtenantId": "216196257331285825", "targetMicrotenantId": "0"}
    assert moved.microtenant_id == "216196257331285825"


# -- writes (cases 5, 8, 14) --------------------------------------------------------------


@pytest.mark.anyio
async def test_put_sends_the_full_object_with_the_secret_and_returns_none() -> None:
    fake = FakeZPA(0)
    fake.store["1"] = wire(1, userDomain="CORP", description="jump host",
                           microtenantId="77", microtenantName="Scope C", futureField="kept")
    async with client_for(fake) as client:
        cred = await client.get_credential("1")
        result = await client.update_credential(cred, PW)
    assert result is None  # a 204 has no content to trust (case 5)
    put = fake.of("PUT")[0]
    assert put.path == P + "/1" and put.query == {"microtenantId": "77"}
    assert put.headers["Content-Type"] == "application/json"
    body = put.json()
    assert body["id"] == "1" and body["name"] == "cred-1"
    assert body["credentialType"] == "USERNAME_PASSWORD"
    assert body["userName"] == "user1" and body["userDomain"] == "CORP"
    assert body["description"] == "jump host" and body["microtenantId"] == "77"
    assert body["password"] == PASSWORD
    assert body["futureField"] == "kept"


@pytest.mark.anyio
async def test_put_in_default_goes_to_microtenant_zero() -> None:
    fake = FakeZPA(1)
    async with client_for(fake) as client:
        cred = (await client.list_credentials())[0]
        await client.update_credential(cred, PW)
    assert fake.of("PUT")[0].query == {"microtenantId": "0"}


@pytest.mark.anyio
async def test_no_metadata_only_put() -> None:
    fake = FakeZPA(1)
    async with client_for(fake) as client:
        cred = await client.get_credential("1000")
        with pytest.raises(UsageError, match="password"):
            await client.update_credential(cred, CredentialSecret(private_key=Secret(KEY)))
        with pytest.raises(UsageError):
            await client.update_credential(cred.with_changes(id=""), PW)
    assert fake.of("PUT") == []


@pytest.mark.anyio
async def test_list_put_list_shows_the_change() -> None:
    fake = FakeZPA(3)
    async with client_for(fake) as client:
        before = {c.id: c for c in await client.list_credentials()}
        await client.update_credential(before["1001"].with_changes(name="renamed"), PW)
        after = {c.id: c for c in await client.list_credentials()}
    assert before["1001"].name == "cred-1001" and after["1001"].name == "renamed"
    assert len(fake.of("GET", P)) == 2  # no cache: both listings hit the server


@pytest.mark.anyio
async def test_create_returns_what_zpa_made() -> None:
    fake = FakeZPA(0)
    new = Credential(id="ignored", name="ssh-1", credential_type=CredentialType.SSH_KEY,
                     user_name="root", microtenant_id="55")
    secret = CredentialSecret(private_key=Secret(KEY), passphrase=Secret("pp-" + PASSWORD))
    async with client_for(fake) as client:
        made = await client.create_credential(new, secret, microtenant_id="216196257331285825")
        default = await client.create_credential(new.with_changes(microtenant_id=None), secret,
                                                 microtenant_id=0)
    assert made.id == "1" and made.name == "ssh-1"
    first, second = fake.of("POST")
    body = first.json()
    assert "id" not in body and body["privateKey"] == KEY and body["passphrase"] == "pp-" + PASSWORD
    assert first.query == {"microtenantId": "216196257331285825"}
    assert body["microtenantId"] == "216196257331285825"  # the query decides
    assert second.query == {"microtenantId": "0"} and "microtenantId" not in second.json()
    assert default.microtenant_id is None


@pytest.mark.anyio
async def test_create_answered_without_an_object_is_uncertain() -> None:
    async with client_for(lambda r: Response(204)) as client:
        with pytest.raises(OutcomeUnknown, match="by name"):
            await client.create_credential(Credential("", "x", CredentialType.PASSWORD), PW)


@pytest.mark.anyio
async def test_find_by_name_uses_the_search_and_compares_exactly() -> None:
    fake = FakeZPA(0)
    for i, name in enumerate(["web", "Web", "web-2", "web&amp;db"]):
        fake.store[str(i + 1)] = wire(i + 1, name=name)
    async with client_for(fake) as client:
        found = await client.find_credentials_by_name("web")
        escaped = await client.find_credentials_by_name("web&db")
    assert sorted(c.id for c in found) == ["1", "2"]  # normalised: case folded
    assert fake.requests[0].query["search"] == "name EQ web"
    assert [c.id for c in escaped] == ["4"]
    assert "search" not in fake.requests[1].query  # not trusted to the server's search


@pytest.mark.anyio
async def test_delete_and_not_found() -> None:
    fake = FakeZPA(1)
    async with client_for(fake) as client:
        await client.delete_credential("1000", microtenant_id="0")
        with pytest.raises(NotFound) as info:
            await client.get_credential("1000")
    assert fake.of("DELETE")[0].query == {"microtenantId": "0"}
    err = info.value
    assert err.status == 400 and err.error_id == "resource.not.found" and err.params == ["1000"]
    assert err.path == P + "/1000" and "resource.not.found" in str(err)


# -- transport failures ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_post_transport_error_after_sending_is_an_unknown_outcome() -> None:
    fake = FakeZPA(1)
    fake.fail_next = [TransportError("connection reset by peer")]
    async with client_for(fake) as client:
        with pytest.raises(OutcomeUnknown) as info:
            await client.create_credential(Credential("", "x", CredentialType.PASSWORD), PW)
        with pytest.raises(OutcomeUnknown):
            fake.fail_next = [TransportError("read timeout")]
            await client.move_credential("1000", source_microtenant_id="0",
                                         target_microtenant_id="9")
    assert len(fake.of("POST")) == 2  # never re-sent blindly (case 12)
    assert info.value.method == "POST" and info.value.path == P
    assert isinstance(info.value.__cause__, TransportError)


@pytest.mark.anyio
async def test_post_connect_error_is_retried() -> None:
    fake = FakeZPA(0)
    fake.fail_next = [ConnectError("connection refused")]
    async with client_for(fake) as client:
        made = await client.create_credential(Credential("", "x", CredentialType.PASSWORD), PW)
    assert made.id == "1" and len(fake.of("POST")) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_idempotent_transport_errors_are_retried(method: str) -> None:
    fake = FakeZPA(1)
    async with client_for(fake) as client:
        cred = await client.get_credential("1000")
        fake.fail_next = [TransportError("reset"), TransportError("timeout")]
        if method == "GET":
            await client.get_credential("1000")
        elif method == "PUT":
            await client.update_credential(cred, PW)
        else:
            await client.delete_credential("1000")
        stats = client.stats()
    assert stats.transport_errors == 2 and stats.retries == 2
    assert len(fake.of(method, P + "/1000")) == 3 + (method == "GET")


@pytest.mark.anyio
async def test_transport_errors_run_out() -> None:
    fake = FakeZPA(1)
    fake.fail_next = [TransportError("reset")] * 3
    async with client_for(fake, retry=RetryPolicy(max_attempts=3, jitter=0.0)) as client:
        with pytest.raises(TransportError) as info:
            await client.get_credential("1000")
    assert info.value.method == "GET" and info.value.path == P + "/1000"
    assert len(fake.requests) == 3


@pytest.mark.anyio
async def test_a_timeout_is_a_transport_error() -> None:
    fake = FakeZPA(1, rtt=100.0)
    async with client_for(fake, timeout=5.0,
                          retry=RetryPolicy(max_attempts=2, jitter=0.0)) as client:
        with pytest.raises(TransportError, match="timed out"):
            await client.get_credential("1000")


@pytest.mark.anyio
async def test_a_delete_whose_answer_was_lost_and_then_finds_nothing_is_done() -> None:
    fake = FakeZPA(1)
    real = fake.route

    def route(req: Request) -> Response:
        resp = real(req)
        if req.method == "DELETE" and resp.status == 204 and len(fake.of("DELETE")) == 1:
            raise TransportError("reset after the server applied it")
        return resp

    fake.route = route  # type: ignore[method-assign]
    async with client_for(fake) as client:
        await client.delete_credential("1000")
    assert fake.store == {} and len(fake.of("DELETE")) == 2


@pytest.mark.anyio
async def test_409_concurrent_put_is_retried() -> None:
    fake = FakeZPA(1)
    async with client_for(fake) as client:
        cred = await client.get_credential("1000")
        fake.fail_next = [Response.from_json(409, {"id": "api.concurrent.access.error",
                                                   "params": ["com.zscaler.zpn.model.PolicySet"]})]
        await client.update_credential(cred, PW)
    assert len(fake.of("PUT")) == 2


# -- error bodies -----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "status, body, cls, error_id, reason",
    [
        (400, b'{"id":"invalid.name","reason":"Name is invalid","params":["x"]}', BadRequest,
         "invalid.name", "Name is invalid"),
        (401, b'{"detail":"unauthorized","type":"","title":"","status":""}', AuthError, None,
         "unauthorized"),
        (403, b'{"code":"STATE_READONLY","message":"read-only"}', ZPAError, "STATE_READONLY",
         "read-only"),
        (418, b"<html>teapot</html>", APIError, None, "<html>teapot</html>"),
        (404, b"", NotFound, None, None),
    ],
)
async def test_error_bodies_are_read_defensively(status, body, cls, error_id, reason) -> None:  # type: ignore[no-untyped-def]
    async with client_for(lambda r: Response(status, {}, body)) as client:
        with pytest.raises(cls) as info:
            await client.get_credential("1")
    err = info.value
    assert err.status == status and err.error_id == error_id and err.reason == reason
    assert err.method == "GET"


# -- secrets never show (case 15) ------------------------------------------------------------


@pytest.mark.anyio
async def test_no_secret_in_any_exception_or_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # a careless server echoing what it was sent (the client can mask what it sent)
    echo = {"id": "invalid.password", "reason": f"password {PASSWORD} is weak",
            "params": [PASSWORD, "8"]}
    answers: list[Any] = [
        Response.from_json(400, echo),                       # create: refused, echoing
        TransportError("reset"),                             # create: answer lost
        Response.from_json(500, echo),                       # update: 5xx, then 400
        Response.from_json(400, echo),
        Response.from_json(429, {"id": "invalid.toomanyrequests"}, {"retry-after": "1s"}),
        Response.from_json(400, {"reason": f"bad key {KEY}", "params": [f"pp {PASSWORD}"]}),
    ]

    def handler(req: Request) -> Response:
        if req.path == "/signin":
            return Response.from_json(200, {"access_token": TOKEN, "expires_in": "3600"})
        nxt = answers.pop(0)
        if isinstance(nxt, BaseException):
            raise nxt
        return nxt

    new = Credential("", "c", CredentialType.USERNAME_PASSWORD, user_name="u")
    ssh = Credential("9", "k", CredentialType.SSH_KEY, user_name="u")
    errors: list[BaseException] = []
    auth = LegacyApiKey("cid", Secret("sign-in-" + PASSWORD))
    async with client_for(handler, auth=auth) as client:
        for call in (
            lambda: client.create_credential(new, PW),
            lambda: client.create_credential(new, PW),
            lambda: client.update_credential(new.with_changes(id="8"), PW),
            lambda: client.update_credential(
                ssh, CredentialSecret(private_key=Secret(KEY), passphrase=Secret(PASSWORD))),
        ):
            with pytest.raises(ZPAError) as info:
                await call()
            errors.append(info.value)
    assert [type(e) for e in errors] == [BadRequest, OutcomeUnknown, BadRequest, BadRequest]
    texts = [caplog.text] + [t for e in errors for t in (str(e), repr(e), repr(e.params),
                                                          e.reason or "")]
    texts += [r.getMessage() + repr(r.args) for r in caplog.records]
    for text in texts:
        for secret in (PASSWORD, KEY, TOKEN, "MIIEv"):
            assert secret not in text
    assert errors[0].reason == "password ******** is weak"
    assert errors[0].params == ["********", "8"] and errors[3].params == ["pp ********"]


# -- microtenants and policy rules ----------------------------------------------------------


@pytest.mark.anyio
async def test_microtenants_and_policy_rules() -> None:
    seen: list[Request] = []

    def handler(req: Request) -> Response:
        seen.append(req)
        if req.path.endswith("/microtenants"):
            return Response.from_json(200, {"totalPages": "1", "list": [
                {"name": "Default"}, {"id": "216196257331285825", "name": "Scope C",
                                      "enabled": "true"}]})
        return Response.from_json(200, {"totalPages": "1", "totalCount": "1", "list": [
            {"id": "r1", "name": "inject-ssh", "action": "INJECT_CREDENTIALS",
             "credential": {"id": "228", "name": "ssh-sample-passwd"}}]})

    async with client_for(handler, api_prefix="/zpa") as client:
        mts = [m async for m in client.iter_microtenants()]
        rules = [r async for r in client.iter_credential_policy_rules(microtenant_id="0")]
    assert [(m.id, m.name) for m in mts] == [("0", "Default"), ("216196257331285825", "Scope C")]
    assert mts[0].is_default
    assert rules[0].credential_id == "228" and rules[0].action == "INJECT_CREDENTIALS"
    admin = f"/zpa/mgmtconfig/v1/admin/customers/{CID}"
    assert seen[0].path == admin + "/microtenants"
    assert seen[1].path == admin + "/policySet/rules/policyType/CREDENTIAL_POLICY"
    assert seen[1].query == {"page": "1", "pagesize": "500", "microtenantId": "0"}


# -- many callers, stats -------------------------------------------------------------------


@pytest.mark.anyio
async def test_64_concurrent_callers_and_stats() -> None:
    fake = FakeZPA(200, rtt=0.2)
    told: list[tuple[str, float]] = []
    async with client_for(fake, limiter=Limiter(read=Rate(20, 1.0), write=Rate(10, 1.0))) as client:
        client.on_pause(lambda cls, s: told.append((cls, s)))
        creds = await client.list_credentials()
        done: list[str] = []

        async def work(cred: Credential) -> None:
            await client.update_credential(cred, PW)
            done.append(cred.id)

        limit = anyio.CapacityLimiter(64)

        async def bounded(cred: Credential) -> None:
            async with limit:
                await work(cred)

        t0 = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for cred in creds:
                tg.start_soon(bounded, cred)
        elapsed = anyio.current_time() - t0
        stats = client.stats()
    assert sorted(done) == sorted(fake.store)
    assert stats.requests == {"read": 1, "write": 200}
    assert stats.responses == {200: 1, 204: 200}
    assert stats.limiter.max_in_window["write"] <= 10
    assert elapsed == pytest.approx(199 * 1.02 / 10 + 0.2, rel=0.01)  # the limit, not later
    assert stats.latency_ewma == pytest.approx(0.2)
    assert client.write_rate == Rate(10, 1.0) and client.read_rate == Rate(20, 1.0)
    assert client.limiter.eta("write", 11) == pytest.approx(1.02)
    assert told == [] and stats.throttled == 0 and stats.sign_ins == 1
