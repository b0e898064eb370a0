"""What is retried and how long the client waits: retry-after, classify, 429 handling."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from email.utils import format_datetime

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkcred.auth import StaticToken
from bulkcred.client import ZPAClient
from bulkcred.errors import (
    BadRequest,
    Conflict,
    ConnectError,
    OutcomeUnknown,
    RateLimited,
    ServerError,
    TransportError,
    UsageError,
    WaitTooLong,
)
from bulkcred.limiter import Limiter
from bulkcred.models import Credential, CredentialSecret, Secret
from bulkcred.retry import (
    MAX_RETRY_AFTER,
    Action,
    RetryPolicy,
    classify,
    classify_sign_in,
    parse_retry_after,
)
from bulkcred.transport import MockTransport, Request, Response

from .test_limiter import VIRTUAL

CID = "216196257331281920"
CRED = {"id": "11262", "name": "cred-1", "credentialType": "PASSWORD", "microtenantName": "Default"}


@pytest.fixture
def anyio_backend():  # type: ignore[no-untyped-def]
    return VIRTUAL


def throttled(seconds: str | None = "13s") -> Response:
    headers = {"retry-after": seconds} if seconds is not None else {}
    return Response.from_json(
        429,
        {"exception": "invalid.toomanyrequests", "id": "invalid.toomanyrequests",
         "reason": "Exceeded the number of requests allowed."},
        headers,
    )


def client_for(handler, *, retry: RetryPolicy | None = None, **kw) -> ZPAClient:  # type: ignore[no-untyped-def]
    return ZPAClient(
        base_url="https://zpa.test", customer_id=CID, auth=StaticToken("t0k3n"),
        transport=MockTransport(handler), limiter=kw.pop("limiter", None) or Limiter(),
        retry=retry or RetryPolicy(jitter=0.0), **kw,
    )


# -- retry-after ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("13s", 13.0), ("13S", 13.0), ("13", 13.0), ("0s", 0.0), ("1.5s", 1.5),
        (" 4s ", 4.0), ("4s", 4.0), ("10s", 10.0), ("500ms", 0.5), ("1m30s", 90.0),
        ("-5s", 0.0), ("-5", 0.0), ("99999999s", MAX_RETRY_AFTER),
        (None, None), ("", None), ("   ", None), ("soon", None), ("13 seconds", None),
        ("s", None), ("1e3", None), ("inf", None), ("nan", None), ("--5", None),
    ],
)
def test_parse_retry_after_table(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_http_date() -> None:
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()
    later = format_datetime(datetime(2026, 3, 1, 12, 0, 42, tzinfo=timezone.utc), usegmt=True)
    assert parse_retry_after(later, now=now) == pytest.approx(42.0)
    earlier = format_datetime(datetime(2026, 3, 1, 11, 0, 0, tzinfo=timezone.utc), usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0.0
    assert parse_retry_after("Sun, 01 Mar 2026 12:00:10 -0000", now=now) == pytest.approx(10.0)


@given(st.integers(0, 10**6), st.sampled_from(["s", "S", ""]), st.sampled_from(["", " ", "\t"]))
def test_parse_retry_after_seconds(n: int, unit: str, pad: str) -> None:
    assert parse_retry_after(f"{pad}{n}{unit}{pad}") == min(float(n), MAX_RETRY_AFTER)


@given(st.floats(0, 8e4, allow_nan=False))
def test_parse_retry_after_fractions(x: float) -> None:
    assert parse_retry_after(f"{x:.3f}s") == pytest.approx(round(x, 3))


@given(st.text(max_size=40))
def test_parse_retry_after_never_raises(text: str) -> None:
    result = parse_retry_after(text)
    assert result is None or 0.0 <= result <= MAX_RETRY_AFTER


# -- classify ------------------------------------------------------------------------

LOST = TransportError("connection reset")
REFUSED = ConnectError("connection refused")


@pytest.mark.parametrize(
    "method, status, error_id, exc, retry_after, action",
    [
        # 429: never applied, so any method; the class pauses
        ("GET", 429, "invalid.toomanyrequests", None, 13.0, Action.PAUSE_AND_RETRY),
        ("POST", 429, None, None, None, Action.PAUSE_AND_RETRY),
        ("PUT", 429, None, None, 4.0, Action.PAUSE_AND_RETRY),
        ("POST", 503, "retryable.server.error", None, 10.0, Action.PAUSE_AND_RETRY),
        ("GET", 503, None, None, None, Action.RETRY),
        ("POST", 503, None, None, None, Action.UNKNOWN_OUTCOME),
        ("GET", 401, "access.denied", None, None, Action.REFRESH_AND_RETRY),
        ("POST", 401, None, None, None, Action.REFRESH_AND_RETRY),
        ("POST", 409, "api.concurrent.access.error", None, None, Action.RETRY),
        ("PUT", 400, "db.simultaneous.request", None, None, Action.RETRY),
        ("POST", 400, "api.concurrent.access.error", None, None, Action.RETRY),
        ("POST", 409, "resource.already.exist", None, None, Action.FAIL),
        ("GET", 500, None, None, None, Action.RETRY),
        ("PUT", 502, None, None, None, Action.RETRY),
        ("DELETE", 504, None, None, None, Action.RETRY),
        ("POST", 500, None, None, None, Action.UNKNOWN_OUTCOME),
        ("POST", 504, None, None, None, Action.UNKNOWN_OUTCOME),
        ("GET", 501, None, None, None, Action.FAIL),
        ("GET", 408, None, None, None, Action.RETRY),
        ("GET", None, None, LOST, None, Action.RETRY),
        ("PUT", None, None, LOST, None, Action.RETRY),
        ("DELETE", None, None, LOST, None, Action.RETRY),
        ("POST", None, None, LOST, None, Action.UNKNOWN_OUTCOME),
        ("POST", None, None, REFUSED, None, Action.RETRY),
        ("GET", None, None, ValueError("bug"), None, Action.FAIL),
        ("GET", 400, "resource.not.found", None, None, Action.FAIL),
        ("GET", 400, "bad.request", None, None, Action.FAIL),
        ("GET", 403, None, None, None, Action.FAIL),
        ("GET", 404, None, None, None, Action.FAIL),
        ("PUT", 415, None, None, None, Action.FAIL),
    ],
)
def test_classify_table(method, status, error_id, exc, retry_after, action) -> None:  # type: ignore[no-untyped-def]
    decision = classify(method, status, error_id, exc, retry_after=retry_after)
    assert decision.action is action
    if action is Action.PAUSE_AND_RETRY:
        assert decision.wait == retry_after
    assert decision.why


def test_classify_401_only_once() -> None:
    assert classify("GET", 401, None, None, can_refresh=False).action is Action.FAIL


def test_classify_needs_something() -> None:
    with pytest.raises(ValueError):
        classify("GET", None, None, None)


@pytest.mark.parametrize(
    "status, exc, action",
    [(429, None, Action.RETRY), (500, None, Action.RETRY), (None, LOST, Action.RETRY),
     (None, REFUSED, Action.RETRY), (400, None, Action.FAIL), (401, None, Action.FAIL),
     (403, None, Action.FAIL)],
)
def test_classify_sign_in(status, exc, action) -> None:  # type: ignore[no-untyped-def]
    assert classify_sign_in(status, exc).action is action


# -- the policy ----------------------------------------------------------------------


def test_backoff_grows_caps_and_respects_the_server() -> None:
    p = RetryPolicy(jitter=0.0)
    assert [p.backoff(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert p.backoff(20) == 30.0
    assert p.backoff(1, server_wait=7.0) == 7.0  # never before the server's time
    jittered = RetryPolicy(jitter=0.5)
    for _ in range(200):
        assert 1.0 <= jittered.backoff(3) <= 2.0


def test_policy_validation_and_check_wait() -> None:
    with pytest.raises(UsageError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(UsageError):
        RetryPolicy(jitter=2.0)
    RetryPolicy(max_wait=None).check_wait(1e9)
    with pytest.raises(WaitTooLong):
        RetryPolicy(max_wait=300).check_wait(593)


@pytest.mark.anyio
async def test_test_mode_skips_waits() -> None:
    t0 = anyio.current_time()
    await RetryPolicy(waits=False).wait(100.0)
    assert anyio.current_time() == t0
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    await RetryPolicy(sleep=sleep).wait(3.0)
    assert slept == [3.0] and anyio.current_time() == t0


# -- the client under 429s (cases 1, 6, 7, 11) -----------------------------------------


@pytest.mark.anyio
async def test_case1_a_429_waits_retries_and_counts() -> None:
    sent: list[float] = []

    def handler(req: Request) -> Response:
        sent.append(anyio.current_time())
        return throttled("13s") if len(sent) == 1 else Response.from_json(200, CRED)

    async with client_for(handler) as client:
        cred = await client.get_credential("11262")
        assert cred.id == "11262"
        stats = client.stats()
    assert sent[1] - sent[0] >= 13.0
    assert stats.throttled == 1 and stats.retries == 1 and stats.pauses == 1
    assert stats.responses == {200: 1, 429: 1}
    assert stats.requests == {"read": 2, "write": 0}
    assert stats.paused_seconds == pytest.approx(13.2, abs=0.01)


@pytest.mark.anyio
async def test_a_429_without_retry_after_waits_one_window() -> None:
    sent: list[float] = []

    def handler(req: Request) -> Response:
        sent.append(anyio.current_time())
        return throttled(None) if len(sent) == 1 else Response(204)

    async with client_for(handler) as client:
        await client.delete_credential("1")
    assert sent[1] - sent[0] == pytest.approx(10.0 + 0.2, abs=0.01)  # write window + margin


@pytest.mark.anyio
async def test_case6_a_wait_longer_than_max_wait_stops_resumably() -> None:
    sent: list[float] = []
    told: list[tuple[str, float]] = []

    def handler(req: Request) -> Response:
        sent.append(anyio.current_time())
        return throttled("593s")

    async with client_for(handler, retry=RetryPolicy(max_wait=300)) as client:
        client.on_pause(lambda cls, s: told.append((cls, s)))
        with pytest.raises(WaitTooLong) as info:
            await client.update_credential(
                Credential.from_wire(CRED), CredentialSecret(password=Secret("pw"))
            )
        # the rest of the class is held back too, and fails just as fast
        with pytest.raises(WaitTooLong):
            await client.delete_credential("2")
        assert client.limiter.paused_for("write") == pytest.approx(593.2)
    err = info.value
    assert err.wait == 593.0 and err.status == 429 and err.method == "PUT"
    assert "593" in str(err) and "max_wait" in str(err)
    assert len(sent) == 1
    assert told == [("write", pytest.approx(593.2))]


@pytest.mark.anyio
@pytest.mark.parametrize("rtt", [0.05, 2.0])  # 2 s: several requests in flight meet the 429
async def test_case7_concurrent_callers_wait_for_the_server_and_restart_paced(rtt: float) -> None:
    received: list[float] = []
    state = {"blocked_until": -math.inf, "first_429": None}
    learned: list[float] = []

    async def handler(req: Request) -> Response:
        now = anyio.current_time()
        received.append(now)
        await anyio.sleep(rtt)
        if len(received) > 3 and state["blocked_until"] == -math.inf:
            state["blocked_until"] = now + 13.0
        if now < state["blocked_until"]:
            learned.append(anyio.current_time())
            return throttled(f"{math.ceil(state['blocked_until'] - now)}s")
        return Response.from_json(200, CRED)

    async with client_for(handler) as client:
        results: list[str] = []

        async def caller() -> None:
            results.append((await client.get_credential("11262")).id)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(caller)
        stats = client.stats()
    assert len(results) == 20  # nothing lost
    first_429_seen = min(learned)
    after = sorted(t for t in received if t > first_429_seen)
    assert after and all(t >= state["blocked_until"] for t in after)
    gaps = [b - a for a, b in zip(after, after[1:])]
    assert min(gaps) >= 0.51 - 1e-9  # paced restart, no stampede
    assert stats.throttled == len(learned) >= (1 if rtt < 0.5 else 3)
    assert stats.pauses == 1  # the later 429s extended the one pause


@pytest.mark.anyio
async def test_case11_pauses_are_not_bounded_by_a_retry_count() -> None:
    calls = 0

    def handler(req: Request) -> Response:
        nonlocal calls
        calls += 1
        return throttled("1s") if calls <= 30 else Response(204)

    async with client_for(handler, retry=RetryPolicy(max_attempts=2, jitter=0.0)) as client:
        await client.delete_credential("1")
        assert client.stats().throttled == 30


@pytest.mark.anyio
async def test_503_with_a_hint_pauses_like_a_429_even_for_post() -> None:
    sent: list[float] = []

    def handler(req: Request) -> Response:
        sent.append(anyio.current_time())
        if len(sent) == 1:
            return Response.from_json(503, {"id": "retryable.server.error"}, {"Retry-After": "10s"})
        return Response(204)

    async with client_for(handler) as client:
        await client.move_credential("1", source_microtenant_id="0", target_microtenant_id="5")
        assert client.stats().throttled == 0 and client.stats().pauses == 1
    assert sent[1] - sent[0] >= 10.0


# -- backoff retries -----------------------------------------------------------------


@pytest.mark.anyio
async def test_get_5xx_backs_off_then_gives_up_after_max_attempts() -> None:
    sent: list[float] = []

    def handler(req: Request) -> Response:
        sent.append(anyio.current_time())
        return Response.from_json(500, {"id": "internal.error", "reason": "boom"})

    async with client_for(handler, retry=RetryPolicy(max_attempts=4, jitter=0.0)) as client:
        with pytest.raises(ServerError, match="boom") as info:
            await client.get_credential("1")
    assert len(sent) == 4
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert gaps == pytest.approx([0.51, 1.0, 2.0])  # 0.5 s backoff, but the pace is 0.51 s
    assert info.value.status == 500 and info.value.error_id == "internal.error"


@pytest.mark.anyio
async def test_backoff_never_goes_before_a_server_retry_after() -> None:
    sent: list[float] = []

    def handler(req: Request) -> Response:
        sent.append(anyio.current_time())
        if len(sent) == 1:
            return Response.from_json(500, {}, {"retry-after": "7s"})
        return Response.from_json(200, CRED)

    async with client_for(handler) as client:
        await client.get_credential("1")
    assert sent[1] - sent[0] >= 7.0


@pytest.mark.anyio
async def test_concurrency_conflicts_are_retried_for_any_method() -> None:
    answers = [
        Response.from_json(409, {"id": "api.concurrent.access.error", "reason": "Try again"}),
        Response.from_json(400, {"id": "db.simultaneous.request"}),
        Response(204),
    ]
    async with client_for(lambda req: answers.pop(0)) as client:
        await client.move_credential("1", source_microtenant_id="5", target_microtenant_id="0")
        assert client.stats().retries == 2
    assert not answers


@pytest.mark.anyio
async def test_other_conflicts_and_bad_requests_fail_at_once() -> None:
    answers = [
        Response.from_json(409, {"id": "resource.already.exist", "reason": "exists"}),
        Response.from_json(400, {"id": "invalid.input", "reason": "bad name"}),
    ]
    async with client_for(lambda req: answers.pop(0)) as client:
        with pytest.raises(Conflict):
            await client.delete_credential("1")
        with pytest.raises(BadRequest, match="bad name"):
            await client.delete_credential("1")
        assert client.stats().retries == 0


@pytest.mark.anyio
async def test_post_5xx_is_an_unknown_outcome() -> None:
    calls = 0

    def handler(req: Request) -> Response:
        nonlocal calls
        calls += 1
        return Response.from_json(502, {"reason": "bad gateway"})

    async with client_for(handler) as client:
        with pytest.raises(OutcomeUnknown) as info:
            await client.move_credential("1", source_microtenant_id="5", target_microtenant_id="0")
    assert calls == 1
    assert info.value.status == 502 and info.value.method == "POST"


@pytest.mark.anyio
async def test_deadline_bounds_the_retrying() -> None:
    calls = 0

    def handler(req: Request) -> Response:
        nonlocal calls
        calls += 1
        return throttled("4s")

    t0 = anyio.current_time()
    async with client_for(handler, retry=RetryPolicy(deadline=10.0)) as client:
        with pytest.raises(RateLimited):
            await client.get_credential("1")
    assert anyio.current_time() - t0 <= 10.0 + 0.3
    assert calls == 3  # at 0, ~4.2, ~8.4: a fourth would end past the deadline
