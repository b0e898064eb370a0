"""The aiohttp application: ZPA's sign-in and API routes (under /mgmtconfig and /zpa/mgmtconfig),
rate limiting, fault injection, and the unauthenticated /_sim/ test endpoints.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import re
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from .auth import JWT_BEARER, TokenStore, decode_jwt_claims
from .config import Rate, SimConfig
from .faults import FaultInjector, parse_faults
from .limits import ClassLimiter, WindowMeter, format_retry_after
from .snapshot import load_tenant, save_tenant
from .tenant import DEFAULT_MT, Tenant, ZpaError, invalid, is_digits, name_key

__all__ = ["SIM_KEY", "Simulator", "create_app"]

API_PREFIXES = ("/mgmtconfig/", "/zpa/mgmtconfig/")
JSON_TYPE = "application/json;charset=utf-8"
FORM_TYPE = "application/x-www-form-urlencoded"
ONEAPI_AUDIENCE = "https://api.zscaler.com"
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 20
REQUEST_LOG_SIZE = 10_000
FAULT_KINDS = ("5xx", "409", "reset", "lost", "latency", "throttle_burst")
TOO_MANY_REQUESTS = {
    "exception": "invalid.toomanyrequests",
    "id": "invalid.toomanyrequests",
    "reason": "Exceeded the number of requests allowed.",
}
_FAULT_ERRORS = {
    500: ZpaError(500, "internal.server.error", "An internal server error occurred."),
    502: ZpaError(502, "bad.gateway", "The upstream service did not answer."),
    503: ZpaError(
        503,
        "retryable.server.error",
        "An error occurred. Refer to the Retry-After header, and then try again.",
    ),
    409: ZpaError(
        409,
        "api.concurrent.access.error",
        "Unable to modify the resource due to concurrent change requests. Try again",
        ["com.zscaler.zpn.model.Credential"],
    ),
}
_SEARCH_RE = re.compile(r"^\s*(\w+)(?:\s+|\+)EQ(?:\s+|\+)(.+?)\s*$")
_OWNERSHIP = ("INHERITED", "MICROTENANT_SPECIFIC")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    # ZPA's exact header value (no space before charset), not aiohttp's rendering.
    all_headers = {"Content-Type": JSON_TYPE, **(headers or {})}
    return web.Response(body=orjson.dumps(obj), status=status, headers=all_headers)


def error_response(err: ZpaError, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response(err.body(), err.status, headers)


def _oauth_error(code: str, description: str) -> web.Response:
    # ZIdentity is an OAuth2 server: RFC 6749 error bodies, and 400 for every failure.
    return json_response({"error": code, "error_description": description}, 400)


def _ttl_number(ttl: float) -> int | float:
    return int(ttl) if float(ttl).is_integer() else ttl


def _now() -> int:
    return int(time.time())


def _int_param(query: Mapping[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not is_digits(text) or int(text) < 1:
        raise invalid(name, f"{name} must be a positive integer, not {text!r}")
    return int(text)


def _paging(query: Mapping[str, str]) -> tuple[int, int]:
    """(offset, page size): ``page`` is 1-based; ``pagesize`` above 500 is clamped."""
    page = _int_param(query, "page", 1)
    size = min(_int_param(query, "pagesize", DEFAULT_PAGE_SIZE), MAX_PAGE_SIZE)
    return (page - 1) * size, size


def _search(query: Mapping[str, str], fields: tuple[str, ...]) -> tuple[str | None, str | None]:
    """``field EQ value`` (spaces, or literal ``+`` as the SDKs send it)."""
    text = query.get("search")
    if text is None or not text.strip():
        return None, None
    match = _SEARCH_RE.match(text)
    if not match or match.group(1) not in fields:
        raise ZpaError(
            400,
            "invalid.search",
            f"search must be 'FIELD EQ VALUE' with FIELD one of {', '.join(fields)}",
            [text],
        )
    return match.group(1), match.group(2)


def _descending(query: Mapping[str, str]) -> bool:
    sortdir = query.get("sortdir", "ASC")
    if sortdir not in ("ASC", "DSC"):
        raise invalid("sortdir", f"sortdir must be ASC or DSC, not {sortdir!r}")
    return sortdir == "DSC"


async def _json_body(request: web.Request) -> object:
    if request.content_type != "application/json":
        raise ZpaError(415, "unsupported.media.type", "Content-Type must be application/json")
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ZpaError(400, "json.parse.error", "The request body is not valid JSON") from None


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run a handler; ZpaErrors and routing misses become ZPA-shaped error bodies."""
    try:
        return await handler(request)
    except ZpaError as err:
        return error_response(err)
    except web.HTTPMethodNotAllowed as exc:
        err = ZpaError(405, "method.not.allowed", f"{request.method} is not allowed here")
        return error_response(err, {"Allow": ",".join(sorted(exc.allowed_methods))})
    except web.HTTPNotFound:
        return error_response(ZpaError(404, "path.not.found", f"No API at {request.path}"))


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _drop(request: web.Request) -> web.Response:
    """Abort the connection; the returned response is written nowhere."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)


class Stats:
    """Counters behind ``GET /_sim/stats``; ``reset`` zeroes them, limiter state stays."""

    def __init__(self, rates: Mapping[str, Rate]) -> None:
        self._rates = rates
        self.reset()

    def reset(self) -> None:
        self.requests = {"read": 0, "write": 0}
        self.throttled = {"read": 0, "write": 0}
        self.meters = {cls: WindowMeter(rate.window) for cls, rate in self._rates.items()}
        self.signins = 0
        self.unauthorized = 0
        self.faults = dict.fromkeys(FAULT_KINDS, 0)
        self.writes: Counter[int] = Counter()

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "throttled": dict(self.throttled),
            "maxInWindow": {cls: meter.max_seen for cls, meter in self.meters.items()},
            "signins": self.signins,
            "unauthorized": self.unauthorized,
            "faultsInjected": dict(self.faults),
            "writesByCredential": {str(k): v for k, v in sorted(self.writes.items())},
        }


class Simulator:
    """One simulated tenant behind one aiohttp application."""

    def __init__(self, config: SimConfig, tenant: Tenant) -> None:
        self.config = config
        self.tenant = tenant
        self.rates = config.rates
        self.limiters = {cls: ClassLimiter(r, config.limit_mode) for cls, r in self.rates.items()}
        self.tokens = TokenStore(config.token_ttl)
        self.stats = Stats(self.rates)
        self.log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self.started = time.monotonic()
        self.faults = FaultInjector(parse_faults(config.faults), config.seed)

    # ---- the request pipeline -----------------------------------------------------

    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_sim/"):
            return await _answer(request, handler)
        arrival = time.monotonic()
        entry: dict[str, Any] = {
            "t": round(arrival - self.started, 6),
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "status": None,
            "class": None,
            "fault": None,
        }
        self.log.append(entry)
        if request.path.startswith(API_PREFIXES):
            entry["class"] = "read" if request.method in ("GET", "HEAD") else "write"
            response = await self._api_call(request, handler, entry, arrival)
        else:
            response = await _answer(request, handler)
        if entry["status"] is None and entry["fault"] != "reset":
            entry["status"] = response.status
        return response

    async def _api_call(
        self, request: web.Request, handler: Handler, entry: dict[str, Any], arrival: float
    ) -> web.StreamResponse:
        cls = entry["class"]
        stats, faults, rate = self.stats, self.faults, self.rates[cls]
        stats.requests[cls] += 1
        if faults.in_throttle_burst():
            stats.faults["throttle_burst"] += 1
            entry["fault"] = "throttle_burst"
            # No slot to wait for: ask for the time one slot takes at the configured rate.
            return self._too_many(cls, rate.window / rate.limit)
        wait = self.limiters[cls].admit(arrival)
        if wait is not None:
            return self._too_many(cls, wait)
        stats.meters[cls].add(arrival)
        decision = faults.decide(cls == "write")
        if decision.latency > 0:
            stats.faults["latency"] += 1
            await asyncio.sleep(decision.latency)
        try:
            self._authorize(request)
        except ZpaError as err:
            return error_response(err)
        if decision.outcome == "reset":
            stats.faults["reset"] += 1
            entry["fault"] = "reset"
            return _drop(request)
        if isinstance(decision.outcome, int):
            kind = "409" if decision.outcome == 409 else "5xx"
            stats.faults[kind] += 1
            entry["fault"] = kind
            retry = {"Retry-After": "1s"} if decision.outcome == 503 else None
            return error_response(_FAULT_ERRORS[decision.outcome], retry)
        response = await _answer(request, handler)
        if decision.lose and response.status < 400:
            stats.faults["lost"] += 1
            entry["fault"] = "lost"
            entry["status"] = response.status  # what was applied, though never delivered
            return _drop(request)
        return response

    def _too_many(self, cls: str, wait: float) -> web.Response:
        self.stats.throttled[cls] += 1
        forced = self.faults.config.retry_after
        if forced is not None:
            value = f"{forced:g}s"
        else:
            value = format_retry_after(wait, self.rates[cls].window)
        return json_response(TOO_MANY_REQUESTS, 429, {"retry-after": value})

    def _authorize(self, request: web.Request) -> None:
        flow = "oneapi" if request.path.startswith("/zpa/") else "legacy"
        if not self.tokens.valid(_bearer(request), flow):
            self.stats.unauthorized += 1
            raise ZpaError(401, "access.denied", "Access denied")
        customer = request.match_info.get("customerId")
        if customer is not None and customer != self.tenant.customer_id:
            raise ZpaError(
                403,
                "authz.customer.mismatch",
                f"The API key does not grant access to customer {customer}",
                [customer],
            )

    # ---- authentication -------------------------------------------------------------

    async def signin(self, request: web.Request) -> web.Response:
        if request.content_type != FORM_TYPE:
            raise ZpaError(415, "unsupported.media.type", f"sign-in takes a {FORM_TYPE} body")
        form = await request.post()
        cfg = self.config
        if form.get("client_id") != cfg.client_id or form.get("client_secret") != cfg.client_secret:
            raise ZpaError(401, "authentication.failed", "Invalid client_id or client_secret")
        token = self.tokens.issue("legacy", cfg.client_id)
        self.stats.signins += 1
        # expires_in is a JSON string on the legacy flow.
        expires = f"{_ttl_number(cfg.token_ttl)}"
        return json_response({"token_type": "Bearer", "access_token": token, "expires_in": expires})

    async def signout(self, request: web.Request) -> web.Response:
        token = _bearer(request)
        if not self.tokens.valid(token, "legacy"):
            raise ZpaError(401, "access.denied", "Access denied")
        self.tokens.revoke(token)
        return web.Response(status=200)

    async def token(self, request: web.Request) -> web.Response:
        if request.content_type != FORM_TYPE:
            return _oauth_error("invalid_request", f"the token request must be {FORM_TYPE}")
        form = await request.post()
        cfg = self.config
        if form.get("grant_type") != "client_credentials":
            return _oauth_error("unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("audience") != ONEAPI_AUDIENCE:
            return _oauth_error("invalid_request", f"audience must be {ONEAPI_AUDIENCE}")
        client_id, secret = form.get("client_id"), form.get("client_secret")
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(encoded, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return _oauth_error("invalid_client", "malformed Basic authorization")
            client_id, _, secret = decoded.partition(":")
        assertion = form.get("client_assertion")
        if assertion is not None:
            kind = form.get("client_assertion_type")
            problem = self._assertion_problem(str(assertion), kind, client_id)
            if problem:
                return _oauth_error("invalid_client", problem)
        elif client_id != cfg.client_id or secret != cfg.client_secret:
            return _oauth_error("invalid_client", "invalid client_id or client_secret")
        token = self.tokens.issue("oneapi", cfg.client_id)
        self.stats.signins += 1
        expires = _ttl_number(cfg.token_ttl)
        return json_response({"access_token": token, "token_type": "Bearer", "expires_in": expires})

    def _assertion_problem(self, assertion: str, kind: object, client_id: object) -> str | None:
        # Private-key JWT: the signature is not checked (the sim has no registered key);
        # the JWT must be well formed, name the client in iss and sub, and not be expired.
        if kind != JWT_BEARER:
            return f"client_assertion_type must be {JWT_BEARER}"
        claims = decode_jwt_claims(assertion)
        if claims is None:
            return "client_assertion is not a JWT"
        wanted = self.config.client_id
        if claims.get("iss") != wanted or claims.get("sub") != wanted:
            return "client_assertion iss and sub must be the client id"
        if client_id not in (None, wanted):
            return "client_id does not match the assertion"
        exp = claims.get("exp")
        if isinstance(exp, (int, float)) and exp <= time.time():
            return "client_assertion has expired"
        return None

    # ---- credentials ----------------------------------------------------------------

    def _scope(self, request: web.Request, name: str = "microtenantId") -> int | None:
        return self.tenant.parse_microtenant(request.query.get(name), name)

    def _page(self, total: int, size: int, items: list[dict[str, Any]]) -> web.Response:
        body: dict[str, Any] = {"totalPages": str(math.ceil(total / size))}
        forced = self.faults.config.totalcount
        if forced != "omit":
            body["totalCount"] = str(total) if forced is None else forced
        # With nothing to list ZPA's envelope is read as lacking "list" (SDKs default it).
        if total:
            body["list"] = items
        return json_response(body)

    async def me(self, request: web.Request) -> web.Response:
        tenant = self.tenant
        return json_response(
            {
                "customerId": tenant.customer_id,
                "customerName": tenant.customer_name,
                "microtenantName": tenant.microtenant_name(DEFAULT_MT),
            }
        )

    async def list_credentials(self, request: web.Request) -> web.Response:
        query = request.query
        scope = self._scope(request)
        start, size = _paging(query)
        field, value = _search(query, ("name", "ownershipType"))
        if field == "ownershipType" and value not in _OWNERSHIP:
            raise ZpaError(
                400, "invalid.search", f"ownershipType must be {' or '.join(_OWNERSHIP)}", [value]
            )
        total, creds = self.tenant.list_credentials(
            scope=scope,
            ownership=value if field == "ownershipType" else None,
            name=value if field == "name" else None,
            by_name=query.get("sortBy") == "name",
            descending=_descending(query),
            start=start,
            count=size,
        )
        escape = self.faults.config.escape
        return self._page(total, size, [self.tenant.credential_wire(c, escape) for c in creds])

    async def get_credential(self, request: web.Request) -> web.Response:
        cred = self.tenant.get(request.match_info["id"], self._scope(request))
        return json_response(self.tenant.credential_wire(cred, self.faults.config.escape))

    async def create_credential(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        cred = self.tenant.create(await _json_body(request), scope, _now())
        self.stats.writes[cred.id] += 1
        return json_response(self.tenant.credential_wire(cred, self.faults.config.escape), 201)

    async def put_credential(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        body = await _json_body(request)
        cred = self.tenant.update(request.match_info["id"], body, scope, _now())
        self.stats.writes[cred.id] += 1
        return web.Response(status=204)

    async def delete_credential(self, request: web.Request) -> web.Response:
        cred = self.tenant.delete(request.match_info["id"], self._scope(request))
        self.stats.writes[cred.id] += 1
        return web.Response(status=204)

    async def move_credential(self, request: web.Request) -> web.Response:
        source = self._scope(request)
        target = self._scope(request, "targetMicrotenantId")
        cred = self.tenant.move(request.match_info["id"], source, target, _now())
        self.stats.writes[cred.id] += 1
        return web.Response(status=204)

    # ---- microtenants and credential policy -----------------------------------------

    async def list_microtenants(self, request: web.Request) -> web.Response:
        start, size = _paging(request.query)
        items = self.tenant.microtenant_wires()
        _, name = _search(request.query, ("name",))
        if name is not None:
            items = [m for m in items if name_key(m["name"]) == name_key(name)]
        return self._page(len(items), size, items[start : start + size])

    async def microtenant_summary(self, request: web.Request) -> web.Response:
        return json_response(
            [{k: m[k] for k in ("id", "name") if k in m} for m in self.tenant.microtenant_wires()]
        )

    async def get_policy_set(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        return json_response(self.tenant.policy_set_wire(scope, self.faults.config.escape))

    async def list_rules(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        start, size = _paging(request.query)
        rules = self.tenant.rules_in(scope)
        escape = self.faults.config.escape
        page = [self.tenant.rule_wire(r, escape) for r in rules[start : start + size]]
        return self._page(len(rules), size, page)

    async def create_rule(self, request: web.Request) -> web.Response:
        self.tenant.check_policy_set(request.match_info["setId"])
        scope = self._scope(request)
        rule = self.tenant.create_rule(await _json_body(request), scope, _now())
        return json_response(self.tenant.rule_wire(rule, self.faults.config.escape), 201)

    async def delete_rule(self, request: web.Request) -> web.Response:
        self.tenant.check_policy_set(request.match_info["setId"])
        self.tenant.delete_rule(request.match_info["ruleId"], self._scope(request))
        return web.Response(status=204)

    # ---- /_sim/ ---------------------------------------------------------------------

    async def sim_stats(self, request: web.Request) -> web.Response:
        return json_response(self.stats.to_json())

    async def sim_stats_reset(self, request: web.Request) -> web.Response:
        self.stats.reset()
        return web.Response(status=204)

    async def sim_credentials(self, request: web.Request) -> web.Response:
        creds = self.tenant.credentials
        return json_response(
            [
                {
                    "id": str(c.id),
                    "name": c.name,
                    "credentialType": c.credential_type,
                    "microtenantId": str(c.microtenant_id),
                    "userName": c.user_name,
                    "secretSha256": c.secret_sha256,
                    "puts": c.puts,
                    "created": c.created,
                }
                for c in (creds[i] for i in sorted(creds))
            ]
        )

    async def sim_requests(self, request: web.Request) -> web.Response:
        return json_response(list(self.log))

    async def sim_get_faults(self, request: web.Request) -> web.Response:
        return json_response({"spec": self.faults.config.spec})

    async def sim_set_faults(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            spec = body.get("spec") if isinstance(body, dict) else body
            if not isinstance(spec, str):
                raise ValueError('the body must be {"spec": "key=value,..."} or a JSON string')
            config = parse_faults(spec)
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            raise ZpaError(400, "invalid.fault.spec", str(exc)) from None
        self.faults = FaultInjector(config, self.config.seed)
        return json_response({"spec": config.spec})

    # ---- routing --------------------------------------------------------------------

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/signin", self.signin)
        router.add_post("/signout", self.signout)
        router.add_post("/oauth2/v1/token", self.token)
        for base in ("/mgmtconfig", "/zpa/mgmtconfig"):
            router.add_get(f"{base}/v1/admin/me", self.me)
            customer = f"{base}/v1/admin/customers/{{customerId}}"
            router.add_get(f"{customer}/credential", self.list_credentials)
            router.add_post(f"{customer}/credential", self.create_credential)
            router.add_get(f"{customer}/credential/{{id}}", self.get_credential)
            router.add_put(f"{customer}/credential/{{id}}", self.put_credential)
            router.add_delete(f"{customer}/credential/{{id}}", self.delete_credential)
            router.add_post(f"{customer}/credential/{{id}}/move", self.move_credential)
            router.add_get(f"{customer}/microtenants", self.list_microtenants)
            router.add_get(f"{customer}/microtenants/summary", self.microtenant_summary)
            policy = f"{customer}/policySet"
            router.add_get(f"{policy}/policyType/CREDENTIAL_POLICY", self.get_policy_set)
            router.add_get(f"{policy}/rules/policyType/CREDENTIAL_POLICY", self.list_rules)
            router.add_delete(f"{policy}/{{setId}}/rule/{{ruleId}}", self.delete_rule)
            v2_policy = f"{base}/v2/admin/customers/{{customerId}}/policySet"
            router.add_post(f"{v2_policy}/{{setId}}/rule", self.create_rule)
        router.add_get("/_sim/stats", self.sim_stats)
        router.add_post("/_sim/stats/reset", self.sim_stats_reset)
        router.add_get("/_sim/credentials", self.sim_credentials)
        router.add_get("/_sim/requests", self.sim_requests)
        router.add_get("/_sim/faults", self.sim_get_faults)
        router.add_post("/_sim/faults", self.sim_set_faults)


SIM_KEY = web.AppKey("bulkcred_sim", Simulator)


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await request.app[SIM_KEY].handle(request, handler)


def create_app(config: SimConfig | None = None) -> web.Application:
    """A ready application: its tenant comes from ``config.state`` (saved again on cleanup)
    when that file exists, else from the seed."""
    config = config or SimConfig()
    simulator = Simulator(config, load_tenant(config))
    app = web.Application(middlewares=[_middleware])
    app[SIM_KEY] = simulator
    simulator.add_routes(app.router)
    if config.state is not None:
        state = config.state

        async def save(_: web.Application) -> None:
            save_tenant(simulator.tenant, state)

        app.on_cleanup.append(save)
    return app
