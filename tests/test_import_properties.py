"""Property: what write_import_csv writes, the import reader reads back identically, cell
for cell (commas, quotes, CR/LF, unicode, leading and trailing spaces, NULs)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkcred.csvio import read_csv
from bulkcred.jobs.importcsv import IMPORT_COLUMNS, load_import_csv, write_import_csv
from bulkcred.models import normalize_name

# any text a UTF-8 file can hold (lone surrogates cannot be encoded)
ANY = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
TRICKY = st.sampled_from([",", '"', "\r", "\n", "\r\n", " ", "\ufeff", "é", "名", "\x00", "''"])
CELL = st.lists(st.one_of(ANY, TRICKY), max_size=4).map("".join)
# text the validator takes in a name, description or password: no control characters
PRINTABLE = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Zl", "Zp")),
                    min_size=1, max_size=40)


def _some_cell_shows(row: dict[str, str]) -> bool:
    # a record whose every cell is blank reads as a blank line, which the reader skips
    return any(v.strip() for v in row.values())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries({c: CELL for c in IMPORT_COLUMNS})
                .filter(_some_cell_shows), max_size=6))
def test_any_cells_read_back_identically(rows: list[dict[str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_import_csv(rows, Path(tmp) / "x.csv")
        header, records = read_csv(path, allowed=frozenset(IMPORT_COLUMNS))
        back = list(records)
    assert header == list(IMPORT_COLUMNS)
    assert [r.values for r in back] == [{k: v for k, v in r.items() if v} for r in rows]
    assert all(r.error is None for r in back)


_NAME = PRINTABLE.map(str.strip).filter(bool)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_NAME, PRINTABLE, st.one_of(st.none(), PRINTABLE)), max_size=6,
                unique_by=lambda t: normalize_name(t[0])))
def test_valid_rows_load_as_written(data: list[tuple[str, str, str | None]]) -> None:
    rows = [{"name": n, "credentialType": "PASSWORD", "password": pw, "description": d}
            for n, pw, d in data]
    with tempfile.TemporaryDirectory() as tmp:
        source = load_import_csv(write_import_csv(rows, Path(tmp) / "x.csv"))
    expect = [(n, pw if pw.strip() else None, d if d and d.strip() else None)
              for n, pw, d in data]
    got = [(r.credential.name, r.secret.password.reveal(), r.credential.description)
           for r in source.rows]
    assert got == [e for e in expect if e[1] is not None]
    assert len(source.rows) + len(source.rejects) == len(rows)
