"""Export: every credential's metadata as an import-compatible CSV (RFC 4180 in UTF-8 with
a BOM, secret columns present and empty), read back by the CSV reader that import uses."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from bulkcred.csvio import read_csv
from bulkcred.jobs.common import JobContext
from bulkcred.jobs.export import ExportOptions, export
from bulkcred.sim import SimServer
from bulkcred.sim.tenant import Credential as SimCredential

from .conftest import cli_env, make_client, run_cli, sim_config

#: the import columns as cli.md gives them (the contract, written here independently)
IMPORT_COLUMNS = ("name", "credentialType", "userName", "password", "privateKey",
                  "privateKeyFile", "passphrase", "userDomain", "description", "microtenantId")
SECRET_COLUMNS = ("password", "privateKey", "privateKeyFile", "passphrase")
AWKWARD = [
    ('quote "this", please', "line one\nline two, with a comma"),
    ("trailing space ", '=cmd|"/c calc"!A1'),  # written as data, read back as data
    ("ünïcode · ключ", "tab\there; semicolon;"),
]


def _add_awkward(tenant: object) -> None:
    creds = []
    for name, description in AWKWARD:
        creds.append(SimCredential(
            id=tenant.allocate_id(), name=name, credential_type="USERNAME_PASSWORD",  # type: ignore[attr-defined]
            microtenant_id=0, secret_sha256="0", creation_time=1, reset_time=1,
            modified_by="1", user_name="svc", user_domain="corp.example.com",
            description=description))
    tenant.load_credentials(creds)  # type: ignore[attr-defined]


def _expected(tenant: object) -> dict[tuple[str, str], dict[str, str]]:
    out = {}
    for c in tenant.credentials.values():  # type: ignore[attr-defined]
        out[(c.name, str(c.microtenant_id))] = {
            "name": c.name, "credentialType": c.credential_type, "userName": c.user_name or "",
            "userDomain": c.user_domain or "", "description": c.description or "",
            "microtenantId": str(c.microtenant_id)}
    return out


def _read_back(path: Path) -> list[dict[str, str]]:
    header, rows = read_csv(path, allowed=frozenset(IMPORT_COLUMNS))
    assert tuple(header) == IMPORT_COLUMNS
    return [{h: r.values.get(h, "") for h in header} for r in rows]


@pytest.mark.anyio
@pytest.mark.parametrize("escape", [False, True], ids=["plain", "entity-encoded"])
async def test_export_round_trips_through_the_import_reader(tmp_path: Path, escape: bool) -> None:
    # entity-encoded: the server returns names as "&#x2d;"; the file holds what the
    # portal shows, which is what an import must send
    async with SimServer(sim_config(credentials=700, microtenants=3, seed=5,
                                    faults="escape=1" if escape else "")) as s:
        _add_awkward(s.state)
        out = tmp_path / "export.csv"
        async with make_client(s.url) as client:
            ctx = JobContext(client=client, base_url=s.url, customer_id="216196257331281920")
            result = await export(ctx, ExportOptions(output=out))
        want = _expected(s.state)
    rows = _read_back(out)
    assert result.rows == len(rows) == len(want) == 713
    got = {(r["name"], r["microtenantId"]): r for r in rows}
    assert len(got) == len(rows)  # each credential once
    for key, exp in want.items():
        row = got[key]
        assert all(row[c] == "" for c in SECRET_COLUMNS), key
        assert {k: row[k] for k in exp} == exp, key
    raw = out.read_bytes()
    # the BOM tells Excel the file is UTF-8 (it garbles "ünïcode · ключ" without one)
    assert raw.startswith(b"\xef\xbb\xbf" + ",".join(IMPORT_COLUMNS).encode() + b"\r\n")
    assert raw.count(b"\xef\xbb\xbf") == 1
    # written as data, not defused for a spreadsheet: import must get the text back as is
    assert "'=cmd" not in raw.decode("utf-8-sig")
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_export_one_microtenant_with_a_selection(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(credentials=120, microtenants=2, seed=2)
    out = tmp_path / "e.csv"
    out.write_text("old contents\n")
    mt = "145260601092866314"
    proc = run_cli(["export", "--output", str(out), "--microtenant", mt,
                    "--select", "type=SSH_KEY"], cli_env(s.url))
    assert proc.returncode == 0, proc.stderr
    rows = _read_back(out)
    want = {c.name for c in s.state.credentials.values()
            if str(c.microtenant_id) == mt and c.credential_type == "SSH_KEY"}
    assert {r["name"] for r in rows} == want and want
    assert f"exported {len(want)} credentials" in proc.stdout
    assert all(r["microtenantId"] == mt and r["credentialType"] == "SSH_KEY" for r in rows)
    stats = run_cli(["export", "--output", str(tmp_path / "x.csv"), "--microtenant", "5"],
                    cli_env(s.url))
    assert stats.returncode == 2 and not (tmp_path / "x.csv").exists()


def test_cli_export_help_says_the_file_is_data_not_for_spreadsheet_formulas() -> None:
    proc = run_cli(["export", "--help"], {})
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "data for import, not for a spreadsheet's formulas" in text
    assert "UTF-8 with a BOM" in text



def test_export_edit_import_moves_credentials_between_tenants(sim_thread, tmp_path: Path
                                                             ) -> None:
    """Export from one tenant, fill in the secrets, import into another: the second
    tenant ends with the same credentials (cli.md's migration path between tenants)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    source = sim_thread(credentials=60, microtenants=2, seed=31)
    target = sim_thread(credentials=0, microtenants=2, seed=31, examples=False)
    exported = tmp_path / "a.csv"
    proc = run_cli(["export", "--output", str(exported)], cli_env(source.url))
    assert proc.returncode == 0, proc.stderr
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    (tmp_path / "key.pem").write_text(key)
    header, records = read_csv(exported, allowed=frozenset(IMPORT_COLUMNS))
    edited = io.StringIO(newline="")
    w = csv.DictWriter(edited, fieldnames=header, lineterminator="\r\n")
    w.writeheader()
    for n, rec in enumerate(records):
        row = {h: rec.values.get(h, "") for h in header}
        if row["credentialType"] == "SSH_KEY":
            row["privateKeyFile"] = "key.pem"
        else:
            row["password"] = f"Imported-Passw0rd-{n:04d}"
        w.writerow(row)
    filled = tmp_path / "b.csv"
    # with a BOM, as the export wrote it and as Excel's "CSV UTF-8" saves it
    filled.write_text(edited.getvalue(), encoding="utf-8-sig", newline="")
    imp = run_cli(["import", str(filled), "--journal", str(tmp_path / "i.journal"), "--yes"],
                  cli_env(target.url))
    assert imp.returncode == 0, imp.stdout + imp.stderr

    def metadata(sim: object) -> set[tuple[object, ...]]:
        return {(c.name, c.credential_type, c.user_name, c.user_domain, c.description,
                 c.microtenant_id) for c in sim.state.credentials.values()}  # type: ignore[attr-defined]

    assert metadata(target) == metadata(source) and len(metadata(source)) == 70
