"""The HTML audit report opened in headless Chromium: it renders, its charts draw, its
scripts run, it reaches for no network and holds no secret, even after a rotation."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bulkcred.jobs.common import JobContext
from bulkcred.jobs.rotate import RotateOptions, rotate
from bulkcred.jobs.select import parse_selection
from bulkcred.secrets import read_sink
from bulkcred.sim.tenant import Credential as SimCredential

from .conftest import cli_env, make_client, run_cli

HOSTILE = '<img src=x onerror="document.title=1">'
SCRIPT_END = "</script><b>x</b>"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("headless Chromium is needed to check the HTML report and none is on PATH;"
                " install it (Debian: apt-get install -y chromium) — CI's .ci/run must too")


def open_in_chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
         *extra, page.as_uri()],
        capture_output=True, text=True, timeout=120)


def _add(tenant: object, name: str) -> None:
    ident = tenant.allocate_id()  # type: ignore[attr-defined]
    tenant.load_credentials([SimCredential(  # type: ignore[attr-defined]
        id=ident, name=name, credential_type="PASSWORD", microtenant_id=0, secret_sha256="0",
        creation_time=1_600_000_000, reset_time=1_600_000_000, modified_by="1")])


@pytest.mark.anyio
async def test_html_report_in_headless_chromium(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(credentials=400, microtenants=3, seed=9, policy_rules=20)
    for name in (HOSTILE, SCRIPT_END):
        _add(s.state, name)
    # rotate a few credentials first, so real secrets exist that the report must not hold
    sink = tmp_path / "secrets.jsonl"
    async with make_client(s.url) as client:
        ctx = JobContext(client=client, base_url=s.url, customer_id="216196257331281920")
        done = await rotate(ctx, RotateOptions(journal=tmp_path / "r.journal", secrets_out=sink,
                                               selection=parse_selection(["id=20,57,259,47"])))
    assert done is not None and done.ok
    secrets = [v.reveal() for sec in read_sink(sink).values()
               for v in (sec.password, sec.private_key) if v]
    assert len(secrets) == 4

    page = tmp_path / "audit.html"
    proc = run_cli(["audit", "--format", "html", "--output", str(page)], cli_env(s.url))
    assert proc.returncode == 0, proc.stderr
    text = page.read_text(encoding="utf-8")
    # self-contained: nothing is fetched (a CSP forbids it too), no external script or style
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text)
    assert "<link" not in text and "<script src" not in text and "@import" not in text
    assert "default-src 'none'" in text

    dom = open_in_chromium(page, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html_after = dom.stdout
    assert 'data-ready="1"' in html_after, "the report's script did not run to its end"
    # the charts: three inline SVGs with a bar segment per non-empty age bucket
    assert html_after.count("<svg") >= 3
    assert len(re.findall(r'<rect class="seg"', html_after)) >= 3 * 3
    assert 'id="age-mt"' in html_after and 'id="age-type"' in html_after
    # the findings table was built from the embedded data by the script, a page of 100
    rows = re.findall(r'<tr class="finding">', html_after)
    assert len(rows) == 100
    assert "The findings table needs JavaScript" not in html_after
    # hostile names are text, never markup
    assert "<img" not in html_after and "<b>x</b>" not in html_after
    assert "&lt;img src=x" in html_after
    for secret in secrets + ["sim-secret"]:
        assert secret not in text and secret not in html_after
        for line in secret.splitlines():
            if len(line) > 16:
                assert line not in text

    shot = tmp_path / "shot.png"
    png = open_in_chromium(page, tmp_path / "profile2", f"--screenshot={shot}",
                           "--window-size=1280,2000")
    assert png.returncode == 0, png.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_empty_tenant_and_unreadable_rules_still_render() -> None:
    from bulkcred.jobs.audit import AuditBuilder
    from bulkcred.jobs.audit_html import render_html
    from bulkcred.models import Microtenant

    result = AuditBuilder(microtenants=[Microtenant(id="0", name="Default")], now=1e9,
                          stale_days=90).result(references={}, tenant={"customerId": "1"},
                                                rules_problem="the rules could not be read")
    page = render_html(result)
    assert "No credentials: nothing to chart." in page
    assert "the rules could not be read" in page and ">n/a<" in page


#: appended to a report: after a sort (its arrow widens a header), how far each table
#: reaches past its box, and how far the last header cell ends past the table's box
_MEASURE = """<script>
document.querySelectorAll("table.sortable thead th:last-child").forEach(function(th){th.click();});
var out=[];
document.querySelectorAll(".tablewrap").forEach(function(w){
  var t=w.querySelector("table"),last=t.querySelector("thead th:last-child");
  out.push(t.id+"="+(w.scrollWidth-w.clientWidth)+","+
           Math.round(last.getBoundingClientRect().right-w.getBoundingClientRect().right));});
document.body.setAttribute("data-overflow",out.join(" "));
</script></body>"""


@pytest.mark.parametrize("width", [1400, 1024])
def test_tables_fit_a_laptop_screen(tmp_path: Path, width: int) -> None:
    from bulkcred.jobs.audit import AuditBuilder
    from bulkcred.jobs.audit_html import render_html
    from bulkcred.models import Credential, CredentialType, Microtenant

    now = 1_800_000_000
    mts = [Microtenant(id="0", name="Default"),
           Microtenant(id="145260601092866314", name="Scope C"),
           Microtenant(id="145260601092866315", name="Scope D (EMEA operations)")]
    b = AuditBuilder(microtenants=mts, now=now, stale_days=90)
    types = list(CredentialType)
    for i in range(3000):
        ts = now - (i % 1500) * 86400
        b.add(Credential(id=str(20000 + i), name=f"srv-admin-{i % 2900:05d}",
                         credential_type=types[i % len(types)],
                         microtenant_id=None if i % 3 == 0 else mts[i % 3].id,
                         creation_time=ts, last_credential_reset_time=ts + (i % 2)))
    result = b.result(references={}, rules_problem=None,
                      tenant={"customerId": "216196257331281920", "baseUrl": "https://x"})
    page = tmp_path / "audit.html"
    page.write_text(render_html(result).replace("</body>", _MEASURE), encoding="utf-8")
    dom = open_in_chromium(page, tmp_path / "profile", "--dump-dom",
                           f"--window-size={width},1000")
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-overflow="([^"]*)"', dom.stdout)
    assert found, "the measuring script did not run"
    overflow = {t: [int(v) for v in px.split(",")]
                for t, px in (item.split("=") for item in found.group(1).split())}
    assert set(overflow) == {"mt-table", "findings-table"}
    # no scrollbar, and "Oldest (days)" is not cut off behind one
    assert all(v <= 0 for px in overflow.values() for v in px), overflow
