"""Reading users' CSV files: UTF-8 with or without BOM, CRLF or LF, quoted multi-line cells.

Every row comes with the line number it starts on, so every error can name it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import InputError

__all__ = ["CsvRow", "read_csv"]


@dataclass(frozen=True, slots=True)
class CsvRow:
    line: int  # the physical line the record starts on (the header is line 1)
    values: dict[str, str]  # column -> cell, empty cells omitted
    raw: list[str]
    #: why the row does not fit the header (only with ``strict_rows=False``); its
    #: ``values`` are then unreliable: the cells may have shifted columns
    error: str | None = None


def read_csv(
    path: str | Path,
    *,
    allowed: frozenset[str],
    required_any: tuple[frozenset[str], ...] = (),
    data: bytes | None = None,
    strict_rows: bool = True,
) -> tuple[list[str], Iterator[CsvRow]]:
    """Open ``path`` and check its header; return the header and an iterator of rows.

    ``allowed``: the columns the file may have (unknown ones are an error, so a typo
    never silently drops a field). ``required_any``: for each set, at least one of its
    columns must be present. ``data``: the file's bytes, when the caller has read them
    already (to fingerprint exactly what is parsed). ``strict_rows=False`` yields a row
    whose cell count does not match the header with :attr:`CsvRow.error` set, instead
    of raising, so the caller can reject that row and read on.
    """
    name = str(path)
    if data is None:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read the file ({exc.strerror})", file=name) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"the file is not UTF-8 (bad byte at offset {exc.start}); save it as UTF-8",
            file=name,
            line=line,
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError("the file is empty; it needs a header row", file=name, line=1) from None
    except csv.Error as exc:
        raise _csv_error(exc, text, 1, name, "the header row is not valid CSV") from None
    header = [h.strip() for h in header]
    if not any(header):
        raise InputError("the first row must be a header naming the columns", file=name, line=1)
    delimiter = _delimiter(header, allowed)
    if delimiter is not None:
        raise InputError(
            f"the file seems to use {delimiter} as the delimiter; save it as comma-separated"
            " CSV",
            file=name,
            line=1,
        )
    seen: set[str] = set()
    for h in header:
        if not h:
            raise InputError("a header cell is empty; name every column", file=name, line=1)
        if h not in allowed:
            hint = _closest(h, allowed)
            if hint is None and not allowed.intersection(header):
                # no cell names a column: the file starts with data, not with a header
                # (no cell is quoted back: in a file without a header they are data,
                # and may be secrets)
                raise InputError(
                    "the first row must be a header naming the columns, but it names none"
                    " of them: the file seems to start with data; add a header row with the"
                    f" columns: {', '.join(sorted(allowed))}",
                    file=name,
                    line=1,
                )
            raise InputError(
                f"unknown column {h!r}"
                + (f" (did you mean {hint!r}?)" if hint else "")
                + f"; the columns are: {', '.join(sorted(allowed))}",
                file=name,
                line=1,
                column=h,
            )
        if h in seen:
            raise InputError(f"column {h!r} appears twice", file=name, line=1, column=h)
        seen.add(h)
    for group in required_any:
        if not (group & seen):
            raise InputError(
                "the header needs a column " + " or ".join(repr(g) for g in sorted(group)),
                file=name,
                line=1,
            )

    def rows() -> Iterator[CsvRow]:
        start = reader.line_num + 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise _csv_error(exc, text, start, name) from None
            line = start
            start = reader.line_num + 1
            if not cells or all(not c.strip() for c in cells):
                continue  # blank line
            values = {h: c for h, c in zip(header, cells) if c != ""}
            if len(cells) != len(header):
                error = (f"the row has {len(cells)} cells but the header has {len(header)};"
                         " quote cells that contain commas")
                if strict_rows:
                    raise InputError(error, file=name, line=line)
                yield CsvRow(line=line, values=values, raw=cells, error=error)
                continue
            yield CsvRow(line=line, values=values, raw=cells)

    return header, rows()


def _delimiter(header: list[str], allowed: frozenset[str]) -> str | None:
    """The delimiter a header seems to use instead of commas, as a message names it
    ("';'", "tabs"): a cell holds a column name next to a ';' or a tab."""
    for delimiter, called in ((";", "';'"), ("\t", "tabs")):
        if any(part.strip() in allowed for cell in header if delimiter in cell
               for part in cell.split(delimiter)):
            return called
    return None


def _csv_error(exc: csv.Error, text: str, start: int, file: str,
               what: str = "not valid CSV") -> InputError:
    """The parse error of the record that starts on line ``start``, as the user can act
    on it: the file ending inside a quoted cell names the line that cell opens on."""
    if "unexpected end of data" not in str(exc):
        return InputError(f"{what} ({exc})", file=file, line=start)
    line = _open_quote_line(text, start)
    return InputError(
        f"{what}: the quoted cell that starts on line {line} never closes (the file ends"
        " inside it); a quote is probably unclosed: close it (a quote inside a quoted"
        ' cell is written twice: "")',
        file=file,
        line=line,
    )


def _open_quote_line(text: str, start: int) -> int:
    """The line of the quote that opens the last quoted cell still open at the end of
    ``text``, reading records from line ``start`` (as the csv module splits lines)."""
    opened, quoted, cell_start, closed = start, False, True, False
    lines = io.StringIO(text, newline="").readlines()
    for number, line in enumerate(lines[start - 1:], start):
        for ch in line:
            if quoted:
                quoted, closed = ch != '"', ch == '"'
                continue
            if ch == '"' and (cell_start or closed):  # after a closing quote: a doubled one
                opened = number if cell_start else opened
                quoted = True
            cell_start, closed = ch in ",\r\n", False
    return opened


def _closest(word: str, options: frozenset[str]) -> str | None:
    import difflib

    low = {o.lower(): o for o in options}
    if word.lower() in low:
        return low[word.lower()]
    m = difflib.get_close_matches(word, list(options), n=1, cutoff=0.75)
    return m[0] if m else None
