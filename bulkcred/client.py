"""ZPAClient: typed calls for credentials, microtenants and credential policy rules.

It owns auth (TokenManager), pacing (the tenant's Limiter) and retries (retry.classify);
the transport only sends bytes. There is no response cache: every read goes to the server.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, AsyncIterator, Awaitable, Callable, Final, Mapping, Sequence, TypeVar
from urllib.parse import quote

import anyio
import orjson

from .auth import Auth, TokenManager
from .config import DEFAULT_READ_RATE, DEFAULT_WRITE_RATE, Rate
from .errors import (
    APIError,
    NotFound,
    OutcomeUnknown,
    TransportError,
    UsageError,
    WaitTooLong,
    api_error_for,
    parse_error_body,
)
from .limiter import Limiter, LimiterStats, request_class
from .models import (
    UNSET,
    Credential,
    CredentialSecret,
    Microtenant,
    PolicyRule,
    Unset,
    normalize_microtenant_id,
    normalize_name,
)
from .retry import Action, RetryPolicy, classify, parse_retry_after
from .transport import AiohttpTransport, Response, Transport

__all__ = [
    "DEFAULT_PAGE_CONCURRENCY",
    "MAX_PAGE_SIZE",
    "ClientStats",
    "ZPAClient",
]

log = logging.getLogger("bulkcred.client")

#: ZPA's largest page; every walk uses one page size throughout (case 3)
MAX_PAGE_SIZE: Final = 500
#: pages fetched at once by iter_credential_pages: enough to keep a 20/10 s read limit
#: busy at a few seconds per page
DEFAULT_PAGE_CONCURRENCY: Final = 8
#: names the server's ``name EQ`` search is trusted with; others are matched client-side
_SEARCHABLE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_EWMA_ALPHA = 0.2

MicrotenantArg = str | int | None | Unset
T = TypeVar("T")
#: awaited with the attempt number (1, 2, ...) just before each attempt is sent
BeforeSend = Callable[[int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of one client's traffic."""

    #: requests sent per class (``read``/``write``), every retry included
    requests: Mapping[str, int]
    #: answers received, by HTTP status
    responses: Mapping[int, int]
    #: 429 answers received
    throttled: int
    #: requests re-sent, for any reason
    retries: int
    #: times the server paused a request class (a 429 during a pause is not a new one)
    pauses: int
    #: seconds this client's pauses added
    paused_seconds: float
    sign_ins: int
    #: requests that got no HTTP answer
    transport_errors: int
    #: smoothed round-trip time in seconds (0.0 before the first answer)
    latency_ewma: float
    limiter: LimiterStats


def _microtenant_params(value: MicrotenantArg) -> dict[str, str]:
    """``microtenantId`` for a query: omitted when not passed, ``"0"`` for Default (case 13)."""
    if value is UNSET or value is None:
        return {}
    try:
        return {"microtenantId": normalize_microtenant_id(value)}
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _path_id(value: str) -> str:
    text = str(value).strip()
    if not text:
        raise UsageError("an object id cannot be empty")
    return quote(text, safe="")


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip()) if value is not None else None
    except ValueError:
        return None


class ZPAClient:
    """An async client for one ZPA tenant; ``async with`` it, or call :meth:`aclose`.

    ``api_prefix`` is ``""`` for the legacy API host and ``"/zpa"`` for OneAPI. Without a
    ``limiter`` the tenant's process-wide one is used (so clients on one tenant share the
    limit); a given limiter's rates win over ``read_rate``/``write_rate``. Safe for many
    concurrent callers; the caller bounds how many requests are in flight.
    """

    def __init__(
        self,
        *,
        base_url: str,
        customer_id: str,
        auth: Auth,
        api_prefix: str = "",
        read_rate: Rate = DEFAULT_READ_RATE,
        write_rate: Rate = DEFAULT_WRITE_RATE,
        limiter: Limiter | None = None,
        retry: RetryPolicy | None = None,
        transport: Transport | None = None,
        timeout: float = 60.0,
        user_agent: str = "bulkcred/0.1.0",
    ) -> None:
        base = base_url.strip().rstrip("/")
        if not re.match(r"https?://[^/]+", base):
            raise UsageError(f"the base URL {base_url!r} is not an http(s) URL")
        cid = str(customer_id).strip()
        if not cid.isdigit():
            raise UsageError(f"the customer id {customer_id!r} is not a string of digits")
        prefix = api_prefix.strip().strip("/")
        self._base = base
        self._customer_id = cid
        self._prefix = f"/{prefix}" if prefix else ""
        self._limiter = limiter or Limiter.for_tenant(base, cid, read=read_rate, write=write_rate)
        self._retry = retry or RetryPolicy()
        self._own_transport = transport is None
        self._transport: Transport = transport or AiohttpTransport()
        self._timeout = timeout
        self._user_agent = user_agent
        self._tokens = TokenManager(
            auth, self._transport, base_url=base, retry=self._retry,
            timeout=min(timeout, 30.0), user_agent=user_agent,
        )
        self._requests: Counter[str] = Counter()
        self._responses: Counter[int] = Counter()
        self._throttled = 0
        self._retries = 0
        self._pauses = 0
        self._paused_seconds = 0.0
        self._transport_errors = 0
        self._latency = 0.0
        self._pause_callbacks: list[Callable[[str, float], None]] = []

    async def __aenter__(self) -> ZPAClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the transport if this client made it (a given one belongs to the caller)."""
        if self._own_transport:
            await self._transport.aclose()

    def __repr__(self) -> str:
        return f"ZPAClient(base_url={self._base!r}, customer_id={self._customer_id!r})"

    @property
    def read_rate(self) -> Rate:
        return self._limiter.rate("read")

    @property
    def write_rate(self) -> Rate:
        return self._limiter.rate("write")

    @property
    def limiter(self) -> Limiter:
        return self._limiter

    def on_pause(self, callback: Callable[[str, float], None]) -> None:
        """Call ``callback(class, seconds)`` whenever the server pauses a request class."""
        self._pause_callbacks.append(callback)

    def stats(self) -> ClientStats:
        return ClientStats(
            requests=MappingProxyType({c: self._requests[c] for c in ("read", "write")}),
            responses=MappingProxyType(dict(sorted(self._responses.items()))),
            throttled=self._throttled,
            retries=self._retries,
            pauses=self._pauses,
            paused_seconds=self._paused_seconds,
            sign_ins=self._tokens.sign_ins,
            transport_errors=self._transport_errors,
            latency_ewma=self._latency,
            limiter=self._limiter.stats(),
        )

    # -- paths ---------------------------------------------------------------------

    def _admin(self, version: str = "v1") -> str:
        return f"{self._prefix}/mgmtconfig/{version}/admin/customers/{self._customer_id}"

    def _credential_path(self, credential_id: str | None = None, suffix: str = "") -> str:
        path = f"{self._admin()}/credential"
        if credential_id is not None:
            path += f"/{_path_id(credential_id)}"
        return path + suffix

    # -- the request loop --------------------------------------------------------------

    def _observe_latency(self, seconds: float) -> None:
        if self._latency == 0.0:
            self._latency = seconds
        else:
            self._latency += _EWMA_ALPHA * (seconds - self._latency)

    def _pause(self, cls: str, seconds: float, why: str, method: str, path: str) -> None:
        was_paused = self._limiter.paused_for(cls) > 0
        added = self._limiter.pause(cls, seconds)
        self._paused_seconds += added
        if added > 0:
            remaining = self._limiter.paused_for(cls)
            if not was_paused:
                self._pauses += 1
                log.warning("the server paused %s requests for %.1f s (%s on %s %s)",
                            cls, remaining, why, method, path)
            for callback in self._pause_callbacks:
                try:
                    callback(cls, remaining)
                except Exception:
                    # a progress display must not break the request it reports on
                    log.exception("on_pause callback failed")

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        secrets: Sequence[str] = (),
        before_send: BeforeSend | None = None,
    ) -> Response:
        """Send until the answer is a success or the policy says stop; raise a ZPAError.

        Each attempt takes a new limiter slot. ``secrets`` (the values in the body) are
        masked in any error text. A DELETE that finds nothing after an earlier attempt
        may have been applied counts as done. ``before_send(attempt)`` is awaited just
        before each attempt goes out (a job journals its intent there, so that every
        request, retries included, has one).
        """
        body = orjson.dumps(json) if json is not None else None
        url = self._base + path
        query = dict(params) if params else None
        cls = request_class(method)
        policy = self._retry
        started = anyio.current_time()
        backoffs = 0
        refreshed = False
        maybe_applied = False
        attempt = 0
        while True:
            # signed in before the slot is taken: a slot's time is the time the request
            # goes out, and a sign-in must not stand between them
            await self._tokens.token()
            try:
                await self._limiter.acquire(cls, max_pause=policy.max_wait)
            except WaitTooLong as exc:
                raise WaitTooLong(str(exc), wait=exc.wait, method=method, path=path) from None
            # the token may have run out (or been renewed) while the request queued; a
            # sign-in now delays only this send, where giving the slot back could starve it
            token = self._tokens.peek() or await self._tokens.token()
            headers = {
                "Authorization": token.header(),
                "Accept": "application/json",
                "User-Agent": self._user_agent,
            }
            if body is not None:
                headers["Content-Type"] = "application/json"
            attempt += 1
            if before_send is not None:
                await before_send(attempt)
            self._requests[cls] += 1
            resp: Response | None = None
            exc_: TransportError | None = None
            try:
                resp = await self._transport.send(
                    method, url, params=query, headers=headers, body=body, timeout=self._timeout
                )
            except TransportError as e:
                exc_ = e
                self._transport_errors += 1
                e.method, e.path = e.method or method, e.path or path
            else:
                self._responses[resp.status] += 1
                self._observe_latency(resp.elapsed)
                log.debug("%s %s -> %d in %.3f s", method, path, resp.status, resp.elapsed)
                if 200 <= resp.status < 300:
                    return resp

            status = resp.status if resp is not None else None
            if resp is not None:
                error_id, reason, eparams = parse_error_body(resp.body, redact=secrets)
                wait = parse_retry_after(resp.headers.get("retry-after"))
            else:
                error_id, reason, eparams, wait = None, None, [], None
            decision = classify(
                method, status, error_id, exc_, retry_after=wait,
                can_refresh=self._tokens.refreshable and not refreshed,
            )
            context: dict[str, Any] = {"method": method, "path": path, "status": status,
                                       "error_id": error_id, "reason": reason, "params": eparams}
            elapsed = anyio.current_time() - started

            if decision.action is Action.PAUSE_AND_RETRY:
                if status == 429:
                    self._throttled += 1
                # no usable retry-after: one window of the class clears the server's too
                seconds = decision.wait if decision.wait is not None else self.limiter.rate(cls).per
                self._pause(cls, seconds, decision.why, method, path)
                policy.check_wait(seconds, **context)
                if policy.deadline is None or elapsed + seconds <= policy.deadline:
                    self._retries += 1
                    continue
            elif decision.action is Action.REFRESH_AND_RETRY:
                refreshed = True
                self._tokens.invalidate(token)
                self._retries += 1
                continue
            elif decision.action is Action.RETRY:
                backoffs += 1
                if (exc_ is not None and exc_.maybe_sent) or (status is not None and status >= 500):
                    maybe_applied = True
                if backoffs < policy.max_attempts:
                    delay = policy.backoff(backoffs, server_wait=decision.wait)
                    policy.check_wait(delay, **context)
                    if policy.deadline is None or elapsed + delay <= policy.deadline:
                        log.info("%s %s: %s; retry %d in %.2f s", method, path, decision.why,
                                 backoffs, delay)
                        self._retries += 1
                        await policy.wait(delay)
                        continue
            elif decision.action is Action.UNKNOWN_OUTCOME:
                raise OutcomeUnknown(
                    f"{method} may have been applied, but its answer was lost ({decision.why})",
                    **context,
                ) from exc_

            if exc_ is not None:
                raise exc_
            assert resp is not None and status is not None
            error = api_error_for(status, error_id)
            if method == "DELETE" and maybe_applied and error is NotFound:
                log.info("%s %s: already gone after an attempt whose answer was lost",
                         method, path)
                return resp
            raise error(reason or f"HTTP {status}", **context)

    async def _get_json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        resp = await self._request("GET", path, params=params)
        try:
            return resp.json()
        except orjson.JSONDecodeError:
            raise APIError("the answer is not JSON", method="GET", path=path,
                           status=resp.status) from None

    # -- pagination ------------------------------------------------------------------

    async def _page(
        self, path: str, params: Mapping[str, str], page: int, page_size: int
    ) -> tuple[list[Any], int | None]:
        data = await self._get_json(path, {"page": str(page), "pagesize": str(page_size),
                                           **params})
        if isinstance(data, list):
            return data, None
        if not isinstance(data, dict):
            return [], None
        items = data.get("list")
        # totalPages is a string ("3"); totalCount is unreliable and not used (case 4)
        return (items if isinstance(items, list) else []), _int_or_none(data.get("totalPages"))

    async def _walk(
        self,
        path: str,
        params: Mapping[str, str],
        parse: Callable[[Mapping[str, Any]], T],
        key: Callable[[T], str],
        *,
        page_size: int,
        concurrency: int,
    ) -> AsyncIterator[list[T]]:
        """Pages 1..totalPages at one page size, each item once, streaming.

        Page 1 tells totalPages; the rest are fetched ``concurrency`` at a time (a task
        group per batch, closed before anything is yielded, so a consumer may stop early).
        Without totalPages it walks on until a short page.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise UsageError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        if concurrency < 1:
            raise UsageError("concurrency must be at least 1")
        seen: set[str] = set()

        def fresh(items: list[Any]) -> list[T]:
            out: list[T] = []
            for raw in items:
                if not isinstance(raw, dict):
                    continue
                try:
                    item = parse(raw)
                except (KeyError, ValueError, TypeError) as exc:
                    log.warning("skipped an item of %s that cannot be read (id %r): %s",
                                path, raw.get("id"), exc)
                    continue
                k = key(item)
                # a change during the walk can shift an item onto a second page
                if k not in seen:
                    seen.add(k)
                    out.append(item)
            return out

        items, total = await self._page(path, params, 1, page_size)
        batch = fresh(items)
        if batch:
            yield batch
        if total is None:
            page = 1
            while len(items) >= page_size and batch:
                page += 1
                items, _ = await self._page(path, params, page, page_size)
                batch = fresh(items)
                if batch:
                    yield batch
            return

        next_page = 2
        while next_page <= total:
            last = min(total, next_page + concurrency - 1)
            for items, page_total in await self._pages(path, params, range(next_page, last + 1),
                                                       page_size):
                # pages added during the walk are walked too
                total = max(total, page_total or 0)
                batch = fresh(items)
                if batch:
                    yield batch
            next_page = last + 1

    async def _pages(
        self, path: str, params: Mapping[str, str], pages: range, page_size: int
    ) -> list[tuple[list[Any], int | None]]:
        """Fetch ``pages`` at once; results in order of arrival, or the first error raised
        as itself (not wrapped in an exception group)."""
        results: list[tuple[list[Any], int | None]] = []
        errors: list[Exception] = []
        async with anyio.create_task_group() as tg:

            async def fetch(page: int) -> None:
                try:
                    results.append(await self._page(path, params, page, page_size))
                except Exception as exc:
                    errors.append(exc)
                    tg.cancel_scope.cancel()

            for page in pages:
                tg.start_soon(fetch, page)
        if errors:
            raise errors[0]
        return results

    # -- credentials -------------------------------------------------------------------

    def _list_params(self, microtenant_id: MicrotenantArg, search: str | None) -> dict[str, str]:
        params = _microtenant_params(microtenant_id)
        if search:
            params["search"] = search
        return params

    async def iter_credential_pages(
        self,
        *,
        microtenant_id: MicrotenantArg = UNSET,
        search: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
        concurrency: int | None = None,
    ) -> AsyncIterator[list[Credential]]:
        """Every page of credentials, in order of arrival; pages after the first are read
        ``concurrency`` at a time (default :data:`DEFAULT_PAGE_CONCURRENCY`)."""
        async for page in self._walk(
            self._credential_path(), self._list_params(microtenant_id, search),
            Credential.from_wire, lambda c: c.id, page_size=page_size,
            concurrency=concurrency or DEFAULT_PAGE_CONCURRENCY,
        ):
            yield page

    async def iter_credentials(
        self,
        *,
        microtenant_id: MicrotenantArg = UNSET,
        search: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> AsyncIterator[Credential]:
        """Every credential, a page at a time (``microtenant_id`` not passed: not sent)."""
        async for page in self._walk(
            self._credential_path(), self._list_params(microtenant_id, search),
            Credential.from_wire, lambda c: c.id, page_size=page_size, concurrency=1,
        ):
            for credential in page:
                yield credential

    async def list_credentials(
        self,
        *,
        microtenant_id: MicrotenantArg = UNSET,
        search: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> list[Credential]:
        return [c async for c in self.iter_credentials(
            microtenant_id=microtenant_id, search=search, page_size=page_size)]

    async def get_credential(
        self, credential_id: str, *, microtenant_id: MicrotenantArg = UNSET
    ) -> Credential:
        path = self._credential_path(credential_id)
        data = await self._get_json(path, _microtenant_params(microtenant_id))
        if not isinstance(data, dict):
            raise APIError("the answer is not a credential", method="GET", path=path,
                           status=200)
        return Credential.from_wire(data)

    async def find_credentials_by_name(
        self, name: str, *, microtenant_id: MicrotenantArg = UNSET
    ) -> list[Credential]:
        """Credentials whose name equals ``name`` as :func:`normalize_name` compares them.

        The server's ``name EQ`` search narrows the listing for plain names; a name with
        other characters is matched against the full listing, so that how the server
        escapes or searches it can never hide a match (a create is reconciled by this).
        """
        target = normalize_name(name)
        search = f"name EQ {name.strip()}" if _SEARCHABLE_NAME.fullmatch(name.strip()) else None
        return [
            c async for c in self.iter_credentials(microtenant_id=microtenant_id, search=search)
            if normalize_name(c.name) == target
        ]

    @staticmethod
    def _check_secret(credential: Credential, secret: CredentialSecret) -> None:
        if not secret.fits(credential.credential_type):
            field = credential.credential_type.secret_field
            raise UsageError(
                f"a {credential.credential_type.value} credential needs a {field} as its secret"
            )

    async def create_credential(
        self,
        credential: Credential,
        secret: CredentialSecret,
        *,
        microtenant_id: MicrotenantArg = UNSET,
        before_send: BeforeSend | None = None,
    ) -> Credential:
        """POST a new credential (``credential.id`` is ignored); returns what ZPA created.

        A lost answer raises :class:`OutcomeUnknown`: reconcile by name before re-sending.
        """
        self._check_secret(credential, secret)
        params = _microtenant_params(microtenant_id)
        body = credential.to_wire(secret)
        body.pop("id", None)
        if "microtenantId" in params:
            # the query decides where it lands; the body must not say otherwise
            body.pop("microtenantId", None)
            if params["microtenantId"] != "0":
                body["microtenantId"] = params["microtenantId"]
        path = self._credential_path()
        resp = await self._request("POST", path, params=params, json=body,
                                   secrets=secret.values(), before_send=before_send)
        try:
            data = resp.json()
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or "id" not in data:
            raise OutcomeUnknown(
                "the create was answered without the created object; look it up by name",
                method="POST", path=path, status=resp.status,
            )
        return Credential.from_wire(data)

    async def update_credential(self, credential: Credential, secret: CredentialSecret, *,
                                before_send: BeforeSend | None = None) -> None:
        """PUT the full object (its fields as they stand, plus the new secret) into its scope.

        ZPA answers 204 with no body, so nothing is returned: read it back to see it.
        """
        if not credential.id:
            raise UsageError("update_credential needs a credential with an id")
        self._check_secret(credential, secret)
        # fields this version does not model go back too: ZPA's PUT replaces the object
        body = {k: v for k, v in credential.extra.items()
                if k not in ("password", "privateKey", "passphrase")}
        body.update(credential.to_wire(secret))
        await self._request(
            "PUT", self._credential_path(credential.id),
            params={"microtenantId": credential.scope}, json=body, secrets=secret.values(),
            before_send=before_send,
        )

    async def delete_credential(
        self, credential_id: str, *, microtenant_id: MicrotenantArg = UNSET,
        before_send: BeforeSend | None = None,
    ) -> None:
        await self._request("DELETE", self._credential_path(credential_id),
                            params=_microtenant_params(microtenant_id), before_send=before_send)

    async def move_credential(
        self, credential_id: str, *, source_microtenant_id: str, target_microtenant_id: str,
        before_send: BeforeSend | None = None,
    ) -> None:
        """Move a credential between microtenants (Default is ``"0"``).

        A lost answer raises :class:`OutcomeUnknown`: read where the credential is.
        """
        source = _microtenant_params(source_microtenant_id)["microtenantId"]
        target = _microtenant_params(target_microtenant_id)["microtenantId"]
        await self._request(
            "POST", self._credential_path(credential_id, "/move"),
            params={"microtenantId": source, "targetMicrotenantId": target},
            before_send=before_send,
        )

    # -- microtenants and policy rules ---------------------------------------------------

    async def iter_microtenants(self) -> AsyncIterator[Microtenant]:
        """Every microtenant; the Default one (listed without an id) has id ``"0"``."""
        async for page in self._walk(
            f"{self._admin()}/microtenants", {}, Microtenant.from_wire, lambda m: m.id,
            page_size=MAX_PAGE_SIZE, concurrency=1,
        ):
            for microtenant in page:
                yield microtenant

    async def iter_credential_policy_rules(
        self, *, microtenant_id: MicrotenantArg = UNSET
    ) -> AsyncIterator[PolicyRule]:
        """Every rule of the credential policy (the rules that inject credentials)."""
        async for page in self._walk(
            f"{self._admin()}/policySet/rules/policyType/CREDENTIAL_POLICY",
            _microtenant_params(microtenant_id), PolicyRule.from_wire, lambda r: r.id,
            page_size=MAX_PAGE_SIZE, concurrency=1,
        ):
            for rule in page:
                yield rule

