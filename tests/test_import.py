"""``bulkcred import`` against the simulator: creates, --on-existing each way, lost
answers, resume, refusals; and the helpers the other import tests share."""

from __future__ import annotations

import functools
import hashlib
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from bulkcred.errors import UsageError
from bulkcred.jobs.common import JobContext, list_scope, resolve_microtenants
from bulkcred.jobs.importcsv import (
    ImportOptions,
    import_credentials,
    load_import_csv,
    write_import_csv,
)
from bulkcred.journal import Journal, replay
from bulkcred.sim import SimServer

from .conftest import cli_env, make_client, run_cli, sim_config, sim_get, sim_post

pytestmark = pytest.mark.anyio

CID = "216196257331281920"
SCOPE_C = "145260601092866314"
SCOPE_D = "145260601092866315"
PASSPHRASE = "correct horse battery"


# --------------------------------------------------------------------- shared helpers


@functools.cache
def key_pool() -> tuple[str, ...]:
    """RSA 2048 PKCS#8 keys, made once per session (ZPA takes one key in many credentials)."""
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]
    return tuple(k.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
                 for k in keys)


@functools.cache
def encrypted_key() -> str:
    """A passphrase-protected RSA 2048 key (PASSPHRASE)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                             BestAvailableEncryption(PASSPHRASE.encode())).decode()


def key_files(folder: Path) -> list[str]:
    """The pool written as key files in ``folder``; returns their names (relative)."""
    names = []
    for i, pem in enumerate(key_pool()):
        (folder / "keys").mkdir(exist_ok=True)
        (folder / "keys" / f"k{i}.pem").write_text(pem)
        names.append(f"keys/k{i}.pem")
    return names


def valid_rows(n: int, *, prefix: str = "imp", microtenants: tuple[str | None, ...] = (None,),
               key_names: list[str] | None = None, start: int = 0) -> list[dict[str, str]]:
    """``n`` valid rows: the three types in turn, SSH keys inline and (given key files)
    from files, spread over ``microtenants`` (None: the cell is empty)."""
    keys = key_pool()
    rows = []
    for i in range(start, start + n):
        mt = microtenants[i % len(microtenants)]
        row = {"name": f"{prefix}-{i:05d}", "microtenantId": mt or ""}
        kind = i % 3
        if kind == 0:
            row.update(credentialType="USERNAME_PASSWORD", userName=f"user{i}",
                       password=f"Pw-{i:05d}-{hashlib.sha256(str(i).encode()).hexdigest()[:12]}",
                       userDomain="corp.example.com", description=f"row {i}, imported")
        elif kind == 1:
            row.update(credentialType="SSH_KEY", userName="root")
            if key_names and i % 2:
                row["privateKeyFile"] = key_names[i % len(key_names)]
            else:
                row["privateKey"] = keys[i % len(keys)]
        else:
            row.update(credentialType="PASSWORD", password=f"vnc-{i:05d}-secret")
        rows.append(row)
    return rows


def row_secrets(rows: list[dict[str, str]]) -> list[str]:
    out = []
    for r in rows:
        for col in ("password", "passphrase"):
            if r.get(col):
                out.append(r[col])
        if r.get("privateKey"):
            out += [ln for ln in r["privateKey"].splitlines() if len(ln) > 16]
    return out


async def tenant_names(url: str) -> dict[tuple[str, str], int]:
    """(microtenant, name) -> how many credentials carry it, through the API."""
    counts: dict[tuple[str, str], int] = {}
    async with make_client(url) as client:
        for mt in await resolve_microtenants(client, None):
            async for cred in list_scope(client, mt):
                key = (cred.scope, cred.name)
                counts[key] = counts.get(key, 0) + 1
    return counts


def expected_names(rows: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(r.get("microtenantId") or "0", r["name"]) for r in rows}


async def writes_seen(url: str) -> int:
    return (await sim_get(url, "/_sim/stats"))["requests"]["write"]


def options(tmp: Path, **kw: Any) -> ImportOptions:
    kw.setdefault("csv", tmp / "in.csv")
    kw.setdefault("journal", tmp / "import.journal")
    kw.setdefault("report", tmp / "import.journal.report.csv")
    return ImportOptions(**kw)


async def run_import(url: str, o: ImportOptions, *, concurrency: int | None = None,
                     **kw: Any) -> Any:
    source = load_import_csv(o.csv, microtenant=o.microtenant)
    async with make_client(url) as client:
        ctx = JobContext(client=client, base_url=url, customer_id=CID, concurrency=concurrency)
        return await import_credentials(ctx, o, source, **kw)


@pytest.fixture
async def empty_sim() -> AsyncIterator[SimServer]:
    """A tenant with microtenants Scope C and Scope D and no credentials."""
    async with SimServer(sim_config(microtenants=2, seed=1, examples=False)) as s:
        yield s


# ------------------------------------------------------------------------------ tests


async def test_creates_every_row_once_with_its_fields(empty_sim: SimServer, tmp_path: Path
                                                      ) -> None:
    rows = valid_rows(30, microtenants=(None, "0", SCOPE_C), key_names=key_files(tmp_path))
    write_import_csv(rows, tmp_path / "in.csv")
    result = await run_import(empty_sim.url, options(tmp_path))
    assert result.ok and result.created == 30 and result.total == 30
    names = await tenant_names(empty_sim.url)
    assert names == {k: 1 for k in expected_names(rows)}
    held = {c["name"]: c for c in await sim_get(empty_sim.url, "/_sim/credentials")}
    for r in rows:
        c = held[r["name"]]
        assert c["credentialType"] == r["credentialType"]
        assert c["userName"] == (r.get("userName") or None)
        secret = r.get("password") or r.get("privateKey") \
            or (tmp_path / r["privateKeyFile"]).read_text()
        assert c["secretSha256"] == hashlib.sha256(secret.encode()).hexdigest()
    log = await sim_get(empty_sim.url, "/_sim/requests")
    posts = [e for e in log if e["method"] == "POST" and e["path"].endswith("/credential")]
    assert len(posts) == 30
    # ?microtenantId= when the row has one (0 included, case 13); nothing when it has none
    queries = sorted(e["query"] for e in posts)
    assert queries.count("") == 10
    assert queries.count("microtenantId=0") == 10
    assert queries.count(f"microtenantId={SCOPE_C}") == 10
    journal = (tmp_path / "import.journal").read_text()
    report = (tmp_path / "import.journal.report.csv").read_text()
    for secret in row_secrets(rows):
        assert secret not in journal and secret not in report
    assert report.count("created as id") == 30


async def test_on_existing_fail_names_the_rows_and_sends_nothing(empty_sim: SimServer,
                                                                 tmp_path: Path) -> None:
    rows = valid_rows(6)
    write_import_csv(rows[:2], tmp_path / "first.csv")
    await run_import(empty_sim.url, options(tmp_path, csv=tmp_path / "first.csv",
                                            journal=tmp_path / "first.journal"))
    await sim_post(empty_sim.url, "/_sim/stats/reset")
    write_import_csv(rows, tmp_path / "in.csv")
    with pytest.raises(UsageError) as err:
        await run_import(empty_sim.url, options(tmp_path))
    text = str(err.value)
    assert "2 rows name credentials that exist already" in text
    assert "line 2 'imp-00000'" in text and "line 3 'imp-00001'" in text
    assert "--on-existing skip" in text
    assert await writes_seen(empty_sim.url) == 0
    assert not (tmp_path / "import.journal").exists()


async def test_on_existing_skip_leaves_them_as_they_are(empty_sim: SimServer, tmp_path: Path
                                                        ) -> None:
    rows = valid_rows(6)
    write_import_csv(rows[:3], tmp_path / "first.csv")
    await run_import(empty_sim.url, options(tmp_path, csv=tmp_path / "first.csv",
                                            journal=tmp_path / "first.journal"))
    before = {c["name"]: c for c in await sim_get(empty_sim.url, "/_sim/credentials")}
    for r in rows:  # new secrets: a skip must not send them
        if r.get("password"):
            r["password"] += "-new"
    write_import_csv(rows, tmp_path / "in.csv")
    result = await run_import(empty_sim.url, options(tmp_path, on_existing="skip"))
    assert result.ok and (result.created, result.skipped) == (3, 3)
    after = {c["name"]: c for c in await sim_get(empty_sim.url, "/_sim/credentials")}
    for name, c in before.items():
        assert after[name]["secretSha256"] == c["secretSha256"] and after[name]["puts"] == 0
    assert await tenant_names(empty_sim.url) == {k: 1 for k in expected_names(rows)}
    state = replay(tmp_path / "import.journal")
    assert state.counts()["skipped"] == 3


async def test_on_existing_update_puts_the_full_object(empty_sim: SimServer, tmp_path: Path
                                                       ) -> None:
    first = [{"name": "web-1", "credentialType": "USERNAME_PASSWORD", "userName": "old",
              "password": "old-password-1", "userDomain": "old.example.com",
              "description": "kept: the second file has no description column"},
             {"name": "vnc-1", "credentialType": "PASSWORD", "password": "old-password-2"}]
    write_import_csv(first, tmp_path / "first.csv")
    await run_import(empty_sim.url, options(tmp_path, csv=tmp_path / "first.csv",
                                            journal=tmp_path / "first.journal"))
    second = [{"name": "WEB-1", "credentialType": "USERNAME_PASSWORD", "userName": "new",
               "password": "new-password-1", "userDomain": ""},
              {"name": "vnc-1", "credentialType": "USERNAME_PASSWORD", "userName": "x",
               "password": "new-password-2"},
              {"name": "new-1", "credentialType": "PASSWORD", "password": "new-password-3"}]
    write_import_csv(second, tmp_path / "in.csv",
                     columns=["name", "credentialType", "userName", "password", "userDomain"])
    # a type change is an invalid row: refused without --skip-invalid, before any write
    await sim_post(empty_sim.url, "/_sim/stats/reset")
    with pytest.raises(UsageError, match=r"line 3, column 'credentialType': a credential"
                                         r" named 'vnc-1' exists .* as a PASSWORD"):
        await run_import(empty_sim.url, options(tmp_path, on_existing="update"))
    assert await writes_seen(empty_sim.url) == 0
    result = await run_import(empty_sim.url, options(tmp_path, on_existing="update",
                                                     skip_invalid=True,
                                                     reject_file=tmp_path / "rejects.csv"))
    assert (result.created, result.updated, result.rejected) == (1, 1, 1)
    assert not result.ok
    async with make_client(empty_sim.url) as client:
        web = [c async for c in client.iter_credentials() if c.display_name == "WEB-1"]
    assert len(web) == 1
    assert web[0].user_name == "new" and web[0].user_domain is None  # an empty cell clears
    assert web[0].description == first[0]["description"]  # an absent column keeps
    held = {c["name"]: c for c in await sim_get(empty_sim.url, "/_sim/credentials")}
    assert held["WEB-1"]["secretSha256"] == hashlib.sha256(b"new-password-1").hexdigest()
    assert held["vnc-1"]["secretSha256"] == hashlib.sha256(b"old-password-2").hexdigest()
    rejects = (tmp_path / "rejects.csv").read_text()
    assert rejects.startswith("line,reason,name,")
    assert "3,a credential named 'vnc-1'" in rejects.replace('"', "")
    assert "new-password-2" not in rejects and "********" in rejects


async def test_lost_answers_are_found_by_name_never_created_twice(tmp_path: Path) -> None:
    rows = valid_rows(120, microtenants=(None, SCOPE_C))
    write_import_csv(rows, tmp_path / "in.csv")
    async with SimServer(sim_config(microtenants=2, seed=4, examples=False,
                                    faults="lost=0.2,seed=4")) as s:
        result = await run_import(s.url, options(tmp_path))
        stats = await sim_get(s.url, "/_sim/stats")
        assert await tenant_names(s.url) == {k: 1 for k in expected_names(rows)}
    assert result.ok and result.created == 120
    lost = stats["faultsInjected"]["lost"]
    assert lost >= 10
    # a lost create is looked up, found and adopted: it is never POSTed again
    assert stats["requests"]["write"] == 120
    report = (tmp_path / "import.journal.report.csv").read_text()
    assert report.count("found by name, not sent again") == lost


class Crash(BaseException):
    """Stands for the process dying: nothing in bulkcred may catch it."""


async def test_uncertain_create_is_adopted_on_resume(empty_sim: SimServer, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rows = valid_rows(9)
    write_import_csv(rows, tmp_path / "in.csv")
    real_outcome = Journal.outcome
    calls = 0

    async def outcome(self: Journal, *a: Any, **kw: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise Crash  # the POST was answered; its outcome never reached the journal
        await real_outcome(self, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(Journal, "outcome", outcome)
        with pytest.raises(Crash):
            await run_import(empty_sim.url, options(tmp_path), concurrency=1)
    state = replay(tmp_path / "import.journal")
    assert state.counts() == {"pending": 5, "uncertain": 1, "done": 3, "failed": 0,
                              "skipped": 0}
    writes = await writes_seen(empty_sim.url)
    assert writes == 4
    result = await run_import(empty_sim.url, options(tmp_path))
    assert result.ok and result.created == 9 and result.resumed
    assert await tenant_names(empty_sim.url) == {k: 1 for k in expected_names(rows)}
    assert await writes_seen(empty_sim.url) == writes + 5  # the uncertain one is not re-sent
    state = replay(tmp_path / "import.journal")
    adopted = [k for k, st in state.states.items()
               if (st.last_outcome or {}).get("data", {}).get("adopted")]
    assert adopted == [list(state.items)[3]]  # the fourth row, whose outcome was lost


def create_via_api(url: str, body: dict[str, str]) -> None:
    """Create a credential as another admin would (blocking; for a simulator in a thread)."""
    form = urllib.parse.urlencode({"client_id": "sim-client", "client_secret": "sim-secret"})
    with urllib.request.urlopen(f"{url}/signin", data=form.encode()) as r:
        token = orjson.loads(r.read())["access_token"]
    req = urllib.request.Request(
        f"{url}/mgmtconfig/v1/admin/customers/{CID}/credential", data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 201


async def test_server_refusal_fails_the_row_and_the_job_goes_on(tmp_path: Path) -> None:
    rows = valid_rows(6)
    write_import_csv(rows, tmp_path / "in.csv")
    with SimServer.in_thread(sim_config(microtenants=2, seed=1, examples=False)) as s:

        def confirm(plan: Any, writes: int) -> bool:
            # another admin creates one of the names between the plan and the apply
            create_via_api(s.url, {"name": "imp-00002", "credentialType": "PASSWORD",
                                   "password": "someone-else"})
            return True

        result = await run_import(s.url, options(tmp_path), confirm=confirm)
        names = await tenant_names(s.url)
    assert (result.created, result.failed, result.ok) == (5, 1, False)
    state = replay(tmp_path / "import.journal")
    failed = [st.last_outcome for st in state.states.values() if st.status == "failed"]
    assert len(failed) == 1 and failed[0]["key"] == list(state.items)[2]
    assert failed[0]["errorId"] == "resource.already.exist" and failed[0]["http"] == 400
    assert "already exists" in failed[0]["reason"]
    assert names == {k: 1 for k in expected_names(rows)}


async def test_a_changed_csv_is_refused_on_resume(empty_sim: SimServer, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    rows = valid_rows(6, key_names=key_files(tmp_path))
    write_import_csv(rows, tmp_path / "in.csv")

    async def outcome(self: Journal, *a: Any, **kw: Any) -> None:
        raise Crash

    with monkeypatch.context() as m:
        m.setattr(Journal, "outcome", outcome)
        with pytest.raises(Crash):
            await run_import(empty_sim.url, options(tmp_path), concurrency=1)
    header = replay(tmp_path / "import.journal").header
    assert header is not None and len(header["fingerprintSalt"]) == 32
    original = (tmp_path / "in.csv").read_bytes()
    # a corrected password, or a key file swapped, changes what a resume would send
    rows[0]["password"] += "!"
    write_import_csv(rows, tmp_path / "in.csv")
    with pytest.raises(UsageError, match="has changed since the job"):
        await run_import(empty_sim.url, options(tmp_path))
    (tmp_path / "in.csv").write_bytes(original)
    (tmp_path / "keys" / "k1.pem").write_text(key_pool()[0])
    with pytest.raises(UsageError, match="has changed since the job"):
        await run_import(empty_sim.url, options(tmp_path))
    (tmp_path / "keys" / "k1.pem").write_text(key_pool()[1])
    result = await run_import(empty_sim.url, options(tmp_path))
    assert result.ok and result.created == 6
    # the fingerprint is no plain hash of the file: the journal holds nothing to test
    # a guessed secret against cheaply
    assert hashlib.sha256(original).hexdigest() not in (tmp_path / "import.journal").read_text()


async def test_declined_prompt_and_unknown_microtenant(empty_sim: SimServer, tmp_path: Path
                                                       ) -> None:
    rows = valid_rows(4, microtenants=(None, "999"))
    write_import_csv(rows, tmp_path / "in.csv")
    with pytest.raises(UsageError, match=r"line 3, column 'microtenantId': microtenant 999"
                                         r" does not exist in this tenant; give one of 0"
                                         r" \(Default\), 145260601092866314 \(Scope C\)"):
        await run_import(empty_sim.url, options(tmp_path))
    asked: list[tuple[Any, int]] = []
    result = await run_import(empty_sim.url, options(tmp_path, skip_invalid=True),
                              confirm=lambda plan, n: bool(asked.append((plan, n))))
    assert result is None and asked[0][1] == 2
    assert [i.line for i in asked[0][0].of("reject")] == [3, 33]  # row 4 has a PEM cell
    assert not (tmp_path / "import.journal").exists()
    assert await writes_seen(empty_sim.url) == 0


def test_cli_dry_run_then_import_and_no_secret_anywhere(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(microtenants=2, seed=5, examples=False, faults="lost=0.1,seed=5")
    env = cli_env(s.url)
    rows = valid_rows(24, microtenants=(None, SCOPE_C), key_names=key_files(tmp_path))
    bad = [{"name": "bad-1", "credentialType": "PASSWORD", "password": "secret-of-bad-1",
            "userName": "nobody"},
           {"name": "bad-2", "credentialType": "SSH_KEY", "userName": "root",
            "privateKey": key_pool()[1], "passphrase": "needless-phrase"}]
    write_import_csv(rows[:12] + bad + rows[12:], tmp_path / "in.csv")
    csv_ = str(tmp_path / "in.csv")
    journal = tmp_path / "import.journal"
    dry = run_cli(["import", csv_, "--journal", str(journal), "--dry-run"], env)
    assert dry.returncode == 2, dry.stderr  # the real run would refuse the file
    assert "24 to create, 0 to update, 0 to skip, 2 rejected" in dry.stdout
    assert "column 'userName': userName is not a field of PASSWORD" in dry.stdout
    assert "column 'passphrase'" in dry.stdout and "nothing was sent." in dry.stdout
    assert "--skip-invalid" in dry.stderr
    dry_ok = run_cli(["import", csv_, "--journal", str(journal), "--dry-run",
                      "--skip-invalid"], env)
    assert dry_ok.returncode == 0, dry_ok.stderr
    assert not journal.exists()
    refused = run_cli(["import", csv_, "--journal", str(journal), "--yes"], env)
    assert refused.returncode == 2 and "2 invalid rows; nothing was sent" in refused.stderr
    stats = orjson.loads(urllib.request.urlopen(s.url + "/_sim/stats").read())
    assert stats["requests"]["write"] == 0

    done = run_cli(["import", csv_, "--journal", str(journal), "--yes", "--skip-invalid",
                    "--log-format", "json", "-vv"], env)
    assert done.returncode == 1, done.stderr  # two rows rejected
    assert "24 created, 0 updated, 0 skipped, 2 rejected, 0 failed" in done.stdout
    again = run_cli(["import", csv_, "--journal", str(journal), "--yes", "--skip-invalid"], env)
    assert again.returncode == 1 and "(resumed)" in again.stdout
    assert "24 created" in again.stdout
    status = run_cli(["status", str(journal)], env)
    rejects = tmp_path / "import.journal.rejects.csv"
    outputs = "\n".join([dry.stdout, dry.stderr, dry_ok.stdout, refused.stderr, done.stdout,
                         done.stderr, again.stdout, again.stderr, status.stdout,
                         journal.read_text(), rejects.read_text(),
                         (tmp_path / "import.journal.report.csv").read_text()])
    for secret in row_secrets(rows + bad) + ["sim-secret"]:
        assert secret not in outputs
    assert oct(rejects.stat().st_mode & 0o777) == "0o600"
    assert rejects.read_text().count("********") == 3  # password, key and passphrase
    assert anyio.run(tenant_names, s.url) == {k: 1 for k in expected_names(rows)}
    # the same file again, as a new job: every name exists now, and fail is the default
    exists = run_cli(["import", csv_, "--journal", str(tmp_path / "second.journal"),
                      "--dry-run", "--skip-invalid"], env)
    assert exists.returncode == 2
    assert "24 rows name existing credentials: --on-existing fail" in exists.stdout
    assert f"dry run: {csv_}, 26 rows\n" in exists.stdout  # the refused rows are rows too
    assert "24 rows name credentials that exist already" in exists.stderr
    assert "line 2 'imp-00000' (id " in exists.stderr


async def test_microtenant_option_places_rows_without_one(empty_sim: SimServer, tmp_path: Path
                                                          ) -> None:
    rows = valid_rows(6, microtenants=(None, "0"))
    write_import_csv(rows, tmp_path / "in.csv")
    with pytest.raises(UsageError, match="--microtenant 42 does not exist in this tenant"):
        await run_import(empty_sim.url, options(tmp_path, microtenant="42"))
    result = await run_import(empty_sim.url, options(tmp_path, microtenant=SCOPE_D))
    assert result.ok and result.created == 6
    names = await tenant_names(empty_sim.url)
    assert names == {((SCOPE_D if not r["microtenantId"] else "0"), r["name"]): 1 for r in rows}


def test_counts_agree_with_their_nouns_and_lines_are_named() -> None:
    from bulkcred.text import listed, plural

    assert [plural(n, "row") for n in (0, 1, 2)] == ["0 rows", "1 row", "2 rows"]
    assert plural(1, "row names", "rows name") == "1 row names"
    assert plural(3, "row names", "rows name") == "3 rows name"
    assert listed("line", [4]) == "line 4"
    assert listed("line", [4, 9, 12]) == "lines 4, 9 and 12"
    assert listed("line", range(2, 10)) == "lines 2, 3, 4, 5, 6 and 3 more"


def test_cli_plan_wording_counts_and_the_offline_microtenant_note(sim_thread, tmp_path: Path
                                                                   ) -> None:
    s = sim_thread(microtenants=2, seed=5, examples=False)
    env = cli_env(s.url)
    create_via_api(s.url, {"name": "taken", "credentialType": "PASSWORD",
                           "password": "someone-else"})
    pw = {"credentialType": "PASSWORD", "password": "a-good-password"}
    write_import_csv([{"name": "taken", **pw},  # line 2: exists (--on-existing fail)
                      {"name": "bad-1", "userName": "nobody", **pw},  # line 3: invalid
                      {"name": "web ok", **pw},  # line 4: outside the portal's set
                      {"name": "elsewhere", "microtenantId": "999", **pw}],  # line 5
                     tmp_path / "in.csv")
    csv_, journal = str(tmp_path / "in.csv"), str(tmp_path / "import.journal")

    offline = run_cli(["import", csv_, "--journal", journal, "--yes"], env)
    assert offline.returncode == 2
    assert f"{csv_}: 1 invalid row; nothing was sent:" in offline.stderr
    # the 999 row is refused only online: the offline list says so
    assert ("Microtenant ids are checked against the tenant only once the file is otherwise"
            " valid (1 valid row goes outside Default); --dry-run checks them now."
            in offline.stderr)

    dry = run_cli(["import", csv_, "--journal", journal, "--dry-run"], env)
    assert dry.returncode == 2
    assert f"dry run: {csv_}, 4 rows\n" in dry.stdout  # the existing name's row counts too
    assert ("1 to create, 0 to update, 0 to skip, 2 rejected; 1 row names an existing"
            " credential: --on-existing fail" in dry.stdout)
    assert "the 1 write takes at least" in dry.stdout
    assert "1 name uses characters outside the admin portal's set" in dry.stdout
    assert "(letters, digits, . - _), on line 4: the API takes them" in dry.stdout
    assert "line 5, column 'microtenantId': microtenant 999 does not exist" in dry.stdout
    assert "the import would send nothing: 2 invalid rows (listed above)" in dry.stderr
    assert "1 row names credentials that exist already" in dry.stderr
    assert not (tmp_path / "import.journal").exists()


async def test_progress_counts_rejects_skips_and_earlier_failures(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    import io

    from bulkcred.progress import JobProgress

    bad = {"name": "bad-1", "credentialType": "PASSWORD", "userName": "nobody",
           "password": "secret-of-bad-1"}
    write_import_csv([bad] + valid_rows(6), tmp_path / "in.csv")
    real_outcome = Journal.outcome
    calls = 0

    async def outcome(self: Journal, *a: Any, **kw: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise Crash  # imp-00003 was created; its outcome never reached the journal
        await real_outcome(self, *a, **kw)

    def confirm(plan: Any, writes: int) -> bool:
        # another admin takes imp-00002's name between the plan and the apply
        create_via_api(s.url, {"name": "imp-00002", "credentialType": "PASSWORD",
                               "password": "someone-else"})
        return True

    def progress() -> tuple[JobProgress, io.StringIO]:
        out = io.StringIO()
        return JobProgress("import", per_item_seconds=lambda: 0.0, stream=out, interval=0), out

    o = options(tmp_path, skip_invalid=True, on_existing="skip")
    with SimServer.in_thread(sim_config(microtenants=2, seed=1, examples=False)) as s:
        create_via_api(s.url, {"name": "imp-00005", "credentialType": "PASSWORD",
                               "password": "someone-else"})  # skipped
        first, out = progress()
        with monkeypatch.context() as m:
            m.setattr(Journal, "outcome", outcome)
            with pytest.raises(Crash):
                await run_import(s.url, o, concurrency=1, confirm=confirm, progress=first)
        lines = out.getvalue().splitlines()
        # rejects are not failures: the first line counted a rejected row as failed
        assert lines[0].startswith("import: 0/7 (0 failed), ETA")
        assert lines[1].startswith("import: 1/7 (0 failed, 1 rejected), ETA")
        assert lines[-1].startswith("import: 4/7 (1 failed, 1 rejected), ETA")

        again, out = progress()
        result = await run_import(s.url, o, progress=again)
    lines = out.getvalue().splitlines()
    # the resume starts from what the journal holds: the earlier failure is still one
    assert lines[0].startswith("import: 4/7 (1 failed, 1 rejected), ETA")
    assert lines[-1] == "import: 7/7 (1 failed, 1 rejected, 1 skipped), ETA 0:00"
    assert (result.created, result.failed, result.rejected, result.skipped) == (4, 1, 1, 1)
