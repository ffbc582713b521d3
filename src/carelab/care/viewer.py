"""A self-contained HTML evidence viewer for CARE predictions.

Why: a number like "82 % of quotes occur in the context" is only trustworthy when one can *see* the
quotes. For each prediction the page shows the context the model saw with every quoted span highlighted
where it occurs (green: exact substring, amber: fuzzy — the official 0.85 word-window rule), the quotes
that occur nowhere (red), the reasoning with its quotes marked the same way, the answer and the gold.
One HTML file, no external assets or scripts, every piece of text HTML-escaped; a small inline script
filters by method, dataset and correctness (also from the URL: ``viewer.html#method=care&dataset=hotpot``).
"""

from __future__ import annotations

import difflib
import html
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from carelab.care import format as care_format

FUZZY_THRESHOLD = 0.85
_WORD = re.compile(r"\S+")
_TAG_RE = re.compile(
    re.escape(html.escape(care_format.RETRIEVAL_OPEN)) + r"(.*?)" + re.escape(html.escape(care_format.RETRIEVAL_CLOSE)),
    re.DOTALL,
)


def _exact_span(context: str, quote: str) -> tuple[int, int] | None:
    """Where a whitespace-collapsed quote occurs in the context, tolerating any whitespace between words."""
    words = quote.split()
    if not words:
        return None
    m = re.search(r"\s+".join(re.escape(w) for w in words), context)
    return (m.start(), m.end()) if m else None


def _fuzzy_span(context: str, quote: str, threshold: float = FUZZY_THRESHOLD) -> tuple[int, int] | None:
    """The best window of as many words as the quote whose lowercased difflib ratio reaches the threshold."""
    target = " ".join(quote.lower().split())
    n = len(target.split())
    spans = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(context)]
    if n == 0 or len(spans) < n:
        return None
    sm = difflib.SequenceMatcher(None, "", target, autojunk=False)
    best, best_ratio = None, threshold
    for i in range(len(spans) - n + 1):
        window = " ".join(s[2] for s in spans[i:i + n])
        sm.set_seq1(window)
        if sm.real_quick_ratio() < best_ratio or sm.quick_ratio() < best_ratio:
            continue
        r = sm.ratio()
        if r >= best_ratio:
            best, best_ratio = (spans[i][0], spans[i + n - 1][1]), r
            if r == 1.0:
                break
    return best


def locate_quotes(context: str, quotes: Sequence[dict]) -> list[tuple[int, int, str, int]]:
    """Character spans ``(start, end, match, quote_index)`` of the quotes found in ``context``, non-overlapping.

    ``match`` is the label computed at evaluation time (``exact``/``fuzzy``/``none``); quotes labelled
    ``none`` — and quotes that occur only in the question part of the prompt — get no span.
    """
    found: list[tuple[int, int, str, int]] = []
    for i, q in enumerate(quotes):
        label = q.get("match", "none")
        text = str(q.get("text", ""))
        if label == "none" or not text.strip():
            continue
        span = _exact_span(context, text) if label == "exact" else None
        if span is None:
            span = _fuzzy_span(context, text)
        if span is not None:
            found.append((span[0], span[1], label, i))
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


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5rem;max-width:70rem;color:#222}
header{position:sticky;top:0;background:#fff;padding:.5rem 0;border-bottom:1px solid #ddd;z-index:1}
.ex{border:1px solid #ccc;border-radius:6px;padding:.8rem 1rem;margin:1rem 0}
.meta{color:#555;font-size:.9rem}.ok{color:#1a7f37}.bad{color:#b42318}
.ctx,.think{white-space:pre-wrap;background:#fafafa;border:1px solid #eee;padding:.5rem;max-height:22rem;
overflow:auto;font-size:.9rem}
mark.q-exact,.rq.q-exact,.badge.q-exact{background:#b7efc5}
mark.q-fuzzy,.rq.q-fuzzy,.badge.q-fuzzy{background:#ffe08a}
.rq.q-none,.badge.q-none{background:#ffc9c9}
.badge{border-radius:4px;padding:0 .3rem;font-size:.8rem}
ul.quotes li{margin:.2rem 0}
.legend span{margin-right:1rem}
"""

_JS = """
(function(){
  var m=document.getElementById('f-method'), d=document.getElementById('f-dataset'),
      w=document.getElementById('f-wrong'), shown=document.getElementById('shown');
  function apply(){
    var n=0, exs=document.querySelectorAll('.ex');
    for(var i=0;i<exs.length;i++){
      var e=exs[i], ok=(!m.value||e.dataset.method===m.value)&&(!d.value||e.dataset.dataset===d.value)
        &&(!w.checked||parseFloat(e.dataset.f1)<1);
      e.style.display=ok?'':'none'; if(ok)n++;
    }
    shown.textContent=String(n);
  }
  function fromHash(){
    var h=decodeURIComponent((location.hash||'').replace(/^#/,''));
    h.split('&').forEach(function(kv){
      var p=kv.split('='); if(p.length<2)return;
      if(p[0]==='method')m.value=p[1]; if(p[0]==='dataset')d.value=p[1]; if(p[0]==='wrong')w.checked=p[1]==='1';
    });
  }
  m.addEventListener('change',apply); d.addEventListener('change',apply); w.addEventListener('change',apply);
  window.addEventListener('hashchange',function(){fromHash();apply();});
  fromHash(); apply();
})();
"""


def _options(values: Iterable[str]) -> str:
    return "".join(f'<option value="{html.escape(v, quote=True)}">{html.escape(v)}</option>' for v in values)


def _example_html(rec: dict[str, Any], idx: int) -> str:
    e = html.escape
    quotes = list(rec.get("quotes") or [])
    f1 = float(rec.get("f1") or 0.0)
    golds = rec.get("answers") or []
    care_style = rec.get("well_formed") is not None
    wf = rec.get("well_formed")
    items = []
    for i, q in enumerate(quotes):
        label = q.get("match", "none")
        name = {"exact": "exact", "fuzzy": "fuzzy", "none": "not in context"}.get(label, label)
        items.append(f'<li><span class="badge q-{e(label)}">{i + 1}. {e(name)}</span> {e(str(q.get("text", "")))}</li>')
    quotes_html = f'<ul class="quotes">{"".join(items)}</ul>' if items else '<p class="meta">(no quotes)</p>'
    think = rec.get("think") or ""
    reasoning = (f'<div class="think">{highlight_reasoning(think, quotes)}</div>' if think
                 else '<p class="meta">(no reasoning block)</p>')
    fmt_note = "" if not care_style else (' · <span class="ok">well-formed</span>' if wf
                                          else ' · <span class="bad">not well-formed</span>')
    extra = ""
    if rec.get("counterfactual") is not None:
        extra += f" · counterfactual: {'yes' if rec['counterfactual'] else 'no (control)'}"
        if rec.get("original_answers"):
            extra += f" · original answer: {e(' | '.join(map(str, rec['original_answers'])))}"
            if rec.get("memorised"):
                extra += ' · <span class="bad">answered from memory</span>'
    info = rec.get("info") or {}
    if info.get("action"):
        extra += f" · CRAG action: {e(str(info['action']))}"
    return f"""
<div class="ex" id="ex{idx}" data-method="{e(str(rec.get('label', '')), quote=True)}"
 data-dataset="{e(str(rec.get('dataset_name', rec.get('dataset', ''))), quote=True)}" data-f1="{f1:.4f}">
<div class="meta"><b>{e(str(rec.get('label', '')))}</b> · {e(str(rec.get('dataset_name', rec.get('dataset', ''))))}
 · id {e(str(rec.get('id', '')))} · F1 <span class="{'ok' if f1 >= 0.999 else 'bad'}">{100 * f1:.1f}</span>{fmt_note}{extra}</div>
<p><b>Question:</b> {e(str(rec.get('question', '')))}</p>
<p><b>Answer:</b> <span class="answer">{e(str(rec.get('prediction', '')))}</span>
 &nbsp; <b>Gold:</b> <span class="gold">{e(' | '.join(map(str, golds)))}</span></p>
<details open><summary>Quotes ({len(quotes)})</summary>{quotes_html}</details>
<details open><summary>Reasoning</summary>{reasoning}</details>
<details open><summary>Context the model saw</summary><div class="ctx">{highlight_context(str(rec.get('context', '')), quotes)}</div></details>
<details><summary>Raw output</summary><div class="think">{e(str(rec.get('raw', '')))}</div></details>
</div>"""


def render_viewer(records: Sequence[dict[str, Any]], title: str = "CARE evidence viewer") -> str:
    """The whole viewer page for prediction records (as written by the evaluator, plus ``dataset_name``)."""
    labels = list(dict.fromkeys(str(r.get("label", "")) for r in records))
    datasets = list(dict.fromkeys(str(r.get("dataset_name", r.get("dataset", ""))) for r in records))
    body = "".join(_example_html(r, i) for i, r in enumerate(records))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body><header><h1>{html.escape(title)}</h1>
<label>Method <select id="f-method"><option value="">all</option>{_options(labels)}</select></label>
<label>Dataset <select id="f-dataset"><option value="">all</option>{_options(datasets)}</select></label>
<label><input type="checkbox" id="f-wrong"> only imperfect answers (F1 &lt; 100)</label>
· showing <span id="shown">{len(records)}</span> of {len(records)}
<div class="legend meta"><span><mark class="q-exact">exact quote</mark></span><span><mark class="q-fuzzy">fuzzy quote
 (≥ 0.85 word-window similarity)</mark></span><span><span class="badge q-none">not in context</span></span></div>
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
