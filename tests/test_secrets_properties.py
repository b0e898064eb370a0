"""Property tests: the sink's last line wins after any truncation; redaction leaves nothing."""

from __future__ import annotations

import base64
import hashlib
import tempfile
import textwrap
from pathlib import Path

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkcred.models import CredentialSecret, Secret
from bulkcred.secrets import MASK, Redactor, SecretSink, read_sink

# "*" is left out: a secret made of the mask's own character would show in any mask
secret_text = st.text(st.characters(blacklist_characters="*", blacklist_categories=("Cs",)),
                      min_size=1, max_size=40)
ids = st.sampled_from(["1", "22", "333", "4444"])


def cred(i: str) -> dict[str, str]:
    return {"id": i, "name": f"name {i}", "microtenantId": "0",
            "credentialType": "USERNAME_PASSWORD", "userName": "u"}


async def write_sink(p: Path, writes: list[tuple[str, str]]) -> None:
    async with await SecretSink.open(p) as sink:
        for i, value in writes:
            await sink.append(cred(i), CredentialSecret(password=Secret(value)))


async def reopen_and_append(p: Path, expect: dict[str, CredentialSecret]) -> None:
    async with await SecretSink.open(p) as sink:
        assert sink.last_secrets() == expect
        await sink.append(cred("1"), CredentialSecret(password=Secret("after")))


# sync tests around anyio.run: hypothesis draws stay outside the event loop
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(writes=st.lists(st.tuples(ids, secret_text), min_size=1, max_size=12),
       raw_cut=st.integers(0, 1 << 20))
def test_last_line_wins_after_truncation(writes: list[tuple[str, str]], raw_cut: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "secrets.jsonl"
        anyio.run(write_sink, p, writes)
        full = p.read_bytes()
        ends = [k + 1 for k, b in enumerate(full) if b == ord("\n")]
        assert len(ends) == len(writes)
        cut = raw_cut % (len(full) + 1)
        p.write_bytes(full[:cut])

        # a line cut just before its newline is still complete JSON: it counts
        complete = sum(1 for e in ends if e - 1 <= cut)
        want: dict[str, CredentialSecret] = {}
        for i, value in writes[:complete]:
            want[i] = CredentialSecret(password=Secret(value))
        assert read_sink(p) == want

        anyio.run(reopen_and_append, p, want)
        want["1"] = CredentialSecret(password=Secret("after"))
        assert read_sink(p) == want


@settings(max_examples=300, deadline=None)
@given(secrets=st.lists(secret_text, min_size=1, max_size=6),
       pieces=st.lists(st.one_of(st.text(max_size=20), st.integers(0, 5)), max_size=10))
def test_redaction_leaves_no_secret(secrets: list[str], pieces: list[str | int]) -> None:
    r = Redactor(secrets)
    text = "".join(secrets[p % len(secrets)] if isinstance(p, int) else p for p in pieces)
    out = r.redact(text)
    for s in secrets:
        assert s not in out
    if any(s in text for s in secrets):
        assert MASK in out and r.found_in(text) and r.found_in(text.encode())
    else:
        assert out == text and not r.found_in(text)


@settings(max_examples=100, deadline=None)
@given(seed=st.binary(max_size=8), size=st.integers(1, 400), line=st.integers(0, 20),
       around=st.tuples(st.text(max_size=10), st.text(max_size=10)))
def test_no_line_or_body_of_a_pem_survives(seed: bytes, size: int, line: int,
                                           around: tuple[str, str]) -> None:
    # a uniform size: hypothesis's own binary() rarely grows past one 64-character line
    b64 = base64.b64encode(hashlib.shake_256(seed).digest(size)).decode()
    lines = textwrap.wrap(b64, 64)
    pem = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END PRIVATE KEY-----\n"
    r = Redactor([Secret(pem)])
    one = lines[line % len(lines)]
    # the whole key, one line of it, its body unwrapped, and the key inside a JSON string
    for leaked in (pem, one, b64, pem.replace("\n", "\\n")):
        out = r.redact(around[0] + leaked + around[1])
        assert one not in out and b64 not in out
