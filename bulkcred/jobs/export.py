"""Export: every credential's metadata as a CSV that ``bulkcred import`` reads back
(secret columns present and empty), written row by row as the pages arrive.

The file is data for import, not for a spreadsheet's formulas: cells are written as
they are (a name may start with ``=``), so that the round trip changes nothing.
"""

from __future__ import annotations

import csv
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..models import Credential, Microtenant
from .audit import ReadProgress, covered_microtenants, read_tenant
from .common import JobContext
from .importcsv import IMPORT_COLUMNS
from .select import Selection

__all__ = ["ExportOptions", "ExportResult", "export", "export_row"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportOptions:
    output: Path
    microtenant: str | None = None
    selection: Selection = field(default_factory=Selection)


@dataclass(frozen=True, slots=True)
class ExportResult:
    output: Path
    rows: int
    by_microtenant: dict[str, int]


def export_row(cred: Credential) -> list[str]:
    """A credential as a row of :data:`IMPORT_COLUMNS`. ZPA may return text
    entity-encoded and import sends what it reads, so names and descriptions are written
    as the portal shows them; the secret cells stay empty, ZPA returns no secret."""
    cells = {
        "name": cred.display_name,
        "credentialType": cred.credential_type.value,
        "userName": cred.user_name or "",
        "userDomain": cred.user_domain or "",
        "description": html.unescape(cred.description) if cred.description else "",
        "microtenantId": cred.scope,
    }
    return [cells.get(col, "") for col in IMPORT_COLUMNS]


async def export(ctx: JobContext, opts: ExportOptions, *,
                 progress: ReadProgress | None = None) -> ExportResult:
    """Write the CSV to a temporary file beside ``output`` and rename it into place once
    every page is in, so an interrupted export never leaves a partial file behind."""
    _, covered = await covered_microtenants(ctx.client, opts.microtenant)
    out = opts.output
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    counts = {m.name: 0 for m in covered}
    try:
        # with a BOM: without one Excel reads the file as ANSI and garbles non-ASCII
        # names; import (csvio) reads either
        with open(tmp, "w", encoding="utf-8-sig", newline="") as f:
            w = csv.writer(f, lineterminator="\r\n")  # RFC 4180
            w.writerow(IMPORT_COLUMNS)

            def consume(mt: Microtenant, cred: Credential) -> None:
                if opts.selection.matches(cred):
                    w.writerow(export_row(cred))
                    counts[mt.name] += 1

            await read_tenant(ctx.client, covered, consume, progress=progress)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(output=out, rows=sum(counts.values()), by_microtenant=counts)
