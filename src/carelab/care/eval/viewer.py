"""A self-contained HTML evidence viewer for CARE predictions.

Why: a number like "82 % of quotes occur in the context" is only trustworthy when one can *see* the
quotes, and a method is only judged fairly next to the others on the same item. So the page has one card
per (dataset, item): the question, the gold and the context the model saw, shown once, with one method's
quoted spans highlighted where they occur (green: exact substring, amber: fuzzy — the official
word-window rule; a button per method switches which), and below it a column per method with its answer,
F1, format flag, quotes (red: occur nowhere), reasoning and raw output. One HTML file, no external assets
or scripts, every piece of text HTML-escaped; a small inline script shows/hides method columns and filters
items by dataset, imperfect answers and disagreement (also from the URL:
``viewer.html#method=CARE,Original&dataset=CofCA&wrong=1&disagree=1``).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from carelab.care import format as care_format
from carelab.care.eval.metrics import normalize_answer
from carelab.care.quotes import FUZZY_THRESHOLD, locate

_TAG_RE = re.compile(
    re.escape(html.escape(care_format.RETRIEVAL_OPEN)) + r"(.*?)" + re.escape(html.escape(care_format.RETRIEVAL_CLOSE)),
    re.DOTALL,
)


def locate_quotes(context: str, quotes: Sequence[dict]) -> list[tuple[int, int, str, int]]:
    """Character spans ``(start, end, match, quote_index)`` of the quotes found in ``context``, non-overlapping.

    Placed and labelled by :func:`carelab.care.quotes.locate`, the matcher the reward uses, so a highlight's
    label is the reward's decision on this context; quotes found nowhere in it (``none``, or only in the
    question part of the prompt) get no span.
    """
    found: list[tuple[int, int, str, int]] = []
    for i, q in enumerate(quotes):
        span = locate(str(q.get("text", "")), context)
        if span is not None:
            found.append((span.start, span.end, span.label, i))
    found.sort()
    out: list[tuple[int, int, str, int]] = []
    end = -1
    for s, e, label, i in found:
        if s >= end:
            out.append((s, e, label, i))
            end = e
        elif e > end:  # overlap: highlight only the part not yet marked
            out.append((end, e, label, i))
            end = e
    return out


def highlight_context(context: str, quotes: Sequence[dict]) -> str:
    """The context as escaped HTML with ``<mark class="q q-exact|q-fuzzy">`` around quoted spans."""
    parts: list[str] = []
    pos = 0
    for s, e, label, i in locate_quotes(context, quotes):
        parts.append(html.escape(context[pos:s]))
        parts.append(f'<mark class="q q-{label}" data-quote="{i}" title="quote {i + 1}: {label}">'
                     f"{html.escape(context[s:e])}</mark>")
        pos = e
    parts.append(html.escape(context[pos:]))
    return "".join(parts)


def highlight_reasoning(think: str, quotes: Sequence[dict]) -> str:
    """The reasoning as escaped HTML with each retrieval span marked by its match label."""
    labels = {care_format.collapse_ws(str(q.get("text", ""))): q.get("match", "none") for q in quotes}
    escaped = html.escape(think)

    def repl(m: re.Match) -> str:
        inner = html.unescape(m.group(1))
        label = labels.get(care_format.collapse_ws(inner), "none")
        return f'<span class="rq q-{label}" title="{label}">{m.group(1)}</span>'

    return _TAG_RE.sub(repl, escaped)


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_MATCH_NAMES = {"exact": "exact", "fuzzy": "fuzzy", "none": "not in context"}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5rem;color:#222}
header,main{max-width:110rem}
header{position:sticky;top:0;background:#fff;padding:.5rem 0;border-bottom:1px solid #ddd;z-index:1}
header h1{margin:.2rem 0 .4rem;font-size:1.5rem}
header label{margin-right:.9rem;white-space:nowrap}
.item{border:1px solid #ccc;border-radius:6px;padding:.8rem 1rem;margin:1rem 0}
.item>p{margin:.4rem 0}
.meta{color:#555;font-size:.9rem}.ok{color:#1a7f37}.bad{color:#b42318}
.ctx,.think{white-space:pre-wrap;background:#fafafa;border:1px solid #eee;padding:.5rem;max-height:22rem;
overflow:auto;font-size:.9rem}
.ctx{border-left:4px solid var(--mc,#eee)}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(16rem,1fr));gap:.6rem;margin-top:.6rem}
.col{border:1px solid #ddd;border-top:4px solid var(--mc);border-radius:4px;padding:.4rem .6rem;min-width:0;
overflow-wrap:anywhere}
.col.na{background:#f6f6f6;color:#777}
.col p{margin:.3rem 0}
.tabs{margin:.3rem 0;font-size:.9rem}
.tab{font:inherit;font-size:.85rem;border:1px solid var(--mc);border-radius:4px;background:#fff;color:#222;
margin:0 .25rem .25rem 0;padding:.05rem .4rem;cursor:pointer}
.tab[aria-pressed="true"]{background:var(--mc);color:#fff}
.swatch{display:inline-block;width:.75rem;height:.75rem;border-radius:2px;background:var(--mc);vertical-align:middle}
mark.q-exact,.rq.q-exact,.badge.q-exact{background:#b7efc5}
mark.q-fuzzy,.rq.q-fuzzy,.badge.q-fuzzy{background:#ffe08a}
.rq.q-none,.badge.q-none{background:#ffc9c9}
.badge{border-radius:4px;padding:0 .3rem;font-size:.8rem}
ul.quotes{padding-left:1rem;margin:.3rem 0}ul.quotes li{margin:.2rem 0}
.legend span{margin-right:1rem}
"""

_JS = """
(function(){
  var d=document.getElementById('f-dataset'), w=document.getElementById('f-wrong'),
      g=document.getElementById('f-disagree'), s=document.getElementById('f-split'),
      hl=document.getElementById('f-hl'), shown=document.getElementById('shown'),
      cols=document.querySelectorAll('.f-col'), items=document.querySelectorAll('.item');
  function each(list,fn){for(var i=0;i<list.length;i++)fn(list[i]);}
  function visible(){var v={};each(cols,function(c){if(c.checked)v[c.value]=1;});return v;}
  function highlight(item,method){
    var ctxs=item.querySelectorAll('.ctx'), hit=null;
    each(ctxs,function(c){if(JSON.parse(c.getAttribute('data-methods')).indexOf(method)>=0)hit=c;});
    if(!hit)return;
    var same=JSON.parse(hit.getAttribute('data-methods'));  // methods that quote the very same spans
    each(ctxs,function(c){c.hidden=c!==hit;});
    each(item.querySelectorAll('.tab'),function(t){
      t.setAttribute('aria-pressed',same.indexOf(t.getAttribute('data-method'))>=0?'true':'false');});
  }
  function apply(){
    var v=visible(), n=0;
    each(document.querySelectorAll('.col,.tab'),function(c){c.style.display=v[c.getAttribute('data-method')]?'':'none';});
    each(items,function(item){
      var ok=!d.value||item.getAttribute('data-dataset')===d.value, f1s=[], norms={}, nn=0;
      each(item.querySelectorAll('.col[data-f1]'),function(c){
        if(!v[c.getAttribute('data-method')])return;
        f1s.push(parseFloat(c.getAttribute('data-f1')));
        var a=c.getAttribute('data-norm'); if(!(a in norms)){norms[a]=1;nn++;}
      });
      if(w.checked)ok=ok&&f1s.some(function(x){return x<1;});
      if(g.checked)ok=ok&&nn>1;
      if(s.checked)ok=ok&&f1s.length>1&&Math.max.apply(null,f1s)-Math.min.apply(null,f1s)>1e-9;
      item.style.display=ok?'':'none'; if(ok)n++;
      var act=item.querySelector('.tab[aria-pressed="true"]');
      if(act&&!v[act.getAttribute('data-method')]){
        var first=null; each(item.querySelectorAll('.tab'),function(t){
          if(!first&&v[t.getAttribute('data-method')])first=t;});
        if(first)highlight(item,first.getAttribute('data-method'));
      }
    });
    shown.textContent=String(n);
  }
  function applyHighlight(){
    each(items,function(item){highlight(item,hl.value||item.getAttribute('data-default'));});
  }
  function fromHash(){
    (location.hash||'').replace(/^#/,'').split('&').forEach(function(kv){
      var i=kv.indexOf('='); if(i<0)return;
      var k=decodeURIComponent(kv.slice(0,i)), val=decodeURIComponent(kv.slice(i+1));
      if(k==='dataset')d.value=val;
      if(k==='method'||k==='methods'){
        var want=val.split(','); each(cols,function(c){c.checked=!val||want.indexOf(c.value)>=0;});
      }
      if(k==='wrong')w.checked=val==='1'; if(k==='disagree')g.checked=val==='1'; if(k==='split')s.checked=val==='1';
      if(k==='hl'){hl.value=val; applyHighlight();}
    });
  }
  document.addEventListener('click',function(ev){
    var t=ev.target.closest?ev.target.closest('.tab'):null;
    if(t)highlight(t.closest('.item'),t.getAttribute('data-method'));
  });
  each([d,w,g,s],function(el){el.addEventListener('change',apply);});
  each(cols,function(el){el.addEventListener('change',apply);});
  hl.addEventListener('change',function(){applyHighlight();apply();});
  window.addEventListener('hashchange',function(){fromHash();apply();});
  fromHash(); apply();
})();
"""


def item_key(rec: Mapping[str, Any]) -> tuple[str, str]:
    """The (dataset, item id) that ties one item's predictions together across methods.

    The question stands in for a missing id so that records of hand-made files still group.
    """
    ds = str(rec.get("dataset_name", rec.get("dataset", "")))
    item = rec.get("id")
    return ds, str(item if item not in (None, "") else rec.get("question", ""))


def group_items(records: Iterable[Mapping[str, Any]]
                ) -> tuple[list[str], list[tuple[tuple[str, str], dict[str, Mapping[str, Any]]]]]:
    """The methods and, per item, each method's record, both in first-seen order (a repeated record is ignored).

    Why: the viewer compares methods on the *same* item, so records are regrouped whatever order they come in.
    """
    records = list(records)
    methods = list(dict.fromkeys(str(r.get("label", "")) for r in records))
    items: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    for r in records:
        items.setdefault(item_key(r), {}).setdefault(str(r.get("label", "")), r)
    return methods, list(items.items())


def _options(values: Iterable[str]) -> str:
    return "".join(f'<option value="{html.escape(v, quote=True)}">{html.escape(v)}</option>' for v in values)


def _quotes_html(quotes: Sequence[Mapping[str, Any]]) -> str:
    """The quote list with each quote's evaluation-time match label (the one ``locate_quotes`` highlights by)."""
    e = html.escape
    items = []
    for i, q in enumerate(quotes):
        label = str(q.get("match", "none"))
        items.append(f'<li><span class="badge q-{e(label, quote=True)}" data-match="{e(label, quote=True)}">'
                     f'{i + 1}. {e(_MATCH_NAMES.get(label, label))}</span> {e(str(q.get("text", "")))}</li>')
    return f'<ul class="quotes">{"".join(items)}</ul>' if items else '<p class="meta">(no quotes)</p>'


def _column_html(method: str, rec: Mapping[str, Any] | None, colour: str) -> str:
    """One method's column of an item card: answer, F1, format flag, quotes, reasoning and raw output."""
    e = html.escape
    attrs = f'data-method="{e(method, quote=True)}" style="--mc:{colour}"'
    head = f'<div class="colhead"><b>{e(method)}</b>'
    if rec is None:
        return f'<div class="col na" {attrs}>{head}</div><p class="meta">(not evaluated)</p></div>'
    f1 = float(rec.get("f1") or 0.0)
    flags = [f'F1 <span class="{"ok" if f1 >= 0.999 else "bad"}">{100 * f1:.1f}</span>']
    wf = rec.get("well_formed")
    if wf is not None:
        flags.append('<span class="ok">well-formed</span>' if wf else '<span class="bad">not well-formed</span>')
    else:
        flags.append("format n/a")  # a plain-answer method is not asked for the CARE format
    if rec.get("memorised"):
        flags.append('<span class="bad">answered from memory</span>')
    if rec.get("truncated"):
        flags.append('<span class="bad">context truncated</span>')
    info = rec.get("info") or {}
    if isinstance(info, Mapping) and info.get("action"):
        flags.append(f"CRAG action: {e(str(info['action']))}")
    quotes = list(rec.get("quotes") or [])
    think = str(rec.get("think") or "")
    reasoning = (f'<div class="think">{highlight_reasoning(think, quotes)}</div>' if think
                 else '<p class="meta">(no reasoning block)</p>')
    prediction = str(rec.get("prediction", ""))
    return f"""<div class="col" {attrs} data-f1="{f1:.4f}" data-norm="{e(normalize_answer(prediction), quote=True)}">
{head} <span class="meta">· {" · ".join(flags)}</span></div>
<p><b>Answer:</b> <span class="answer">{e(prediction)}</span></p>
<div class="meta">Quotes ({len(quotes)})</div>{_quotes_html(quotes)}
<details><summary>Reasoning</summary>{reasoning}</details>
<details><summary>Raw output</summary><div class="think">{e(str(rec.get('raw', '')))}</div></details>
</div>"""


def _context_html(methods: Sequence[str], recs: Mapping[str, Mapping[str, Any]], colours: Mapping[str, str]
                  ) -> tuple[str, str]:
    """The context block of a card and the method highlighted first (the first one with a quote placed).

    Each method's quotes are highlighted by ``highlight_context``; methods whose highlighted context comes
    out identical share one copy, so the page does not repeat a long context once per method needlessly.
    """
    e = html.escape
    evaluated = [m for m in methods if m in recs]
    views: dict[str, list[str]] = {}
    marks: dict[str, int] = {}
    for m in evaluated:
        rendered = highlight_context(str(recs[m].get("context", "")), list(recs[m].get("quotes") or []))
        views.setdefault(rendered, []).append(m)
        marks[m] = rendered.count('<mark class="q ')
    active = next((m for m in evaluated if marks[m]), evaluated[0])
    pressed = next(ms for ms in views.values() if active in ms)  # every method quoting the same spans
    tabs = "".join(
        f'<button type="button" class="tab" data-method="{e(m, quote=True)}" style="--mc:{colours[m]}" '
        f'aria-pressed="{"true" if m in pressed else "false"}" '
        f'title="highlight the {marks[m]} span(s) {e(m, quote=True)} quoted">{e(m)} · {marks[m]}</button>'
        for m in evaluated)
    blocks = "".join(
        f'<div class="ctx" data-methods="{e(json.dumps(ms), quote=True)}" style="--mc:{colours[ms[0]]}"'
        f'{"" if active in ms else " hidden"}>{rendered}</div>' for rendered, ms in views.items())
    same = len({str(recs[m].get("context", "")) for m in evaluated}) == 1
    note = ("" if same or len(evaluated) < 2 else
            ' <span class="bad">(the methods saw different contexts: each button shows that method\'s)</span>')
    return (f'<details open><summary>Context the model saw{note}</summary>'
            f'<div class="tabs">Highlight the quotes of (spans placed; methods quoting the same spans light up '
            f'together): {tabs}</div>{blocks}</details>'), active


def _item_html(key: tuple[str, str], recs: Mapping[str, Mapping[str, Any]], methods: Sequence[str],
               colours: Mapping[str, str], idx: int) -> str:
    """One card: what the item is (shown once), the context with a method switch, and a column per method."""
    e = html.escape
    dataset, item_id = key
    first = next(recs[m] for m in methods if m in recs)
    extra = ""
    if first.get("counterfactual") is not None:
        extra += f" · counterfactual: {'yes' if first['counterfactual'] else 'no (control)'}"
        if first.get("original_answers"):
            extra += f" · original answer: {e(' | '.join(map(str, first['original_answers'])))}"
    context, active = _context_html(methods, recs, colours)
    columns = "".join(_column_html(m, recs.get(m), colours[m]) for m in methods)
    return f"""
<section class="item" id="item{idx}" data-dataset="{e(dataset, quote=True)}" data-id="{e(item_id, quote=True)}"
 data-default="{e(active, quote=True)}">
<div class="meta"><b>{e(dataset)}</b> · id {e(item_id)}{extra}</div>
<p><b>Question:</b> {e(str(first.get('question', '')))}</p>
<p><b>Gold:</b> <span class="gold">{e(' | '.join(map(str, first.get('answers') or [])))}</span></p>
{context}
<div class="cols">{columns}</div>
</section>"""


def render_viewer(records: Sequence[dict[str, Any]], title: str = "CARE evidence viewer") -> str:
    """The whole viewer page: one card per (dataset, item) with every method's answer and quotes side by side.

    ``records`` are prediction records as the evaluator writes them, plus ``label`` and ``dataset_name``.
    """
    methods, items = group_items(records)
    colours = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(methods)}
    datasets = list(dict.fromkeys(ds for (ds, _), _ in items))
    body = "".join(_item_html(key, recs, methods, colours, i) for i, (key, recs) in enumerate(items))
    col_boxes = "".join(
        f'<label><input type="checkbox" class="f-col" value="{html.escape(m, quote=True)}" checked> '
        f'<span class="swatch" style="--mc:{colours[m]}"></span> {html.escape(m)}</label>' for m in methods)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body><header><h1>{html.escape(title)}</h1>
<div>Methods shown: {col_boxes}</div>
<div><label>Dataset <select id="f-dataset"><option value="">all</option>{_options(datasets)}</select></label>
<label>Highlight <select id="f-hl"><option value="">first method with quotes</option>{_options(methods)}</select></label>
<label><input type="checkbox" id="f-wrong"> some method imperfect (F1 &lt; 100)</label>
<label><input type="checkbox" id="f-disagree"> answers differ (normalised)</label>
<label><input type="checkbox" id="f-split"> F1 differs</label>
· showing <span id="shown">{len(items)}</span> of {len(items)} items</div>
<div class="legend meta"><span><mark class="q-exact">exact quote</mark></span><span><mark class="q-fuzzy">fuzzy quote
 (≥ {FUZZY_THRESHOLD:g} word-window similarity)</mark></span><span><span class="badge q-none">not in context</span></span>
<span>filters count only the methods shown</span></div>
</header>
<main>{body}</main>
<script>{_JS}</script>
</body></html>
"""


def write_viewer(records: Sequence[dict[str, Any]], path: str | Path, title: str = "CARE evidence viewer") -> Path:
    """Write the viewer page to ``path`` (UTF-8) and return it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_viewer(records, title), encoding="utf-8")
    return p
