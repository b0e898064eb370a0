"""The simulator's ZPA API over real HTTP: auth, wire format, paging, CRUD, moves, policy."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from bulkcred.sim import SimConfig, SimServer

CID = "216196257331281920"
SCOPE_C = "145260601092866314"
SCOPE_D = "145260601092866315"
SECRET_KEYS = {"password", "privateKey", "passphrase"}
FAST = {"read_rate": "100000/1s", "write_rate": "100000/1s"}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


class Api:
    """A signed-in session against one simulator; answers (status, JSON or None, headers)."""

    def __init__(self, session: aiohttp.ClientSession, sim: SimServer, token: str, base: str):
        self.session, self.sim, self.token, self.base = session, sim, token, base

    async def call(
        self,
        method: str,
        tail: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        prefix: str | None = None,
    ) -> tuple[int, Any, Any]:
        url = f"{self.sim.url}{prefix if prefix is not None else self.base}{tail}"
        all_headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        async with self.session.request(
            method, url, params=params, json=json_body, data=data, headers=all_headers
        ) as resp:
            raw = await resp.read()
            return resp.status, (json.loads(raw) if raw else None), resp.headers

    async def cred(self, method: str, tail: str = "", **kw: Any) -> tuple[int, Any, Any]:
        return await self.call(method, f"/v1/admin/customers/{CID}/credential{tail}", **kw)

    async def sim_get(self, what: str) -> Any:
        async with self.session.get(f"{self.sim.url}/_sim/{what}") as resp:
            return await resp.json()

    async def sim_post(self, what: str, body: Any = None) -> int:
        async with self.session.post(f"{self.sim.url}/_sim/{what}", json=body) as resp:
            return resp.status

    async def walk(self, pagesize: int, params: dict[str, str] | None = None) -> list[dict]:
        items: list[dict] = []
        page = 1
        while True:
            query = {"page": str(page), "pagesize": str(pagesize), **(params or {})}
            status, body, _ = await self.cred("GET", params=query)
            assert status == 200
            items += body.get("list", [])
            if page >= int(body["totalPages"]):
                return items
            page += 1


async def signin(session: aiohttp.ClientSession, url: str) -> str:
    form = {"client_id": "sim-client", "client_secret": "sim-secret"}
    async with session.post(f"{url}/signin", data=form) as resp:
        assert resp.status == 200
        return (await resp.json())["access_token"]


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[Api]:
    async with SimServer(SimConfig(**{**FAST, **overrides})) as sim:
        async with aiohttp.ClientSession() as session:
            token = await signin(session, sim.url)
            yield Api(session, sim, token, "/mgmtconfig")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def jwt(claims: dict[str, Any]) -> str:
    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    big = rsa.generate_private_key(public_exponent=65537, key_size=2304)
    none, pem = serialization.NoEncryption(), serialization.Encoding.PEM
    fmt = serialization.PrivateFormat
    return {
        "pkcs8": rsa_key.private_bytes(pem, fmt.PKCS8, none).decode(),
        "pkcs1": rsa_key.private_bytes(pem, fmt.TraditionalOpenSSL, none).decode(),
        "openssh": ed25519.Ed25519PrivateKey.generate()
        .private_bytes(pem, fmt.OpenSSH, none)
        .decode(),
        "ec": ec.generate_private_key(ec.SECP256R1())
        .private_bytes(pem, fmt.TraditionalOpenSSL, none)
        .decode(),
        "encrypted": rsa_key.private_bytes(
            pem, fmt.PKCS8, serialization.BestAvailableEncryption(b"s3cret")
        ).decode(),
        "too_big": big.private_bytes(pem, fmt.PKCS8, none).decode(),
    }


def assert_wire(item: dict[str, Any]) -> None:
    """Every credential on the wire: string ids/timestamps, no secret, ZPA's owner fields."""
    assert not SECRET_KEYS & item.keys()
    assert item["id"].isdigit()
    for key in ("creationTime", "modifiedTime", "lastCredentialResetTime", "modifiedBy"):
        if key in item:
            assert isinstance(item[key], str) and item[key].isdigit()
    if item["microtenantName"] == "Default":
        assert "microtenantId" not in item
    else:
        assert item["microtenantId"].isdigit()
    if item["credentialType"] == "PASSWORD":
        assert "userName" not in item
    for optional in ("description", "userDomain"):
        assert item.get(optional, "x") != ""


# ---- authentication ----------------------------------------------------------------


@pytest.mark.anyio
async def test_legacy_signin_answers_string_expiry_and_refuses_wrong_secret() -> None:
    async with SimServer(SimConfig()) as sim, aiohttp.ClientSession() as session:
        form = {"client_id": "sim-client", "client_secret": "sim-secret"}
        async with session.post(f"{sim.url}/signin", data=form) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/json;charset=utf-8"
            body = await resp.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == "3600"
        assert body["access_token"].count(".") == 2
        bad = {"client_id": "sim-client", "client_secret": "nope"}
        async with session.post(f"{sim.url}/signin", data=bad) as resp:
            assert resp.status == 401
            assert set(await resp.json()) == {"id", "reason", "params"}
        async with session.post(f"{sim.url}/signin", json=form) as resp:
            assert resp.status == 415
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        me = f"{sim.url}/mgmtconfig/v1/admin/me"
        async with session.get(me, headers=headers) as resp:
            assert resp.status == 200
            assert (await resp.json())["customerId"] == CID
        async with session.post(f"{sim.url}/signout", headers=headers) as resp:
            assert resp.status == 200
        async with session.get(me, headers=headers) as resp:
            assert resp.status == 401


@pytest.mark.anyio
async def test_oneapi_token_flows_and_tokens_stay_on_their_own_api() -> None:
    async with SimServer(SimConfig(**FAST)) as sim, aiohttp.ClientSession() as session:
        token_url = f"{sim.url}/oauth2/v1/token"
        good = {
            "grant_type": "client_credentials",
            "client_id": "sim-client",
            "client_secret": "sim-secret",
            "audience": "https://api.zscaler.com",
        }

        async def grant(form: dict[str, str], headers: dict[str, str] | None = None):
            async with session.post(token_url, data=form, headers=headers) as resp:
                return resp.status, await resp.json()

        status, body = await grant(good)
        assert status == 200 and body["expires_in"] == 3600 and body["token_type"] == "Bearer"
        oneapi_token = body["access_token"]
        assert (await grant({**good, "audience": "https://other"}))[0] == 400
        assert (await grant({k: v for k, v in good.items() if k != "audience"}))[0] == 400
        assert (await grant({**good, "grant_type": "password"}))[0] == 400
        assert (await grant({**good, "client_secret": "bad"}))[1]["error"] == "invalid_client"
        basic = base64.b64encode(b"sim-client:sim-secret").decode()
        form = {"grant_type": "client_credentials", "audience": "https://api.zscaler.com"}
        assert (await grant(form, {"Authorization": f"Basic {basic}"}))[0] == 200
        assertion = {
            **form,
            "client_id": "sim-client",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        }
        claims = {"iss": "sim-client", "sub": "sim-client", "aud": "https://api.zscaler.com"}
        assert (await grant({**assertion, "client_assertion": jwt(claims)}))[0] == 200
        wrong = jwt({**claims, "iss": "someone"})
        assert (await grant({**assertion, "client_assertion": wrong}))[0] == 400
        assert (await grant({**assertion, "client_assertion": "not-a-jwt"}))[0] == 400
        expired = jwt({**claims, "exp": 1})
        assert (await grant({**assertion, "client_assertion": expired}))[0] == 400

        legacy_token = await signin(session, sim.url)
        path = f"/v1/admin/customers/{CID}/credential"
        for prefix, token, expected in [
            ("/zpa/mgmtconfig", oneapi_token, 200),
            ("/mgmtconfig", oneapi_token, 401),
            ("/zpa/mgmtconfig", legacy_token, 401),
            ("/mgmtconfig", legacy_token, 200),
        ]:
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(f"{sim.url}{prefix}{path}", headers=headers) as resp:
                assert resp.status == expected, (prefix, expected)
        async with session.get(f"{sim.url}/_sim/stats") as resp:
            assert (await resp.json())["signins"] == 4


@pytest.mark.anyio
async def test_tokens_expire_after_the_ttl() -> None:
    async with running(token_ttl=0.5) as api:
        status, _, _ = await api.cred("GET")
        assert status == 200
        await asyncio.sleep(0.6)
        status, body, _ = await api.cred("GET")
        assert status == 401
        assert body == {"id": "access.denied", "reason": "Access denied", "params": []}
        api.token = await signin(api.session, api.sim.url)
        assert (await api.cred("GET"))[0] == 200
        stats = await api.sim_get("stats")
        assert stats["signins"] == 2 and stats["unauthorized"] == 1


@pytest.mark.anyio
async def test_missing_token_wrong_customer_unknown_path_and_method() -> None:
    async with running() as api:
        status, body, _ = await api.cred("GET", headers={"Authorization": ""})
        assert status == 401 and body["id"] == "access.denied"
        status, body, _ = await api.call("GET", "/v1/admin/customers/1/credential")
        assert status == 403 and set(body) == {"id", "reason", "params"}
        status, body, _ = await api.call("GET", "/v1/admin/nothing")
        assert status == 404 and set(body) == {"id", "reason", "params"}
        status, body, headers = await api.cred("PATCH")
        assert status == 405 and "POST" in headers["Allow"]


# ---- wire format and listing -----------------------------------------------------------


@pytest.mark.anyio
async def test_list_wire_format_matches_zpa() -> None:
    async with running(credentials=60) as api:
        status, body, headers = await api.cred("GET")
        assert status == 200
        assert headers["Content-Type"] == "application/json;charset=utf-8"
        assert isinstance(body["totalPages"], str) and isinstance(body["totalCount"], str)
        assert body["totalCount"] == "70" and body["totalPages"] == "4"
        assert len(body["list"]) == 20
        for item in await api.walk(500):
            assert_wire(item)
        status, item, _ = await api.cred("GET", "/47")
        assert item == {
            "id": "47",
            "creationTime": "1668431272",
            "modifiedBy": "72057594038052745",
            "name": "test",
            "userName": "test123",
            "credentialType": "SSH_KEY",
            "lastCredentialResetTime": "1668431272",
            "microtenantName": "Default",
        }
        status, item, _ = await api.cred("GET", "/11262", params={"microtenantId": SCOPE_C})
        assert item["microtenantId"] == SCOPE_C and item["microtenantName"] == "Scope C"
        assert item["userDomain"] == "zscaler.com" and item["description"] == "test-test-test-1"


@pytest.mark.anyio
async def test_paging_at_20_and_500_covers_every_id_exactly_once() -> None:
    async with running(credentials=1200) as api:
        every = {str(i) for i in api.sim.state.credentials}
        for size in (20, 500):
            ids = [item["id"] for item in await api.walk(size)]
            assert len(ids) == len(set(ids)) and set(ids) == every
            assert ids == sorted(ids, key=int)
        status, body, _ = await api.cred("GET", params={"pagesize": "5000"})
        assert len(body["list"]) == 500 and body["totalPages"] == "3"
        status, body, _ = await api.cred("GET", params={"page": "99", "pagesize": "500"})
        assert status == 200 and body["list"] == [] and body["totalCount"] == "1210"
        for bad in ({"page": "0"}, {"pagesize": "x"}, {"sortdir": "DESC"}):
            assert (await api.cred("GET", params=bad))[0] == 400


@pytest.mark.anyio
async def test_microtenant_scopes_ownership_search_and_sorting() -> None:
    async with running(credentials=300) as api:
        owner = {str(c.id): c.microtenant_id for c in api.sim.state.credentials.values()}
        scope_c = {i for i, m in owner.items() if m == int(SCOPE_C)}
        default = {i for i, m in owner.items() if m == 0}

        async def ids(params: dict[str, str]) -> list[str]:
            return [item["id"] for item in await api.walk(7, params)]

        assert set(await ids({"microtenantId": "0"})) == default
        both = await ids({"microtenantId": SCOPE_C})
        assert set(both) == scope_c | default and both == sorted(both, key=int)
        only = {"microtenantId": SCOPE_C, "search": "ownershipType EQ MICROTENANT_SPECIFIC"}
        assert set(await ids(only)) == scope_c
        inherited = {"microtenantId": SCOPE_C, "search": "ownershipType EQ INHERITED"}
        inherited_items = await api.walk(500, inherited)
        assert {i["id"] for i in inherited_items} == default
        assert all(i["microtenantName"] == "Default" for i in inherited_items)
        descending = await ids({"microtenantId": SCOPE_C, "sortdir": "DSC"})
        assert descending == list(reversed(both))
        by_name = await api.walk(500, {"sortBy": "name"})
        keys = [i["name"].casefold() for i in by_name]
        assert keys == sorted(keys)

        status, body, _ = await api.cred("GET", params={"search": "name EQ TESTCRED"})
        assert [i["id"] for i in body["list"]] == ["20"]
        status, body, _ = await api.cred("GET", params={"search": "name+EQ+key size test"})
        assert [i["id"] for i in body["list"]] == ["453"]
        status, body, _ = await api.cred(
            "GET", params={"search": "name EQ key size test", "microtenantId": "0"}
        )
        assert body["totalCount"] == "0" and "list" not in body
        for bad in ("status EQ x", "name LIKE x", "ownershipType EQ OTHER"):
            status, body, _ = await api.cred("GET", params={"search": bad})
            assert status == 400 and body["id"] == "invalid.search"
        for bad_mt, error in (("999", "microtenant.not.found"), ("null", "invalid.microtenant")):
            status, body, _ = await api.cred("GET", params={"microtenantId": bad_mt})
            assert status == 400 and body["id"] == error


@pytest.mark.anyio
async def test_microtenants_listing_summary_and_me() -> None:
    async with running(microtenants=3) as api:
        status, body, _ = await api.call("GET", f"/v1/admin/customers/{CID}/microtenants")
        assert body["totalCount"] == "4"
        assert body["list"][0] == {"name": "Default"}
        assert [m["name"] for m in body["list"][1:]] == ["Scope C", "Scope D", "Scope E"]
        assert body["list"][1]["id"] == SCOPE_C
        status, summary, _ = await api.call(
            "GET", f"/v1/admin/customers/{CID}/microtenants/summary"
        )
        assert summary[0] == {"name": "Default"}
        assert summary[1] == {"id": SCOPE_C, "name": "Scope C"}
        status, me, _ = await api.call("GET", "/v1/admin/me")
        assert me["customerId"] == CID and "customerName" in me


# ---- create, update, delete --------------------------------------------------------------


@pytest.mark.anyio
async def test_create_get_put_delete_and_secret_fingerprints() -> None:
    async with running() as api:
        new = {"name": "db-admin", "credentialType": "USERNAME_PASSWORD", "userName": "sa",
               "password": "first-pass", "userDomain": "corp.example.com"}
        status, created, _ = await api.cred("POST", json_body=new)
        assert status == 201 and created["name"] == "db-admin"
        assert created["microtenantName"] == "Default" and "microtenantId" not in created
        assert created["creationTime"] == created["lastCredentialResetTime"]
        assert_wire(created)
        ident = created["id"]
        status, in_c, _ = await api.cred(
            "POST", params={"microtenantId": SCOPE_C}, json_body={**new, "password": "c"}
        )
        assert status == 201 and in_c["microtenantId"] == SCOPE_C

        status, body, _ = await api.cred(
            "PUT", f"/{ident}", json_body={**new, "password": "second-pass"}
        )
        assert status == 204 and body is None
        fingerprints = {c["id"]: c for c in await api.sim_get("credentials")}
        assert fingerprints[ident]["secretSha256"] == sha("second-pass")
        assert fingerprints[ident]["puts"] == 1 and fingerprints[ident]["created"] is True
        assert fingerprints[in_c["id"]]["microtenantId"] == SCOPE_C
        assert fingerprints["57"]["created"] is False

        before = (await api.cred("GET", "/57"))[1]
        put = {"name": "trial01", "credentialType": "USERNAME_PASSWORD",
               "userName": "Zscaler", "password": "rotated"}
        assert (await api.cred("PUT", "/57", json_body=put))[0] == 204
        after = (await api.cred("GET", "/57"))[1]
        assert int(after["lastCredentialResetTime"]) > int(before["lastCredentialResetTime"])
        assert after["modifiedTime"] == after["lastCredentialResetTime"]

        assert (await api.cred("DELETE", f"/{ident}"))[0] == 204
        status, body, _ = await api.cred("GET", f"/{ident}")
        assert status == 400 and body["id"] == "resource.not.found" and body["params"] == [ident]
        assert (await api.cred("DELETE", f"/{ident}"))[0] == 400
        stats = await api.sim_get("stats")
        assert stats["writesByCredential"][ident] == 3


@pytest.mark.anyio
async def test_put_is_a_full_replace_in_the_owning_microtenant() -> None:
    async with running() as api:
        full = {"name": "test-test-test-1", "credentialType": "USERNAME_PASSWORD",
                "userName": "krishna", "password": "new"}
        scope_c = {"microtenantId": SCOPE_C}
        status, body, _ = await api.cred("PUT", "/11262", json_body=full)
        assert status == 400 and body["id"] == "resource.not.found"  # absent = Default
        status, body, _ = await api.cred(
            "PUT", "/11262", params={"microtenantId": "0"}, json_body=full
        )
        assert status == 400
        no_secret = {k: v for k, v in full.items() if k != "password"}
        status, body, _ = await api.cred("PUT", "/11262", params=scope_c, json_body=no_secret)
        assert status == 400 and body["params"] == ["password"]
        status, body, _ = await api.cred(
            "PUT", "/11262", params=scope_c, json_body={**full, "credentialType": "PASSWORD"}
        )
        assert status == 400 and body["id"] == "credential.type.immutable"
        status, body, _ = await api.cred(
            "PUT", "/11262", params=scope_c, json_body={**full, "id": "57"}
        )
        assert status == 400
        assert (await api.cred("PUT", "/11262", params=scope_c, json_body=full))[0] == 204
        status, item, _ = await api.cred("GET", "/11262", params=scope_c)
        # The PUT left out description and userDomain, so they are gone.
        assert "description" not in item and "userDomain" not in item

        # Default's credentials are visible (inherited) from a microtenant, not writable.
        assert (await api.cred("GET", "/57", params=scope_c))[0] == 200
        assert (await api.cred("GET", "/11262", params={"microtenantId": "0"}))[0] == 400
        put57 = {"name": "trial01", "credentialType": "USERNAME_PASSWORD",
                 "userName": "Zscaler", "password": "x"}
        assert (await api.cred("PUT", "/57", params=scope_c, json_body=put57))[0] == 400
        assert (await api.cred("DELETE", "/57", params=scope_c))[0] == 400


@pytest.mark.anyio
async def test_validation_refuses_what_zpa_would() -> None:
    async with running() as api:

        async def create(body: Any, **kw: Any) -> tuple[int, Any]:
            status, answer, _ = await api.cred("POST", json_body=body, **kw)
            return status, answer

        up = {"name": "n1", "credentialType": "USERNAME_PASSWORD", "userName": "u", "password": "p"}
        for missing in ("name", "userName", "password"):
            status, body = await create({k: v for k, v in up.items() if k != missing})
            assert status == 400 and body["params"] == [missing]
        status, body = await create({**up, "credentialType": "TOKEN"})
        assert status == 400 and body["id"] == "invalid.credential.type"
        status, body = await create({k: v for k, v in up.items() if k != "credentialType"})
        assert status == 400
        status, body = await create({**up, "privateKey": "-----BEGIN PRIVATE KEY-----"})
        assert status == 400 and body["params"] == ["privateKey"]
        status, body = await create({**up, "name": "x" * 256})
        assert status == 400 and body["params"] == ["name"]
        status, body = await create({**up, "password": 5})
        assert status == 400
        status, body = await create(
            {"name": "vnc", "credentialType": "PASSWORD", "password": "p", "userName": "ignored",
             "userDomain": "ignored.example.com"}
        )
        assert status == 201 and "userName" not in body and "userDomain" not in body

        assert (await create({**up, "name": "Dup-Name"}))[0] == 201
        for twin in ("dup-name", "DUP-NAME", "&#x44;up-Name", "Dup&#x2d;Name"):
            status, body = await create({**up, "name": twin})
            assert status == 400 and body["id"] == "resource.already.exist", twin
        in_c = {"microtenantId": SCOPE_C}
        assert (await create({**up, "name": "dup-name"}, params=in_c))[0] == 201
        # A PUT may not rename onto another credential's name either.
        status, body, _ = await api.cred("PUT", "/57", json_body={**up, "name": "DUP-name"})
        assert status == 400 and body["id"] == "resource.already.exist"

        status, _, _ = await api.cred("POST", data=b'{"name": "x"}')
        assert status == 415
        status, body, _ = await api.cred(
            "POST", data=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert status == 400 and set(body) == {"id", "reason", "params"}
        status, body, _ = await api.cred(
            "POST", data=b"[1]", headers={"Content-Type": "application/json"}
        )
        assert status == 400
        assert (await create(up, params={"microtenantId": "12345"}))[0] == 400
        assert (await create(up, params={"microtenantId": "01"}))[0] == 400


@pytest.mark.anyio
async def test_ssh_keys_are_parsed_and_size_limited(keys: dict[str, str]) -> None:
    async with running() as api:

        async def create(name: str, key: str, passphrase: str | None = None) -> tuple[int, Any]:
            body = {"name": name, "credentialType": "SSH_KEY", "userName": "root",
                    "privateKey": key}
            if passphrase is not None:
                body["passphrase"] = passphrase
            status, answer, _ = await api.cred("POST", json_body=body)
            return status, answer

        for kind in ("pkcs8", "pkcs1", "openssh", "ec"):
            status, body = await create(f"key-{kind}", keys[kind])
            assert status == 201, (kind, body)
            assert_wire(body)
        status, body = await create("big", keys["too_big"])
        assert status == 400 and body["id"] == "ssh.key.too.large"
        garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"
        status, body = await create("garbage", garbage)
        assert status == 400 and body["id"] == "invalid.ssh.key"
        assert (await create("plain", "not a key"))[0] == 400
        assert (await create("escaped", keys["pkcs8"].replace("\n", "\\n")))[0] == 400
        assert (await create("enc", keys["encrypted"]))[0] == 400
        assert (await create("enc", keys["encrypted"], "wrong"))[0] == 400
        status, body = await create("enc", keys["encrypted"], "s3cret")
        assert status == 201
        stored = {c["id"]: c for c in await api.sim_get("credentials")}[body["id"]]
        assert stored["secretSha256"] == sha(keys["encrypted"])
        status, body, _ = await api.cred(
            "POST",
            json_body={"name": "pw", "credentialType": "SSH_KEY", "userName": "u",
                       "privateKey": keys["ec"], "password": "p"},
        )
        assert status == 400 and body["params"] == ["password"]


# ---- move and policy -----------------------------------------------------------------


@pytest.mark.anyio
async def test_move_between_default_and_microtenants() -> None:
    async with running() as api:

        async def move(ident: str, params: dict[str, str]) -> tuple[int, Any]:
            status, body, _ = await api.cred("POST", f"/{ident}/move", params=params)
            return status, body

        status, body = await move("57", {"microtenantId": "0", "targetMicrotenantId": SCOPE_C})
        assert status == 204 and body is None
        status, item, _ = await api.cred("GET", "/57")
        assert item["microtenantId"] == SCOPE_C and item["microtenantName"] == "Scope C"
        status, body = await move("57", {"microtenantId": "0", "targetMicrotenantId": SCOPE_C})
        assert status == 400 and body["id"] == "resource.not.found"  # no longer in Default
        status, body = await move("57", {"microtenantId": SCOPE_C})
        assert status == 400 and body["params"] == ["targetMicrotenantId"]
        status, body = await move("57", {"microtenantId": SCOPE_C, "targetMicrotenantId": "42"})
        assert status == 400 and body["id"] == "microtenant.not.found"
        status, body = await move("57", {"microtenantId": SCOPE_C, "targetMicrotenantId": SCOPE_C})
        assert status == 400 and body["id"] == "invalid.move.target"
        status, _ = await move("57", {"microtenantId": SCOPE_C, "targetMicrotenantId": SCOPE_D})
        assert status == 204
        assert (await move("57", {"microtenantId": SCOPE_D, "targetMicrotenantId": "0"}))[0] == 204
        status, item, _ = await api.cred("GET", "/57", params={"microtenantId": "0"})
        assert status == 200 and "microtenantId" not in item

        # A name already taken in the target microtenant blocks the move.
        clash = {"name": "trial01", "credentialType": "PASSWORD", "password": "p"}
        in_c = {"microtenantId": SCOPE_C}
        assert (await api.cred("POST", params=in_c, json_body=clash))[0] == 201
        status, body = await move("57", {"microtenantId": "0", "targetMicrotenantId": SCOPE_C})
        assert status == 400 and body["id"] == "resource.already.exist"
        assert (await api.sim_get("stats"))["writesByCredential"]["57"] == 3


@pytest.mark.anyio
async def test_policy_rules_block_delete_and_move_until_removed() -> None:
    async with running() as api:
        status, policy_set, _ = await api.call(
            "GET", f"/v1/admin/customers/{CID}/policySet/policyType/CREDENTIAL_POLICY"
        )
        assert status == 200 and policy_set["policyType"] == "8"
        set_id = policy_set["id"]
        rule_path = f"/v2/admin/customers/{CID}/policySet/{set_id}/rule"
        rule = {"name": "inject-trial", "action": "INJECT_CREDENTIALS", "credential": {"id": "57"}}
        status, created, _ = await api.call("POST", rule_path, json_body=rule)
        assert status == 201 and created["credential"] == {"id": "57", "name": "trial01"}
        assert (await api.call("POST", rule_path, json_body=rule))[0] == 400
        bad = {**rule, "name": "other", "action": "ALLOW"}
        assert (await api.call("POST", rule_path, json_body=bad))[0] == 400
        status, rules, _ = await api.call(
            "GET", f"/v1/admin/customers/{CID}/policySet/rules/policyType/CREDENTIAL_POLICY"
        )
        assert rules["totalCount"] == "1" and rules["list"][0]["action"] == "INJECT_CREDENTIALS"

        status, body, _ = await api.cred("DELETE", "/57")
        assert status == 400 and body["id"] == "credential.in.use"
        assert body["params"] == ["inject-trial"]
        status, body, _ = await api.cred(
            "POST", "/57/move", params={"microtenantId": "0", "targetMicrotenantId": SCOPE_C}
        )
        assert status == 400 and body["id"] == "credential.in.use"
        put = {"name": "trial01", "credentialType": "USERNAME_PASSWORD",
               "userName": "Zscaler", "password": "still-allowed"}
        assert (await api.cred("PUT", "/57", json_body=put))[0] == 204

        delete_path = f"/v1/admin/customers/{CID}/policySet/{set_id}/rule/{created['id']}"
        assert (await api.call("DELETE", delete_path))[0] == 204
        assert (await api.call("DELETE", delete_path))[0] == 400
        assert (await api.cred("DELETE", "/57"))[0] == 204


@pytest.mark.anyio
async def test_seeded_policy_rules_reference_real_credentials() -> None:
    async with running(credentials=50, policy_rules=8) as api:
        status, body, _ = await api.call(
            "GET",
            f"/v1/admin/customers/{CID}/policySet/rules/policyType/CREDENTIAL_POLICY",
            params={"pagesize": "500"},
        )
        assert body["totalCount"] == "8"
        creds = api.sim.state.credentials
        for rule in body["list"]:
            assert int(rule["credential"]["id"]) in creds
            owner = creds[int(rule["credential"]["id"])].microtenant_id
            assert rule.get("microtenantId", "0") == str(owner)
        blocked = body["list"][0]
        params = {"microtenantId": blocked.get("microtenantId", "0")}
        ident = blocked["credential"]["id"]
        status, answer, _ = await api.cred("DELETE", f"/{ident}", params=params)
        assert status == 400 and blocked["name"] in answer["params"]


@pytest.mark.anyio
async def test_the_oneapi_prefix_serves_the_same_api() -> None:
    async with SimServer(SimConfig(**FAST)) as sim, aiohttp.ClientSession() as session:
        form = {"grant_type": "client_credentials", "client_id": "sim-client",
                "client_secret": "sim-secret", "audience": "https://api.zscaler.com"}
        async with session.post(f"{sim.url}/oauth2/v1/token", data=form) as resp:
            token = (await resp.json())["access_token"]
        api = Api(session, sim, token, "/zpa/mgmtconfig")
        body = {"name": "via-oneapi", "credentialType": "PASSWORD", "password": "p"}
        status, created, _ = await api.cred("POST", json_body=body)
        assert status == 201
        assert (await api.cred("GET", f"/{created['id']}"))[0] == 200
        log = await api.sim_get("requests")
        assert log[-1]["path"].startswith("/zpa/mgmtconfig/") and log[-1]["class"] == "read"
