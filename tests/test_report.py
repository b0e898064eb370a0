"""Reports and status texts, built from journals (never holding a secret)."""

from __future__ import annotations

from pathlib import Path

import pytest

import anyio

from bulkcred.journal import Journal, JournalState, replay
from bulkcred.report import render_report, status_text


def _state(kind: str, tmp: Path) -> JournalState:
    async def write() -> None:
        header = {"kind": kind, "spec": {}, "tenant": {"customerId": "1"}}
        async with await Journal.open(tmp / "j.journal", header=header) as j:
            await j.write_plan([("a", {"id": "1", "name": "one"}),
                                ("b", {"id": "2", "name": "two"})])
            await j.intent("a", "x")
            await j.outcome("a", "done", http=204)
            await j.intent("b", "x")
            await j.outcome("b", "failed", http=400, error_id="resource.already.exist",
                            reason="taken")

    anyio.run(write)
    return replay(tmp / "j.journal")


@pytest.mark.parametrize("kind,advice", [
    ("rotate", "--retry-failed"), ("migrate", "--retry-failed"), ("import", "new --journal"),
])
def test_status_advice_fits_the_job(kind: str, advice: str, tmp_path: Path) -> None:
    text = status_text(_state(kind, tmp_path), Path("j.journal"))
    assert advice in text
    if kind == "import":
        assert "--retry-failed" not in text


def test_report_rows_carry_the_server_reason(tmp_path: Path) -> None:
    csv = render_report(_state("rotate", tmp_path), "csv").decode()
    assert "2,two,,,failed,400,resource.already.exist,taken,1" in csv
