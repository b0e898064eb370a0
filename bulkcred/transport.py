"""The thin layer that sends bytes: an aiohttp transport, and a mock one for unit tests.

A transport knows nothing of auth, retries or rate limits (the client owns those); it
only turns connection failures into :class:`~bulkcred.errors.TransportError` subclasses.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Mapping, Protocol
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import anyio
import orjson
from anyio.lowlevel import checkpoint
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import ConnectError, TransportError, UsageError

__all__ = [
    "AiohttpTransport",
    "MockTransport",
    "Request",
    "Response",
    "Transport",
]


def _ci_headers(headers: Mapping[str, str] | None) -> CIMultiDictProxy[str]:
    if isinstance(headers, CIMultiDictProxy):
        return headers
    return CIMultiDictProxy(CIMultiDict(headers or {}))


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP answer: status, case-insensitive headers, the raw body and the time it took."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    elapsed: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _ci_headers(self.headers))

    @classmethod
    def from_json(
        cls, status: int, data: Any, headers: Mapping[str, str] | None = None
    ) -> Response:
        """A JSON answer (for mock handlers)."""
        h = {"Content-Type": "application/json;charset=utf-8", **(headers or {})}
        return cls(status, h, orjson.dumps(data))

    def json(self) -> Any:
        """The body decoded with orjson; ``None`` for an empty body."""
        return orjson.loads(self.body) if self.body.strip() else None

    def __repr__(self) -> str:
        # a sign-in answer's body is a bearer token: never show bodies
        return f"Response(status={self.status}, body=<{len(self.body)} bytes>)"


@dataclass(frozen=True, slots=True)
class Request:
    """What a :class:`MockTransport` handler is given."""

    method: str
    url: str
    params: Mapping[str, str] | None
    headers: Mapping[str, str]
    body: bytes | None
    timeout: float

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> dict[str, str]:
        """The query string, from the URL and ``params`` together."""
        q = dict(parse_qsl(urlsplit(self.url).query, keep_blank_values=True))
        q.update(self.params or {})
        return q

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None

    def form(self) -> dict[str, str]:
        return dict(parse_qsl((self.body or b"").decode(), keep_blank_values=True))

    def __repr__(self) -> str:
        # headers carry the bearer token and bodies carry secrets
        return f"Request({self.method} {self.url} params={dict(self.params or {})!r})"


class Transport(Protocol):
    """Sends one request and returns its answer, whatever the status."""

    async def send(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Response: ...

    async def aclose(self) -> None: ...


class AiohttpTransport:
    """A transport over one :class:`aiohttp.ClientSession` (created on first use).

    Connection failures before the request was written raise :class:`ConnectError`;
    resets, disconnects and timeouts after that raise :class:`TransportError` (the
    request may have been applied).
    """

    def __init__(self, *, limit: int = 100, proxy: str | None = None) -> None:
        # the runner keeps at most 64 requests in flight; a pool above that means a
        # request never queues for a connection after the limiter stamped its slot
        self._limit = limit
        self._proxy = proxy
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300)
            # trust_env off: nothing below the CLI reads the environment (proxies included)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, raise_for_status=False
            )
            # aiohttp silently re-sends an idempotent request once when a reused
            # keep-alive connection drops. That replay bypasses the limiter (an unpaced
            # request ZPA counts) and the retry classifier, so bulkcred turns it off and
            # retries itself; the attribute is private, hence the guard.
            if hasattr(self._session, "_retry_connection"):
                self._session._retry_connection = False
        return self._session

    async def send(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Response:
        session = self._get_session()
        t0 = anyio.current_time()
        try:
            async with session.request(
                method,
                url,
                params=params,
                headers=headers,
                data=body,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
                proxy=self._proxy,
            ) as resp:
                payload = await resp.read()
                return Response(
                    resp.status,
                    CIMultiDictProxy(CIMultiDict(resp.headers)),
                    payload,
                    anyio.current_time() - t0,
                )
        except aiohttp.InvalidURL as exc:
            raise UsageError(f"not a usable URL: {exc}") from None
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise ConnectError(
                f"could not connect: {type(exc).__name__}: {exc}", method=method,
                path=urlsplit(url).path,
            ) from exc
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            what = "timed out" if isinstance(exc, asyncio.TimeoutError) else "connection failed"
            raise TransportError(
                f"{what} after the request was sent: {type(exc).__name__}: {exc}",
                method=method, path=urlsplit(url).path,
            ) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AiohttpTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


Handler = Callable[[Request], "Response | Awaitable[Response]"]


class MockTransport:
    """A socket-free transport: ``handler(request)`` returns (or awaits) the response.

    A handler simulates a network failure by raising a :class:`TransportError`; one that
    takes longer than the request's timeout fails like a real read timeout.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    async def send(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Response:
        request = Request(method, url, dict(params) if params else None, dict(headers), body,
                          timeout)
        t0 = anyio.current_time()
        result = self._handler(request)
        if inspect.isawaitable(result):
            try:
                with anyio.fail_after(timeout):
                    result = await result
            except TimeoutError:
                raise TransportError(
                    "timed out after the request was sent", method=method, path=request.path
                ) from None
        else:
            await checkpoint()
        return replace(result, elapsed=result.elapsed or anyio.current_time() - t0)

    async def aclose(self) -> None:
        return None
