"""Secrets: generation, private key checks, the secrets file, redaction and masking."""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import string
import threading
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

import bulkcred.secrets as secrets_mod
from bulkcred.errors import SecretSinkError
from bulkcred.models import CredentialSecret, Secret
from bulkcred.secrets import (
    MASK,
    PASSWORD_ALPHABET,
    SECRET_FIELDS,
    RedactingFilter,
    Redactor,
    SecretSink,
    agenerate_ssh_key,
    generate_password,
    generate_ssh_key,
    mask_mapping,
    public_key_openssh,
    read_sink,
    validate_private_key,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ------------------------------------------------------------------ generation

def test_passwords_have_every_class_and_no_quoting_characters() -> None:
    seen = set()
    for _ in range(300):
        pw = generate_password()
        value = pw.reveal()
        assert len(value) == 32 and len(pw) == 32
        assert set(value) <= set(PASSWORD_ALPHABET)
        assert any(c.islower() for c in value) and any(c.isupper() for c in value)
        assert any(c.isdigit() for c in value) and any(c in "!#%*+-=?@^_" for c in value)
        seen.add(value)
    assert len(seen) == 300
    assert not set("\"'`\\$&; ") & set(PASSWORD_ALPHABET)
    assert set(PASSWORD_ALPHABET) == set(string.ascii_letters + string.digits + "!#%*+-=?@^_")
    assert "*" not in repr(generate_password()).replace("********", "")


def test_password_length() -> None:
    assert len(generate_password(4).reveal()) == 4
    assert len(generate_password(64).reveal()) == 64
    with pytest.raises(ValueError):
        generate_password(3)


def _check_rsa_2048_pkcs8(pem: Secret, public: str) -> None:
    text = pem.reveal()
    assert text.startswith("-----BEGIN PRIVATE KEY-----\n")
    assert text.rstrip().endswith("-----END PRIVATE KEY-----")
    key = ser.load_pem_private_key(text.encode(), None)  # unencrypted
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert public.startswith("ssh-rsa AAAA")
    mine = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
    assert public == mine.decode()
    assert ser.load_ssh_public_key(public.encode()).public_numbers() == \
        key.public_key().public_numbers()
    assert validate_private_key(text, None) is None
    assert public_key_openssh(text) == public


def test_ssh_key_is_rsa_2048_pkcs8_with_matching_public_key() -> None:
    pem, public = generate_ssh_key()
    assert "BEGIN" not in repr(pem) and "BEGIN" not in str(pem)
    _check_rsa_2048_pkcs8(pem, public)


@pytest.mark.anyio
async def test_ssh_key_in_a_worker_thread() -> None:
    pem, public = await agenerate_ssh_key()
    _check_rsa_2048_pkcs8(pem, public)


# ------------------------------------------------------------------ private key checks

def _pem(key: Any, fmt: ser.PrivateFormat = ser.PrivateFormat.PKCS8,
         passphrase: bytes | None = None) -> str:
    enc = ser.BestAvailableEncryption(passphrase) if passphrase else ser.NoEncryption()
    return key.private_bytes(ser.Encoding.PEM, fmt, enc).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_keys_zpa_takes(rsa_key: rsa.RSAPrivateKey) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    good = [
        (_pem(rsa_key), None),
        (_pem(rsa_key, ser.PrivateFormat.TraditionalOpenSSL), None),
        (_pem(rsa_key, ser.PrivateFormat.OpenSSH), None),
        (_pem(rsa_key, passphrase=b"open sesame"), "open sesame"),
        (_pem(rsa_key, ser.PrivateFormat.TraditionalOpenSSL, b"pw"), "pw"),
        (_pem(small), None),
        (_pem(ec.generate_private_key(ec.SECP256R1())), None),
        (_pem(ec.generate_private_key(ec.SECP384R1()), ser.PrivateFormat.TraditionalOpenSSL),
         None),
        (_pem(ed25519.Ed25519PrivateKey.generate()), None),
        (_pem(ed25519.Ed25519PrivateKey.generate(), ser.PrivateFormat.OpenSSH), None),
        ("\n  " + _pem(rsa_key) + "\n\n", None),
        (_pem(rsa_key), ""),  # an empty passphrase is no passphrase
    ]
    for pem, phrase in good:
        assert validate_private_key(pem, phrase) is None, pem[:40]
        assert public_key_openssh(pem, phrase).startswith(("ssh-", "ecdsa-"))


def test_keys_zpa_refuses_and_why(rsa_key: rsa.RSAPrivateKey) -> None:
    big = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    public = rsa_key.public_key()
    cases = [
        (_pem(big), None, "3072 bits"),
        (_pem(rsa_key, passphrase=b"pw"), None, "encrypted and no passphrase"),
        (_pem(rsa_key, passphrase=b"pw"), "Xq-9z!", "passphrase is wrong"),
        (_pem(rsa_key, ser.PrivateFormat.TraditionalOpenSSL, b"pw"), "Xq-9z!",
         "passphrase is wrong"),
        (_pem(rsa_key), "pw", "not encrypted"),
        (_pem(ec.generate_private_key(ec.SECP256K1())), None, "secp256k1"),
        (_pem(dsa.generate_private_key(2048)), None, "DSA"),
        (public.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo).decode(),
         None, "public key"),
        (public.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode(), None,
         "public key"),
        ("", None, "empty"),
        ("hunter2", None, "not a PEM or OpenSSH"),
        (_pem(rsa_key)[:300] + "\n-----END PRIVATE KEY-----\n", None, "cannot be read"),
    ]
    for pem, phrase, why in cases:
        reason = validate_private_key(pem, phrase)
        assert reason is not None and why in reason, (why, reason)
        body = [ln for ln in pem.splitlines() if ln and not ln.startswith("-----")]
        assert not any(ln in reason for ln in body if len(ln) > 8), reason
        if phrase:
            assert phrase not in reason
        with pytest.raises(ValueError, match=re.escape(reason)):
            public_key_openssh(pem, phrase)


def test_encrypted_openssh_key(rsa_key: rsa.RSAPrivateKey) -> None:
    try:
        import bcrypt  # noqa: F401  (cryptography needs it for OpenSSH key encryption)
    except ImportError:
        # no way to make such a key here either; check the message for a user who has one
        pytest.skip("bcrypt is not installed")
    pem = _pem(rsa_key, ser.PrivateFormat.OpenSSH, b"pw")
    assert validate_private_key(pem, "pw") is None
    assert "passphrase is wrong" in (validate_private_key(pem, "bad") or "")
    assert "no passphrase" in (validate_private_key(pem, None) or "")


def test_encrypted_openssh_key_without_bcrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.exceptions import UnsupportedAlgorithm

    def needs_bcrypt(data: bytes, password: bytes | None) -> Any:
        raise UnsupportedAlgorithm("Need bcrypt module")

    monkeypatch.setattr(secrets_mod, "load_ssh_private_key", needs_bcrypt)
    pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHI=\n" \
          "-----END OPENSSH PRIVATE KEY-----\n"
    assert "bcrypt" in (validate_private_key(pem, "pw") or "")


# ------------------------------------------------------------------ the sink

RECORD = {"id": "11262", "name": "db-1", "microtenantId": "0",
          "credentialType": "USERNAME_PASSWORD", "userName": "admin", "description": "x"}


def pw(value: str) -> CredentialSecret:
    return CredentialSecret(password=Secret(value))


@pytest.mark.anyio
async def test_sink_lines_are_exact_and_last_wins(tmp_path: Path) -> None:
    p = tmp_path / "secrets.jsonl"
    pem, public = generate_ssh_key()
    key_rec = {"id": "259", "name": "ssh-1", "microtenantId": "145260601092866314",
               "credentialType": "SSH_KEY", "userName": "root"}
    async with await SecretSink.open(p) as sink:
        await sink.append(RECORD, pw("first"))
        await sink.append({**key_rec, "jobId": "j1"},
                          CredentialSecret(private_key=pem, passphrase=Secret("ph")),
                          public_key=public)
        await sink.append(RECORD, pw("second"))
        last = sink.last_secrets()
        records = sink.last_records()
    lines = [orjson.loads(line) for line in p.read_bytes().splitlines()]
    assert list(lines[0]) == ["id", "name", "microtenantId", "credentialType", "userName",
                              "password", "rotatedAt"]
    assert lines[0]["password"] == "first" and "description" not in lines[0]
    assert list(lines[1]) == ["id", "name", "microtenantId", "credentialType", "userName",
                              "jobId", "privateKey", "passphrase", "publicKey", "rotatedAt"]
    assert records == {"11262": ("", pw("second")), "259": ("j1", last["259"])}
    assert lines[1]["privateKey"] == pem.reveal() and lines[1]["publicKey"] == public
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", lines[2]["rotatedAt"])
    assert last == read_sink(p)
    assert last["11262"] == pw("second")
    assert last["259"].private_key == pem and last["259"].passphrase == Secret("ph")


@pytest.mark.anyio
async def test_a_password_credential_without_user_name(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    async with await SecretSink.open(p) as sink:
        await sink.append({"id": "7", "name": "vnc", "microtenantId": "0",
                           "credentialType": "PASSWORD"}, pw("v"))
    line = orjson.loads(p.read_bytes())
    assert line["userName"] is None and line["password"] == "v"


@pytest.mark.anyio
async def test_sink_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    old = os.umask(0)
    try:
        async with await SecretSink.open(p) as sink:
            await sink.append(RECORD, pw("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


@pytest.mark.anyio
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
async def test_sink_refuses_a_file_others_can_read(tmp_path: Path, mode: int) -> None:
    p = tmp_path / "s.jsonl"
    p.write_bytes(b"")
    p.chmod(mode)
    with pytest.raises(SecretSinkError) as info:
        await SecretSink.open(p)
    msg = str(info.value)
    assert f"{mode:04o}" in msg and "chmod 600" in msg and str(p) in msg
    assert stat.S_IMODE(p.stat().st_mode) == mode


@pytest.mark.anyio
async def test_sink_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"")
    target.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(SecretSinkError, match="symbolic link"):
        await SecretSink.open(link)
    with pytest.raises(SecretSinkError, match="not a regular file"):
        await SecretSink.open(tmp_path)
    with pytest.raises(SecretSinkError, match="does not exist"):
        await SecretSink.open(tmp_path / "nope" / "s.jsonl")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with anyio.fail_after(5):  # a FIFO with no reader must not hang the open
        with pytest.raises(SecretSinkError, match="not a regular file"):
            await SecretSink.open(fifo)


@pytest.mark.anyio
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file away")
async def test_sink_refuses_another_users_file(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    p.write_bytes(b"")
    p.chmod(0o600)
    os.chown(p, 4242, 4242)
    with pytest.raises(SecretSinkError, match="uid 4242"):
        await SecretSink.open(p)


@pytest.mark.anyio
async def test_sink_refuses_a_file_that_is_not_a_sink(tmp_path: Path) -> None:
    p = tmp_path / "id_rsa"
    pem = _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    for content in (pem.encode(), b"hello"):
        p.write_bytes(content)
        p.chmod(0o600)
        with pytest.raises(SecretSinkError, match="not a"):
            await SecretSink.open(p)
        assert p.read_bytes() == content


@pytest.mark.anyio
async def test_sink_is_locked(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    async with await SecretSink.open(p):
        with pytest.raises(SecretSinkError, match="another bulkcred process"):
            await SecretSink.open(p)
    async with await SecretSink.open(p):
        pass


@pytest.mark.anyio
async def test_sink_repairs_its_tail_on_open(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    async with await SecretSink.open(p) as sink:
        await sink.append(RECORD, pw("kept"))
    good = p.read_bytes()
    p.write_bytes(good + b'{"id":"11262","name":"db-1","microtenantId":"0","credentialT')
    assert read_sink(p)["11262"] == pw("kept")
    async with await SecretSink.open(p) as sink:
        assert p.read_bytes() == good  # the torn line was never fsynced, so never used
        await sink.append({**RECORD, "id": "9"}, pw("next"))
    assert read_sink(p) == {"11262": pw("kept"), "9": pw("next")}

    # a hand edit that dropped the final newline keeps its record
    p.write_bytes(good.rstrip(b"\n"))
    assert read_sink(p)["11262"] == pw("kept")
    async with await SecretSink.open(p) as sink:
        await sink.append({**RECORD, "id": "9"}, pw("again"))
    assert read_sink(p) == {"11262": pw("kept"), "9": pw("again")}


def test_damaged_middle_line_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    p.write_bytes(b'{"id":"1","password":"a"}\nnot json\n{"id":"1","password":"b"}\n')
    with pytest.raises(SecretSinkError, match="line 2"):
        read_sink(p)
    p.write_bytes(b'{"id":"1","password":"a"}\n{"id":"2"}\n')
    with pytest.raises(SecretSinkError, match="line 2"):
        read_sink(p)
    with pytest.raises(SecretSinkError, match="cannot read"):
        read_sink(tmp_path / "missing")


@pytest.mark.anyio
async def test_append_fsyncs_before_returning(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "s.jsonl"
    events: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    async with await SecretSink.open(p) as sink:
        monkeypatch.setattr(secrets_mod.os, "fsync", fsync)
        await sink.append(RECORD, pw("x"))
        events.append("returned")
    assert events == ["fsync", "returned"]


@pytest.mark.anyio
async def test_a_failed_sink_write_leaves_no_half_line(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "s.jsonl"
    sink = await SecretSink.open(p)
    await sink.append(RECORD, pw("one"))
    good = p.read_bytes()

    def half(fd: int, data: bytes) -> None:
        os.write(fd, data[:10])
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(secrets_mod, "_write_all", half)
    with pytest.raises(SecretSinkError, match="was not changed in ZPA"):
        await sink.append(RECORD, pw("two"))
    monkeypatch.undo()
    assert p.read_bytes() == good
    with pytest.raises(SecretSinkError, match="stopped accepting"):
        await sink.append(RECORD, pw("three"))
    await sink.aclose()
    await sink.aclose()
    with pytest.raises(SecretSinkError, match="closed"):
        sink.last_secrets()


@pytest.mark.anyio
async def test_sink_feeds_the_redactor(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    async with await SecretSink.open(p) as sink:
        await sink.append(RECORD, pw("Written-0nce!"))
    r = Redactor()
    async with await SecretSink.open(p, redactor=r) as sink:
        assert r.redact("Written-0nce!") == "Written-0nce!"
        sink.last_secrets()  # reading back on resume teaches it the secrets read
        assert r.redact("Written-0nce!") == MASK
        await sink.append(RECORD, pw("Fresh-1"))
        assert r.redact("Fresh-1") == MASK


# ------------------------------------------------------------------ redaction

def test_redact_longest_first_and_overlaps() -> None:
    r = Redactor(["abc", "abcdefghij", "hijklmnop"])
    assert r.redact("xx abcdefghijklmnop yy") == "xx ******** yy"
    assert r.redact("abc abcd") == "******** ********d"
    assert r.redact("nothing here") == "nothing here"
    assert Redactor().redact("abc") == "abc"


def test_redact_knows_json_escaped_forms_and_secret_objects() -> None:
    r = Redactor()
    r.add(Secret('we"ird\\pass'), None, CredentialSecret(password=Secret("p1-x")))
    logged = orjson.dumps({"password": 'we"ird\\pass', "other": "p1-x"}).decode()
    out = r.redact(logged)
    assert "ird" not in out and "p1-x" not in out
    assert r.found_in(logged.encode()) and not r.found_in(b"clean")


def test_redact_every_line_and_the_body_of_a_pem() -> None:
    pem, _ = generate_ssh_key()
    text = pem.reveal()
    r = Redactor([pem])
    body = [ln for ln in text.splitlines() if not ln.startswith("-----")]
    for ln in body:
        assert ln not in r.redact(f"key line: {ln} end")
    assert body[5][10:40] not in r.redact("".join(body))
    escaped = orjson.dumps(text).decode()  # as a JSON log shows it
    assert not any(ln in r.redact(escaped) for ln in body)
    assert r.redact(text) == MASK
    assert not any(ln in r.redact(text.replace("\n", "\r\n")) for ln in body)


def test_redactor_is_thread_safe() -> None:
    r = Redactor()
    values = [f"secret-{i:04d}-xyz" for i in range(400)]
    errors: list[BaseException] = []

    def adder() -> None:
        for v in values:
            r.add(v)

    def reader() -> None:
        try:
            for v in values:
                out = r.redact(f"a {v} b")
                assert out in (f"a {v} b", f"a {MASK} b")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=adder)] + [threading.Thread(target=reader)
                                                  for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(r.redact(v) == MASK for v in values)


def test_redactor_scales_to_a_big_job() -> None:
    r = Redactor(generate_password().reveal() for _ in range(5000))
    mine = generate_password().reveal()
    r.add(mine)
    import time

    start = time.perf_counter()
    for _ in range(100):
        out = r.redact(f"PUT /credential/11262 failed for {mine}: HTTP 400 " * 3)
    assert mine not in out
    assert time.perf_counter() - start < 1.0


def _logger(redactor: Redactor) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s %(extra_field)s"))
    handler.addFilter(RedactingFilter(redactor))
    log = logging.getLogger(f"test.redact.{id(stream)}")
    log.propagate = False
    log.addHandler(handler)
    return log, stream


def test_logging_filter_scrubs_messages_args_tracebacks_and_extras() -> None:
    r = Redactor(["Sup3r-Secret!"])
    log, stream = _logger(r)
    log.warning("rotating %s with %r", "db-1", "Sup3r-Secret!",
                extra={"extra_field": {"password": "other", "note": "Sup3r-Secret!"}})
    try:
        raise RuntimeError("server echoed Sup3r-Secret!")
    except RuntimeError:
        log.exception("failed %s", "db-1", extra={"extra_field": "Sup3r-Secret!"})
    log.error("bad format %d", "Sup3r-Secret!", extra={"extra_field": ""})
    out = stream.getvalue()
    assert "Sup3r" not in out and "other" not in out
    assert "rotating db-1 with '********'" in out
    assert "RuntimeError: server echoed ********" in out and "Traceback" in out
    assert "bad format" in out


def test_mask_mapping_masks_every_secret_field_at_any_depth() -> None:
    for name in SECRET_FIELDS:
        for spelled in (name, name.upper(), name.lower()):
            d = {spelled: "s3cret", "nested": {"list": [{spelled: {"deep": 1}}]}, "keep": 1}
            out = mask_mapping(d)
            assert out[spelled] == MASK and out["nested"]["list"][0][spelled] == MASK
            assert out["keep"] == 1
            assert d[spelled] == "s3cret"  # a copy; the input is untouched
    assert {"password", "privateKey", "passphrase", "client_secret", "clientSecret",
            "access_token", "client_assertion"} == SECRET_FIELDS
    assert mask_mapping({"password": None}) == {"password": None}
    r = Redactor(["in-text-secret"])
    assert mask_mapping({"reason": "got in-text-secret"}, redactor=r) == {
        "reason": f"got {MASK}"}


def test_blank_lines_in_a_hand_edited_sink_are_skipped(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    p.write_bytes(b'{"id":"1","password":"a"}\n\n{"id":"1","password":"b"}\n\n')
    assert read_sink(p) == {"1": pw("b")}


@pytest.mark.anyio
async def test_a_void_line_withdraws_only_its_jobs_secrets(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    async with await SecretSink.open(p) as sink:
        await sink.append({**RECORD, "jobId": "old"}, pw("from-last-month"))
        await sink.append({**RECORD, "jobId": "new"}, pw("refused-by-zpa"))
        await sink.void({**RECORD, "jobId": "new"}, "refused by ZPA: HTTP 400")
        assert sink.last_records()[RECORD["id"]][0] == "old"
    assert read_sink(p)[RECORD["id"]].password.reveal() == "from-last-month"
    assert "refused-by-zpa" not in p.read_text().splitlines()[-1]
