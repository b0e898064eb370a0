"""A corpus of malformed import CSVs: each names its line, its column and what to do, and
none of them sends a single request (through the CLI: exit 2 before any connection)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from bulkcred.cli import cli
from bulkcred.errors import InputError, UsageError
from bulkcred.jobs.importcsv import IMPORT_COLUMNS, load_import_csv, write_import_csv

from .conftest import cli_env
from .test_import import PASSPHRASE, SCOPE_C, encrypted_key, key_pool, options, run_import

GOOD = {"name": "web-ok", "credentialType": "PASSWORD", "password": "a-good-password"}
UP = {"credentialType": "USERNAME_PASSWORD", "userName": "admin", "password": "pw-123456"}
SSH = {"credentialType": "SSH_KEY", "userName": "root"}


@functools.cache
def rsa_4096() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


def public_key() -> str:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(key_pool()[0].encode(), None)
    return key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


_KEYS: dict[str, Callable[[], str]] = {
    "@4096": rsa_4096, "@public": public_key, "@encrypted": encrypted_key,
    "@plain": lambda: key_pool()[0],
}


@dataclass(frozen=True)
class Case:
    build: Callable[[Path], Path]
    line: int
    column: str | None
    message: str
    #: the file as a whole is unusable (raised), rather than one row rejected
    whole_file: bool = False


def rows(*bad: dict[str, str], columns: tuple[str, ...] = IMPORT_COLUMNS,
         first: dict[str, str] | None = GOOD) -> Callable[[Path], Path]:
    """A file of a good row (line 2) and then ``bad`` (line 3 on)."""
    def build(folder: Path) -> Path:
        body = ([first] if first else []) + list(bad)
        # keys are made once, and only for the cases that need them
        body = [{k: _KEYS[v]() if v in _KEYS else v for k, v in r.items()} for r in body]
        return write_import_csv(body, folder / "in.csv", columns=columns)
    return build


def raw(data: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        (folder / "in.csv").write_bytes(data)
        return folder / "in.csv"
    return build


def with_file(name: str, content: bytes | None, row: dict[str, str]) -> Callable[[Path], Path]:
    """A key file next to the CSV (``None``: a directory of that name)."""
    def build(folder: Path) -> Path:
        target = folder / name
        if content is None:
            target.mkdir()
        else:
            target.write_bytes(content)
        return rows(row)(folder)
    return build


HEADER = ",".join(IMPORT_COLUMNS).encode()

CASES: dict[str, Case] = {
    # --- the file as a whole
    "empty-file": Case(raw(b""), 1, None, "the file is empty; it needs a header row", True),
    "no-header": Case(raw(b"web-1,PASSWORD,,secret-1,,,,,,\r\n"), 1, None,
                      "the first row must be a header naming the columns", True),
    "unknown-column": Case(raw(b"name,credentialType,usrName,password\nweb-1,PASSWORD,,pw\n"),
                           1, "usrName", "unknown column 'usrName' (did you mean 'userName'?)",
                           True),
    "column-twice": Case(raw(b"name,credentialType,password,password\n"), 1, "password",
                         "column 'password' appears twice", True),
    "no-type-column": Case(raw(b"name,password\nweb-1,pw\n"), 1, None,
                           "the header needs a column 'credentialType'", True),
    "empty-header-cell": Case(raw(b"name,,credentialType\n"), 1, None,
                              "a header cell is empty; name every column", True),
    "not-utf8": Case(raw(b"name,credentialType,password\nweb-1,PASSWORD,pw\ncaf\xe9,PASSWORD,x\n"),
                     3, None, "the file is not UTF-8", True),
    "unterminated-quote": Case(raw(b'name,credentialType,password\nweb-1,PASSWORD,pw\n'
                                   b'"web-2,PASSWORD,pw\nweb-3,PASSWORD,pw\n'), 3, None,
                               "not valid CSV: the quoted cell that starts on line 3 never"
                               " closes (the file ends inside it); a quote is probably"
                               " unclosed", True),
    # the record starts on line 3; its multi-line cell closes, the next one never does
    "unterminated-quote-later-cell": Case(raw(b'name,credentialType,description,password\n'
                                              b'web-1,PASSWORD,,pw\n'
                                              b'web-2,PASSWORD,"two\nlines","pw\n'
                                              b'web-3,PASSWORD,,pw\n'), 4, None,
                                          "the quoted cell that starts on line 4 never closes",
                                          True),
    "semicolon-delimiter": Case(raw(b"name;credentialType;password\nweb-1;PASSWORD;pw\n"), 1,
                                None, "the file seems to use ';' as the delimiter; save it as"
                                " comma-separated CSV", True),
    "tab-delimiter": Case(raw(b"name\tcredentialType\tpassword\nweb-1\tPASSWORD\tpw\n"), 1,
                          None, "the file seems to use tabs as the delimiter", True),
    # --- one row
    "wrong-cell-count": Case(raw(HEADER + b"\r\nweb-ok,PASSWORD,,pw-123456,,,,,,\r\n"
                                 b"web-2,PASSWORD,,pw,with,comma,,,,,\r\n"), 3, None,
                             "the row has 11 cells but the header has 10; quote cells that"
                             " contain commas"),
    "bad-type": Case(rows({**UP, "name": "a", "credentialType": "USERNAME_PASWORD"}), 3,
                     "credentialType", "credentialType 'USERNAME_PASWORD' is not one of"
                     " USERNAME_PASSWORD, SSH_KEY, PASSWORD"),
    "no-type": Case(rows({**UP, "name": "a", "credentialType": ""}), 3, "credentialType",
                    "the credentialType is empty"),
    "no-name": Case(rows({**UP, "name": ""}), 3, "name", "the name is empty"),
    "name-spaces": Case(rows({**UP, "name": " web-2 "}), 3, "name",
                        "the name has leading or trailing spaces"),
    "name-too-long": Case(rows({**UP, "name": "n" * 256}), 3, "name",
                          "the name has 256 characters; bulkcred takes at most 255"),
    "name-tab": Case(rows({**UP, "name": "web\t2"}), 3, "name",
                     "the name holds the control character U+0009 at position 4"),
    "name-bidi-override": Case(rows({**UP, "name": "web\u202e2"}), 3, "name",
                               "control character U+202E at position 4"),
    "description-too-long": Case(rows({**UP, "name": "a", "description": "d" * 1025}), 3,
                                 "description", "the description has 1025 characters"),
    "password-control": Case(rows({**UP, "name": "a", "password": "pass\x07word"}), 3,
                             "password", "the password holds a control character"),
    "up-no-password": Case(rows({**UP, "name": "a", "password": ""}), 3, "password",
                           "the password is empty; a USERNAME_PASSWORD credential needs one"),
    "up-blank-password": Case(rows({**UP, "name": "a", "password": "   "}), 3, "password",
                              "the password is empty"),
    "up-no-user": Case(rows({**UP, "name": "a", "userName": ""}), 3, "userName",
                       "the userName is empty; a USERNAME_PASSWORD credential needs one"),
    "no-password-column": Case(rows({"name": "a", "credentialType": "USERNAME_PASSWORD",
                                     "userName": "u"}, first=None,
                                    columns=("name", "credentialType", "userName")), 2,
                               "password", "the file has no 'password' column; add one"),
    "up-with-key": Case(rows({**UP, "name": "a", "privateKey": "x"}), 3, "privateKey",
                        "privateKey is not a field of USERNAME_PASSWORD credentials"),
    "password-with-user": Case(rows({**GOOD, "name": "a", "userName": "u"}), 3, "userName",
                               "userName is not a field of PASSWORD credentials"),
    "passphrase-on-password": Case(rows({**GOOD, "name": "a", "passphrase": "p"}), 3,
                                   "passphrase", "passphrase is not a field of PASSWORD"),
    "domain-on-ssh": Case(rows({**SSH, "name": "a", "userDomain": "corp"}), 3, "userDomain",
                          "userDomain is not a field of SSH_KEY credentials"),
    "ssh-no-key": Case(rows({**SSH, "name": "a"}), 3, "privateKey",
                       "the private key is empty; give it in privateKey"),
    "ssh-no-user": Case(rows({**SSH, "name": "a", "userName": ""}), 3, "userName",
                        "the userName is empty; a SSH_KEY credential needs one"),
    "ssh-two-keys": Case(rows({**SSH, "name": "a", "privateKey": "k", "privateKeyFile": "f"}),
                         3, "privateKeyFile", "give the key in privateKey or in"
                         " privateKeyFile, not both"),
    "ssh-rsa-4096": Case(rows({**SSH, "name": "a", "privateKey": "@4096"}), 3, "privateKey",
                         "an RSA key of 4096 bits; ZPA takes RSA keys of up to 2048 bits"),
    "ssh-garbage": Case(rows({**SSH, "name": "a", "privateKey":
                              "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n"
                              "-----END PRIVATE KEY-----"}), 3, "privateKey",
                        "the private key cannot be read"),
    "ssh-public-key": Case(rows({**SSH, "name": "a", "privateKey": "@public"}), 3,
                           "privateKey", "this is a public key; ZPA needs the private key"),
    "ssh-no-passphrase": Case(rows({**SSH, "name": "a", "privateKey": "@encrypted"}), 3,
                              "passphrase", "encrypted and no passphrase was given"),
    "ssh-wrong-passphrase": Case(rows({**SSH, "name": "a", "privateKey": "@encrypted",
                                       "passphrase": "wrong"}), 3, "passphrase",
                                 "the passphrase is wrong"),
    "ssh-needless-passphrase": Case(rows({**SSH, "name": "a", "privateKey": "@plain",
                                          "passphrase": "extra"}), 3, "passphrase",
                                    "the private key is not encrypted; leave the passphrase"
                                    " out"),
    "key-file-missing": Case(rows({**SSH, "name": "a", "privateKeyFile": "keys/nope.pem"}), 3,
                             "privateKeyFile", "nope.pem' (No such file or directory) (a"
                             " relative path is taken from the CSV's folder)"),
    "key-file-directory": Case(with_file("keydir", None, {**SSH, "name": "a",
                                                          "privateKeyFile": "keydir"}),
                               3, "privateKeyFile", "is a directory"),
    "key-file-binary": Case(with_file("k.der", b"\x30\x82\xff\xfe\x00", {
                                **SSH, "name": "a", "privateKeyFile": "k.der"}),
                            3, "privateKeyFile", "is not a PEM or OpenSSH text file"),
    "microtenant-letters": Case(rows({**UP, "name": "a", "microtenantId": "12ab"}), 3,
                                "microtenantId", "microtenantId '12ab' is not a microtenant id"),
    "microtenant-negative": Case(rows({**UP, "name": "a", "microtenantId": "-5"}), 3,
                                 "microtenantId", "'-5' is not a microtenant id"),
    "microtenant-excel": Case(rows({**UP, "name": "a", "microtenantId": "1.45261E+17"}), 3,
                              "microtenantId", "microtenantId '1.45261E+17' is not a"
                              " microtenant id: Excel turned the id into a number; format the"
                              " column as Text and re-enter it"),
    "microtenant-overflow": Case(rows({**UP, "name": "a", "microtenantId": "9" * 20}), 3,
                                 "microtenantId", "is not a microtenant id"),
    "duplicate-name-case": Case(rows({**UP, "name": "WEB-OK"}), 3, "name",
                                "the name 'WEB-OK' is used on line 2 already, in microtenant 0"),
    "duplicate-name-entity": Case(rows({**UP, "name": "a&amp;b"},
                                       first={**GOOD, "name": "a&b"}), 3, "name",
                                  "is used on line 2 already"),
    "duplicate-name-default": Case(rows({**UP, "name": "web-ok", "microtenantId": "default"}),
                                   3, "name", "is used on line 2 already, in microtenant 0"),
}



def problem(path: Path) -> InputError:
    try:
        source = load_import_csv(path)
    except InputError as exc:
        return exc
    assert len(source.rejects) == 1, source.rejects
    return source.rejects[0].error(path)


def test_the_corpus_has_twenty_distinct_faults() -> None:
    assert len(CASES) >= 20
    assert len({c.message for c in CASES.values()}) == len(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_fault_names_line_column_and_remedy(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    path = case.build(tmp_path)
    if case.whole_file:
        with pytest.raises(InputError) as caught:
            load_import_csv(path)
        err = caught.value
    else:
        err = problem(path)
    assert (err.file, err.line, err.column) == (str(path), case.line, case.column)
    assert case.message in err.message
    where = f"{path}, line {case.line}" + (f", column {case.column!r}" if case.column else "")
    assert str(err).startswith(where + ": ")


def test_valid_controls_pass(tmp_path: Path) -> None:
    """UTF-8 with BOM, CRLF, a quoted multi-line PEM, the same name in two microtenants,
    Default spelled three ways and a passphrase-protected key are all fine."""
    pem = key_pool()[0].replace("\n", "\r\n")
    text = (
        "\ufeffname,credentialType,userName,privateKey,passphrase,password,microtenantId\r\n"
        f'ssh-1,SSH_KEY,root,"{pem}",,,\r\n'
        f'ssh-1,SSH_KEY,root,"{pem}",,,{SCOPE_C}\r\n'
        f'ssh-2,ssh_key,root,"{encrypted_key()}",{PASSPHRASE},,0\r\n'
        '"vnc, the ""big"" one",PASSWORD,,,,"p,w ""q""",default\r\n'
        "\r\n"
        f"vnc-2,PASSWORD,,,,pw,0{SCOPE_C}\r\n"
    )
    (tmp_path / "in.csv").write_bytes(text.encode("utf-8"))
    source = load_import_csv(tmp_path / "in.csv")
    assert source.rejects == []
    n, e = key_pool()[0].count("\n"), encrypted_key().count("\n")  # lines in a PEM cell
    assert [r.line for r in source.rows] == [2, 3 + n, 4 + 2 * n, 5 + 2 * n + e, 7 + 2 * n + e]
    assert [r.scope for r in source.rows] == ["0", SCOPE_C, "0", "0", SCOPE_C]
    assert source.rows[0].secret.private_key.reveal() == key_pool()[0]  # LF, as keys travel
    assert source.rows[2].secret.passphrase.reveal() == PASSPHRASE
    assert source.rows[3].credential.name == 'vnc, the "big" one'
    assert source.rows[3].secret.password.reveal() == 'p,w "q"'
    assert source.rows[0].microtenant_id is None and source.rows[2].microtenant_id == "0"


def test_every_reason_is_free_of_the_files_secrets(tmp_path: Path) -> None:
    """A reason quotes cells; a cell that happens to hold another row's password is masked."""
    body = [{**UP, "name": "a", "password": "Tr0ub4dor&3-long"},
            {**UP, "name": "b", "credentialType": "Tr0ub4dor&3-long"}]
    path = write_import_csv(body, tmp_path / "in.csv")
    source = load_import_csv(path)
    assert "Tr0ub4dor" not in source.problems_text()
    assert "credentialType '********' is not one of" in source.problems_text()


@pytest.fixture
def restore_logging() -> object:
    """The CLI points bulkcred's log handler at the runner's stderr; put it back."""
    logger = logging.getLogger("bulkcred")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield None
    logger.handlers[:], logger.level, logger.propagate = saved


def test_no_corpus_file_sends_a_request(sim_thread, tmp_path: Path, restore_logging: object
                                        ) -> None:
    import urllib.request

    import orjson

    s = sim_thread(microtenants=1, seed=2)
    env = cli_env(s.url)
    runner = CliRunner()
    for name, case in sorted(CASES.items()):
        folder = tmp_path / name
        folder.mkdir()
        path = case.build(folder)
        result = runner.invoke(cli, ["import", str(path), "--journal", str(folder / "j"),
                                     "--yes"], env=env)
        assert result.exit_code == 2, (name, result.output)
        assert f"line {case.line}" in result.stderr, (name, result.stderr)
        if case.column:
            assert f"column {case.column!r}" in result.stderr, (name, result.stderr)
        assert not (folder / "j").exists()
    with urllib.request.urlopen(s.url + "/_sim/stats") as r:
        stats = orjson.loads(r.read())
    # not a request, not even a sign-in: the file was refused before any connection
    assert stats["requests"] == {"read": 0, "write": 0} and stats["signins"] == 0


@pytest.mark.anyio
async def test_library_refuses_invalid_rows_before_any_request(tmp_path: Path) -> None:
    from bulkcred.sim import SimServer

    from .conftest import sim_config, sim_get

    path = CASES["bad-type"].build(tmp_path)
    async with SimServer(sim_config(microtenants=1, seed=2)) as s:
        with pytest.raises(UsageError, match="line 3, column 'credentialType'"):
            await run_import(s.url, options(tmp_path, csv=path))
        stats = await sim_get(s.url, "/_sim/stats")
    assert stats["requests"] == {"read": 0, "write": 0}
    assert not (tmp_path / "import.journal").exists()
