"""The audit as one self-contained HTML file: inline CSS, inline SVG charts drawn here,
and a little inline script for the sortable, filterable findings table. No network.
"""

from __future__ import annotations

import html
from typing import Iterable, Sequence

import orjson

from .. import __version__
from .audit import AGE_BUCKETS, FINDING_KINDS, UNKNOWN_AGE, AuditResult

__all__ = ["render_html"]

#: one colour per age bucket, green to dark red, grey for "unknown"
AGE_COLOURS = ("#2e7d32", "#7cb342", "#fbc02d", "#fb8c00", "#e53935", "#8e0000", "#9e9e9e")
TYPE_COLOURS = {"USERNAME_PASSWORD": "#3949ab", "SSH_KEY": "#00897b", "PASSWORD": "#8e24aa"}
TYPE_LABELS = {"USERNAME_PASSWORD": "Username/password", "SSH_KEY": "SSH key",
               "PASSWORD": "Password"}
_OTHER_TYPE = "#607d8b"
KIND_TITLES = {
    "stale": "Stale",
    "never_rotated": "Never rotated",
    "duplicate_name": "Duplicate names",
    "unsafe_name": "Unsafe names",
    "unused": "Unused",
}
KIND_HELP = {
    "stale": "last reset longer ago than the threshold: rotate them (bulkcred rotate"
             " --select older-than=…)",
    "never_rotated": "the secret is the one set at creation",
    "duplicate_name": "the same name after ZPA's normalisation (entities undone, case"
                      " folded), in one microtenant or across several",
    "unsafe_name": "characters outside the portal's set [A-Za-z0-9._-]",
    "unused": "no credential policy rule injects it: a candidate for removal",
}

_BAR_W = 320  # width of a 100 % bar: two charts side by side on a laptop screen
_LABEL_W = 140
_COUNT_W = 60
_ROW_H = 24


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _n(value: int) -> str:
    return f"{value:,}"


def _short(text: str, limit: int = 19) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _legend(entries: Sequence[tuple[str, str]], y: float, width: int) -> tuple[str, float]:
    """Legend swatches wrapped over lines; returns the markup and the height used."""
    out, x, line = [], 0.0, 0
    for label, colour in entries:
        w = 22 + 7.2 * len(label) + 14
        if x + w > width and x > 0:
            x, line = 0.0, line + 1
        ly = y + line * 20
        out.append(f'<rect x="{x:.0f}" y="{ly:.0f}" width="14" height="14" rx="2" '
                   f'fill="{colour}"/><text x="{x + 20:.0f}" y="{ly + 11:.0f}" '
                   f'class="lg">{_e(label)}</text>')
        x += w
    return "".join(out), (line + 1) * 20


def _stacked_chart(title: str, rows: Sequence[tuple[str, Sequence[int]]],
                   series: Sequence[tuple[str, str]], *, share: bool, chart_id: str) -> str:
    """Horizontal stacked bars: one row per label, one segment per series.

    ``share``: every bar is 100 % (composition); otherwise bars are to scale.
    """
    width = _LABEL_W + _BAR_W + _COUNT_W
    top = 8
    biggest = max((sum(v) for _, v in rows), default=0) or 1
    body = []
    for i, (label, values) in enumerate(rows):
        y = top + i * _ROW_H
        total = sum(values)
        body.append(f'<g class="row"><text x="{_LABEL_W - 8}" y="{y + 16}" class="rl">'
                    f'<title>{_e(label)}</title>{_e(_short(label))}</text>')
        scale = _BAR_W / (total if share else biggest) if total else 0
        x = float(_LABEL_W)
        for (name, colour), v in zip(series, values):
            if not v:
                continue
            w = v * scale
            pct = 100.0 * v / total
            body.append(f'<rect class="seg" x="{x:.2f}" y="{y + 3}" width="{max(w, 0.5):.2f}" '
                        f'height="{_ROW_H - 6}" fill="{colour}"><title>{_e(label)} — '
                        f'{_e(name)}: {_n(v)} ({pct:.1f} %)</title></rect>')
            x += w
        if not total:
            body.append(f'<rect x="{_LABEL_W}" y="{y + 3}" width="{_BAR_W}" '
                        f'height="{_ROW_H - 6}" class="empty"/>')
        end = _LABEL_W + _BAR_W if share else x
        body.append(f'<text x="{end + 6:.0f}" y="{y + 16}" class="ct">{_n(total)}</text></g>')
    used = [ser for i, ser in enumerate(series) if any(v[i] for _, v in rows)]
    legend, lh = _legend(used, top + len(rows) * _ROW_H + 10, width)
    height = top + len(rows) * _ROW_H + 10 + lh
    return (f'<figure class="chart"><figcaption>{_e(title)}</figcaption>'
            f'<svg id="{chart_id}" xmlns="http://www.w3.org/2000/svg" role="img" '
            f'viewBox="0 0 {width} {height:.0f}" width="{width}" height="{height:.0f}" '
            f'aria-label="{_e(title)}">{"".join(body)}{legend}</svg></figure>')


def _age_series() -> list[tuple[str, str]]:
    labels = [label for label, _ in AGE_BUCKETS] + ["no timestamp"]
    return list(zip(labels, AGE_COLOURS))


def _age_rows(result: AuditResult, key: str) -> list[tuple[str, list[int]]]:
    n = UNKNOWN_AGE + 1
    if key == "mt":
        rows = []
        for m in result.microtenants:
            counts = [0] * n
            for (mt, _, b), v in result.ages.items():
                if mt == m.id:
                    counts[b] += v
            rows.append((m.name, counts))
        return rows
    out: dict[str, list[int]] = {t: [0] * n for t in result.by_type}
    for (_, t, b), v in result.ages.items():
        out.setdefault(t, [0] * n)[b] += v
    return [(TYPE_LABELS.get(t, t), v) for t, v in sorted(out.items())]


def _charts(result: AuditResult) -> str:
    if not result.total:
        return '<p class="muted">No credentials: nothing to chart.</p>'
    types = sorted(result.by_type)
    type_series = [(TYPE_LABELS.get(t, t), TYPE_COLOURS.get(t, _OTHER_TYPE)) for t in types]
    size_rows = [(m.name, [m.by_type.get(t, 0) for t in types]) for m in result.microtenants]
    return "".join([
        _stacked_chart("Age since last reset, by microtenant (share of credentials)",
                       _age_rows(result, "mt"), _age_series(), share=True, chart_id="age-mt"),
        _stacked_chart("Age since last reset, by credential type (share of credentials)",
                       _age_rows(result, "type"), _age_series(), share=True,
                       chart_id="age-type"),
        _stacked_chart("Credentials by microtenant and type", size_rows, type_series,
                       share=False, chart_id="size-mt"),
    ])


def _cards(result: AuditResult) -> str:
    counts = result.finding_counts()
    total = result.total or 1
    cards = [f'<div class="card"><div class="big">{_n(result.total)}</div><div>credentials in '
             f'{len(result.microtenants)} microtenants</div></div>']
    for kind in FINDING_KINDS:
        c = counts[kind]
        na = kind == "unused" and result.rules_problem
        value = "n/a" if na else _n(c)
        share = "" if na else f'<div class="muted">{100.0 * c / total:.1f} %</div>'
        cls = "card warn" if c else "card ok"
        cards.append(f'<a class="{cls}" href="#findings" data-kind="{kind}">'
                     f'<div class="big">{value}</div><div>{_e(KIND_TITLES[kind])}</div>'
                     f'{share}</a>')
    return f'<section class="cards">{"".join(cards)}</section>'


def _th(label: str, num: bool = False) -> str:
    # "Username/password" may break after its slash: one unbreakable header is enough
    # to push a wide table past the page
    text = _e(label).replace("/", "/<wbr>")
    return f'<th scope="col" data-num="{int(num)}" tabindex="0">{text}</th>'


def _td(value: object, num: bool = False) -> str:
    if value is None:
        return '<td data-v="" class="num"></td>' if num else "<td></td>"
    text = _n(value) if num and isinstance(value, int) else str(value)
    return f'<td data-v="{_e(value)}"{" class=num" if num else ""}>{_e(text)}</td>'


def _mt_table(result: AuditResult) -> str:
    types = sorted(result.by_type)
    # the id under the name, not a column of its own: with a dozen count columns, one
    # column fewer is what lets the table fit a laptop screen without a scrollbar
    head = [_th("Microtenant"), _th("Credentials", True)]
    head += [_th(TYPE_LABELS.get(t, t), True) for t in types]
    head += [_th(KIND_TITLES[k], True) for k in FINDING_KINDS] + [_th("Oldest (days)", True)]
    rows = []
    for m in result.microtenants:
        label = f'<td data-v="{_e(m.name)}">{_e(m.name)}<br><span class="id">{_e(m.id)}</span></td>'
        cells = [label, _td(m.credentials, True)]
        cells += [_td(m.by_type.get(t, 0), True) for t in types]
        cells += [_td(m.findings[k], True) for k in FINDING_KINDS]
        cells.append(_td(m.oldest_days, True))
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<table class="sortable" id="mt-table"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _refs_table(result: AuditResult) -> str:
    if result.rules_problem:
        return f'<p class="warnline">{_e(result.rules_problem)}; unused credentials were not' \
               ' assessed.</p>'
    if not result.references:
        return '<p class="muted">No credential policy rule injects any of these credentials.</p>'
    names = result.microtenant_names
    rows = [f"<tr>{_td(cid, False)}{_td(name)}{_td(names.get(mt, mt))}"
            f"{_td(len(rules), True)}{_td(', '.join(r.name for r in rules))}</tr>"
            for cid, (name, mt, rules) in result.references.items()]
    head = "".join([_th("ID"), _th("Name"), _th("Microtenant"), _th("Rules", True),
                    _th("Rule names")])
    return (f'<p>Detach these rules before moving or deleting the credential (ZPA refuses'
            f' otherwise).</p><table class="sortable" id="refs-table"><thead><tr>{head}</tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table>')


def _findings_json(result: AuditResult) -> str:
    names = result.microtenant_names
    rows = [[f.kind, f.id, f.name, names.get(f.microtenant_id, f.microtenant_id),
             f.age_days, f.detail] for f in result.findings]
    # inside <script> only "<" can end the element early; escaped, JSON.parse restores it
    return (orjson.dumps(rows).decode().replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


def _kind_buttons(result: AuditResult) -> str:
    counts = result.finding_counts()
    out = [f'<button type="button" class="chip on" data-kind="">All '
           f'<b>{_n(len(result.findings))}</b></button>']
    out += [f'<button type="button" class="chip" data-kind="{k}" title="{_e(KIND_HELP[k])}">'
            f'{_e(KIND_TITLES[k])} <b>{_n(counts[k])}</b></button>' for k in FINDING_KINDS]
    return "".join(out)


def _help_list() -> str:
    return "".join(f"<dt>{_e(KIND_TITLES[k])}</dt><dd>{_e(KIND_HELP[k])}</dd>"
                   for k in FINDING_KINDS)


def _reads(result: AuditResult) -> Iterable[str]:
    r = result.reads
    if r:
        yield (f"Read with {_n(int(r.get('requests', 0)))} GET requests in "
               f"{float(r.get('seconds', 0)):.1f} s at a read limit of {_e(r.get('readRate', '?'))}"
               f"; {_n(int(r.get('throttled', 0)))} throttled.")


_CSS = """
:root{--fg:#1d2330;--bg:#f6f7f9;--card:#fff;--muted:#5f6b7a;--line:#d9dee5;--accent:#1e5bb8;
--warn:#b3261e;--ok:#2e7d32}
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ee;--bg:#14171c;--card:#1d2229;
--muted:#9aa5b4;--line:#343b45;--accent:#7fb0ff;--warn:#ff8a80;--ok:#81c784}}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header,main,footer{max-width:1200px;margin:0 auto;padding:0 20px}
header{padding-top:24px}h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px}
.sub,.muted{color:var(--muted)}.cards{display:grid;grid-template-columns:repeat(auto-fill,
minmax(160px,1fr));gap:12px;margin:18px 0}.card{display:block;background:var(--card);
border:1px solid var(--line);border-radius:10px;padding:12px 14px;color:inherit;
text-decoration:none}.card .big{font-size:26px;font-weight:650}.card.warn .big{color:var(--warn)}
.card.ok .big{color:var(--ok)}a.card:hover{border-color:var(--accent)}
.charts{display:flex;flex-wrap:wrap;gap:16px}.chart{margin:0;background:var(--card);
border:1px solid var(--line);border-radius:10px;padding:12px;max-width:100%;overflow-x:auto}
.chart figcaption{font-weight:600;margin-bottom:6px}svg text{fill:var(--fg);font-size:12px}
svg .rl{text-anchor:end}svg .ct{fill:var(--muted)}svg .lg{font-size:11.5px}
svg .empty{fill:none;stroke:var(--line);stroke-dasharray:3 3}svg .seg:hover{opacity:.8}
table{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line);
border-radius:8px;overflow:hidden}th,td{padding:6px 8px;border-bottom:1px solid var(--line);
text-align:left;vertical-align:top;overflow-wrap:anywhere}th{overflow-wrap:normal}
td.num,.id{white-space:nowrap}.id{color:var(--muted);font-size:12px}
td.num,th[data-num="1"]{text-align:right}
th{position:sticky;top:0;background:var(--card);cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
tbody tr:hover{background:rgba(127,127,127,.08)}.tablewrap{overflow-x:auto}
.controls{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:8px 0}
.chip{border:1px solid var(--line);background:var(--card);color:inherit;border-radius:999px;
padding:4px 11px;cursor:pointer;font:inherit}.chip.on{border-color:var(--accent);
color:var(--accent);font-weight:600}input[type=search]{font:inherit;padding:5px 9px;
border:1px solid var(--line);border-radius:6px;background:var(--card);color:inherit;min-width:240px}
.pager{display:flex;gap:8px;align-items:center;margin:8px 0}.pager button{font:inherit}
.kind{font-size:12px;padding:1px 7px;border-radius:999px;border:1px solid var(--line);white-space:nowrap}
dl.help{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px}dl.help dt{font-weight:600}
dl.help dd{margin:0;color:var(--muted)}.warnline{color:var(--warn)}
footer{padding:24px 20px 40px;color:var(--muted)}
@media print{.controls,.pager{display:none}th{position:static}}
"""

_JS = r"""
(function(){
"use strict";
function num(v){return v===""||v===null?-Infinity:Number(v);}
function cmp(a,b,isNum){if(isNum){return num(a)-num(b);}return String(a).localeCompare(String(b),undefined,{numeric:true,sensitivity:"base"});}
// server-rendered tables: sort rows by a clicked header
document.querySelectorAll("table.sortable").forEach(function(table){
  var ths=table.querySelectorAll("thead th");
  ths.forEach(function(th,col){
    function go(){
      var asc=th.getAttribute("aria-sort")!=="ascending";
      ths.forEach(function(o){o.removeAttribute("aria-sort");});
      th.setAttribute("aria-sort",asc?"ascending":"descending");
      var isNum=th.dataset.num==="1",body=table.tBodies[0];
      var rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(r1,r2){var a=r1.cells[col].dataset.v,b=r2.cells[col].dataset.v;
        if(a===undefined){a=r1.cells[col].textContent;b=r2.cells[col].textContent;}
        var c=cmp(a,b,isNum);return asc?c:-c;});
      rows.forEach(function(r){body.appendChild(r);});
    }
    th.addEventListener("click",go);
    th.addEventListener("keydown",function(e){if(e.key==="Enter"||e.key===" "){e.preventDefault();go();}});
  });
});
// the findings: rendered from the embedded data, filtered, sorted and paged here
var data=JSON.parse(document.getElementById("findings-data").textContent);
var state={kind:"",q:"",col:-1,asc:true,page:0,size:100};
var body=document.getElementById("findings-body"),info=document.getElementById("findings-info");
var heads=document.querySelectorAll("#findings-table thead th");
var numeric=[false,true,false,false,true,false];
var titles=JSON.parse(document.getElementById("kind-titles").textContent);
function rows(){
  var q=state.q.toLowerCase();
  var out=data.filter(function(r){
    if(state.kind&&r[0]!==state.kind){return false;}
    if(!q){return true;}
    return (r[1]+" "+r[2]+" "+r[3]+" "+r[5]).toLowerCase().indexOf(q)>=0;});
  if(state.col>=0){var c=state.col,n=numeric[c];
    out.sort(function(a,b){var x=cmp(a[c],b[c],n);return state.asc?x:-x;});}
  return out;
}
function render(){
  var all=rows(),pages=Math.max(1,Math.ceil(all.length/state.size));
  if(state.page>=pages){state.page=pages-1;}
  var start=state.page*state.size,slice=all.slice(start,start+state.size);
  var frag=document.createDocumentFragment();
  slice.forEach(function(r){
    var tr=document.createElement("tr");tr.className="finding";
    var cells=[titles[r[0]]||r[0],r[1],r[2],r[3],r[4]===null?"":r[4],r[5]];
    cells.forEach(function(v,i){var td=document.createElement("td");
      if(i===0){var s=document.createElement("span");s.className="kind";s.textContent=v;td.appendChild(s);}
      else{td.textContent=v;}
      if(numeric[i]){td.className="num";}tr.appendChild(td);});
    frag.appendChild(tr);});
  body.textContent="";body.appendChild(frag);
  info.textContent=all.length?((start+1)+"–"+(start+slice.length)+" of "+all.length.toLocaleString()):"no findings match";
  document.getElementById("prev").disabled=state.page===0;
  document.getElementById("next").disabled=state.page>=pages-1;
}
heads.forEach(function(th,col){
  function go(){state.asc=state.col===col?!state.asc:true;state.col=col;state.page=0;
    heads.forEach(function(o){o.removeAttribute("aria-sort");});
    th.setAttribute("aria-sort",state.asc?"ascending":"descending");render();}
  th.addEventListener("click",go);
  th.addEventListener("keydown",function(e){if(e.key==="Enter"||e.key===" "){e.preventDefault();go();}});
});
function setKind(k){state.kind=k;state.page=0;
  document.querySelectorAll(".chip").forEach(function(c){c.classList.toggle("on",c.dataset.kind===k);});render();}
document.querySelectorAll(".chip").forEach(function(c){c.addEventListener("click",function(){setKind(c.dataset.kind);});});
document.querySelectorAll("a.card[data-kind]").forEach(function(a){a.addEventListener("click",function(){setKind(a.dataset.kind);});});
document.getElementById("q").addEventListener("input",function(e){state.q=e.target.value;state.page=0;render();});
document.getElementById("prev").addEventListener("click",function(){state.page--;render();});
document.getElementById("next").addEventListener("click",function(){state.page++;render();});
render();
document.body.setAttribute("data-ready","1");
})();
"""


def render_html(result: AuditResult) -> str:
    """The whole report as one string (UTF-8 when written)."""
    tenant = result.tenant.get("customerId", "?")
    when = result.generated_at
    titles = orjson.dumps(KIND_TITLES).decode()
    reads = " ".join(_reads(result))
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="bulkcred {_e(__version__)}">
<title>Privileged credential audit · tenant {_e(tenant)} · {_e(when)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>Privileged credential audit</h1>
<p class="sub">Tenant {_e(tenant)} at {_e(result.tenant.get("baseUrl", "?"))} · {_e(when)} ·
stale means the last reset is more than {result.stale_days} days old · metadata only: ZPA
returns no secret, and this report holds none.</p>
</header>
<main>
{_cards(result)}
<section id="ages">
<h2>Credential age</h2>
<p class="muted">Days since the last reset (since creation for credentials without one).
Hover a segment for its count.</p>
<div class="charts">{_charts(result)}</div>
</section>
<section id="microtenants">
<h2>Microtenants</h2>
<div class="tablewrap">{_mt_table(result)}</div>
</section>
<section id="findings">
<h2>Findings</h2>
<dl class="help">{_help_list()}</dl>
<div class="controls">{_kind_buttons(result)}
<input type="search" id="q" placeholder="Filter by id, name, microtenant, detail" aria-label="Filter findings">
</div>
<div class="tablewrap"><table id="findings-table"><thead><tr>{_th("Kind")}{_th("ID", True)}{_th("Name")}{_th("Microtenant")}{_th("Age (days)", True)}{_th("Detail")}</tr></thead>
<tbody id="findings-body"><tr><td colspan="6">The findings table needs JavaScript; the CSV and JSON formats hold the same findings.</td></tr></tbody></table></div>
<div class="pager"><button type="button" id="prev">‹ Previous</button><span id="findings-info"></span><button type="button" id="next">Next ›</button></div>
</section>
<section id="rules">
<h2>Credentials used by credential policy rules</h2>
{_refs_table(result)}
</section>
</main>
<footer>Generated by bulkcred {_e(__version__)}. {reads}</footer>
<script type="application/json" id="findings-data">{_findings_json(result)}</script>
<script type="application/json" id="kind-titles">{titles}</script>
<script>{_JS}</script>
</body>
</html>
"""
