"""Per-item completion reports (CSV or JSON) and status summaries, from a journal.

A report never holds a secret: it is built from the journal, which never holds one.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterator

import orjson

from .journal import JournalState

__all__ = ["REPORT_COLUMNS", "report_rows", "render_report", "status_text", "write_report"]

REPORT_COLUMNS = ("id", "name", "microtenantId", "credentialType", "status", "http",
                  "errorId", "reason", "attempts")


def report_rows(state: JournalState) -> Iterator[dict[str, Any]]:
    for key, data in state.items.items():
        item = state.states[key]
        out = item.last_outcome or {}
        status = state.status(key)
        reason = out.get("reason") if status in ("failed", "skipped", "done") else None
        if status == "uncertain":
            reason = "sent, answer not recorded: reconciled when the job is run again"
        elif status == "pending":
            reason = "not started: run the same command again to finish the job"
        yield {
            "id": data.get("id", key),
            "name": data.get("name", ""),
            "microtenantId": data.get("microtenantId", ""),
            "credentialType": data.get("credentialType", ""),
            "status": status,
            "http": out.get("http") if status not in ("pending", "uncertain") else None,
            "errorId": out.get("errorId") if status not in ("pending", "uncertain") else None,
            "reason": reason,
            "attempts": item.attempts,
        }


def render_report(state: JournalState, fmt: str = "csv") -> bytes:
    rows = list(report_rows(state))
    if fmt == "json":
        header = state.header or {}
        doc = {
            "kind": header.get("kind"),
            "tenant": header.get("tenant"),
            "counts": state.counts(),
            "items": rows,
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(REPORT_COLUMNS), lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue().encode("utf-8")


def write_report(state: JournalState, path: Path, fmt: str | None = None) -> Path:
    if fmt is None:
        fmt = "json" if path.suffix.lower() == ".json" else "csv"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(render_report(state, fmt))
    tmp.replace(path)
    return path


def status_text(state: JournalState, path: Path) -> str:
    header = state.header or {}
    tenant = header.get("tenant") or {}
    counts = state.counts()
    total = len(state.items)
    lines = [
        f"journal:   {path}",
        f"job:       {header.get('kind', '?')} (bulkcred {header.get('version', '?')})",
        f"tenant:    {tenant.get('customerId', '?')} at {tenant.get('baseUrl', '?')}",
        f"planned:   {'yes, ' + str(total) + ' items' if state.planned else 'no (not yet)'}",
    ]
    for status in ("done", "failed", "skipped", "uncertain", "pending"):
        if counts.get(status):
            lines.append(f"{status + ':':<10} {counts[status]}")
    finished = [e for e in state.events if e.get("name") == "finished"]
    remaining = counts.get("pending", 0) + counts.get("uncertain", 0)
    if not state.planned:
        lines.append("next:      the job stopped before its plan was written; nothing was"
                     " changed: run the same command again to start it")
    elif remaining:
        lines.append(f"next:      {remaining} items left; run the same command again to resume")
    elif counts.get("failed"):
        lines.append("next:      " + _after_failures(header.get("kind")))
    elif finished:
        lines.append("next:      nothing; the job is complete")
    else:
        lines.append("next:      every item is done but the final check did not finish: run"
                     " the same command again to verify")
    return "\n".join(lines)


def _after_failures(kind: object) -> str:
    if kind == "import":
        # a refused row cannot be sent again under the same plan: the CSV is the plan
        return ("some rows failed; `bulkcred report` says why. Fix those rows and import"
                " them with a new --journal (--on-existing skip leaves the rows already"
                " created alone)")
    return ("some items failed; `bulkcred report` says why. Once fixed, run the same"
            " command with --retry-failed")
