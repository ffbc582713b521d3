"""A self-contained HTML evidence viewer for CARE predictions.

Why: a number like "82 % of quotes occur in the context" is only trustworthy when one can *see* the
quotes, and a method is only judged fairly next to the others on the same item. So the page has one card
per (dataset, item): the question, the gold and the context the model saw, shown once, with one method's
quoted spans highlighted where they occur (green: exact substring, amber: fuzzy — the official
word-window rule; a button per method switches which), and below it a column per method with its answer,
F1, format flag, quotes (red: occur nowhere), reasoning and raw output. One HTML file, no external assets
or scripts; a small inline script shows/hides method columns and filters items by dataset, imperfect answers
and disagreement (also from the URL: ``viewer.html#method=CARE,Original&dataset=CofCA&wrong=1&disagree=1``).

The page is the jinja2 template ``templates/viewer.html.j2`` rendered with autoescape, so every piece of
record text is escaped by jinja2; this module only turns records into what the template shows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import jinja2

from carelab.care import format as care_format
from carelab.care.eval.metrics import normalize_answer
from carelab.care.quotes import FUZZY_THRESHOLD, locate

_TAG_RE = re.compile(re.escape(care_format.RETRIEVAL_OPEN) + r"(.*?)" + re.escape(care_format.RETRIEVAL_CLOSE),
                     re.DOTALL)


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


class Segment(NamedTuple):
    """A run of text the template shows as is (``label`` None) or marked with its match label."""

    text: str
    label: str | None = None
    quote: int = -1  # the quote's index for a context highlight


def context_segments(context: str, quotes: Sequence[dict]) -> tuple[Segment, ...]:
    """The context cut at the quoted spans of :func:`locate_quotes`, each span carrying its label and quote."""
    parts: list[Segment] = []
    pos = 0
    for s, e, label, i in locate_quotes(context, quotes):
        parts += [Segment(context[pos:s]), Segment(context[s:e], label, i)]
        pos = e
    parts.append(Segment(context[pos:]))
    return tuple(parts)


def reasoning_segments(think: str, quotes: Sequence[dict]) -> tuple[Segment, ...]:
    """The reasoning with each retrieval span (tags dropped) labelled by the record's match label for it."""
    labels = {care_format.collapse_ws(str(q.get("text", ""))): q.get("match", "none") for q in quotes}
    parts: list[Segment] = []
    pos = 0
    for m in _TAG_RE.finditer(think):
        parts += [Segment(think[pos:m.start()]),
                  Segment(m.group(1), str(labels.get(care_format.collapse_ws(m.group(1)), "none")))]
        pos = m.end()
    parts.append(Segment(think[pos:]))
    return tuple(parts)


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_MATCH_NAMES = {"exact": "exact", "fuzzy": "fuzzy", "none": "not in context"}


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


@dataclass
class _Column:
    """One method's column of an item card (``record`` None: the method did not evaluate this item)."""

    method: str
    colour: str
    record: Mapping[str, Any] | None
    f1: float = 0.0
    norm: str = ""
    flags: tuple[tuple[str, str | None], ...] = ()  # (text, css class) after F1
    prediction: str = ""
    quotes: tuple[dict, ...] = ()
    reasoning: tuple[Segment, ...] = ()
    raw: str = ""


def _column(method: str, rec: Mapping[str, Any] | None, colour: str) -> _Column:
    """Answer, F1, format flag, quotes, reasoning and raw output of one method on one item."""
    if rec is None:
        return _Column(method, colour, None)
    wf = rec.get("well_formed")
    flags: list[tuple[str, str | None]] = [
        ("format n/a", None) if wf is None  # a plain-answer method is not asked for the CARE format
        else ("well-formed", "ok") if wf else ("not well-formed", "bad")]
    if rec.get("memorised"):
        flags.append(("answered from memory", "bad"))
    if rec.get("truncated"):
        flags.append(("context truncated", "bad"))
    info = rec.get("info") or {}
    if isinstance(info, Mapping) and info.get("action"):
        flags.append((f"CRAG action: {info['action']}", None))
    quotes = tuple({"text": str(q.get("text", "")), "match": str(q.get("match", "none"))}
                   for q in rec.get("quotes") or [])
    think = str(rec.get("think") or "")
    prediction = str(rec.get("prediction", ""))
    return _Column(method, colour, rec, f1=float(rec.get("f1") or 0.0), norm=normalize_answer(prediction),
                   flags=tuple(flags), prediction=prediction, quotes=quotes,
                   reasoning=reasoning_segments(think, list(rec.get("quotes") or [])) if think else (),
                   raw=str(rec.get("raw", "")))


def _item(key: tuple[str, str], recs: Mapping[str, Mapping[str, Any]], methods: Sequence[str],
          colours: Mapping[str, str]) -> dict[str, Any]:
    """One card: what the item is (shown once), the context with a method switch, and a column per method.

    Each method's quotes are placed by ``context_segments``; methods whose placed spans come out identical
    share one copy of the context, so the page does not repeat a long context once per method needlessly.
    The method highlighted first is the first one with a quote placed.
    """
    first = next(recs[m] for m in methods if m in recs)
    evaluated = [m for m in methods if m in recs]
    views: dict[tuple[Segment, ...], list[str]] = {}
    marks: dict[str, int] = {}
    for m in evaluated:
        parts = context_segments(str(recs[m].get("context", "")), list(recs[m].get("quotes") or []))
        views.setdefault(parts, []).append(m)
        marks[m] = sum(p.label is not None for p in parts)
    active = next((m for m in evaluated if marks[m]), evaluated[0])
    pressed = next(ms for ms in views.values() if active in ms)  # every method quoting the same spans
    dataset, item_id = key
    return {
        "dataset": dataset, "id": item_id, "active": active, "question": str(first.get("question", "")),
        "gold": [str(a) for a in first.get("answers") or []],
        "counterfactual": first.get("counterfactual"),
        "original_answers": [str(a) for a in first.get("original_answers") or []],
        "different_contexts": len(evaluated) > 1 and len({str(recs[m].get("context", "")) for m in evaluated}) > 1,
        "tabs": [{"method": m, "colour": colours[m], "pressed": m in pressed, "marks": marks[m]} for m in evaluated],
        "views": [{"parts": parts, "methods_json": json.dumps(ms), "colour": colours[ms[0]], "hidden": active not in ms}
                  for parts, ms in views.items()],
        "columns": [_column(m, recs.get(m), colours[m]) for m in methods],
    }


@cache
def _template() -> jinja2.Template:
    """The page template, loaded once from the package's ``templates`` folder, autoescaping everything."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("carelab.care.eval", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template("viewer.html.j2")


def render_viewer(records: Sequence[dict[str, Any]], title: str = "CARE evidence viewer") -> str:
    """The whole viewer page: one card per (dataset, item) with every method's answer and quotes side by side.

    ``records`` are prediction records as the evaluator writes them, plus ``label`` and ``dataset_name``.
    """
    methods, items = group_items(records)
    colours = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(methods)}
    return _template().render(
        title=title, methods=methods, colours=colours, match_names=_MATCH_NAMES, threshold=f"{FUZZY_THRESHOLD:g}",
        datasets=list(dict.fromkeys(ds for (ds, _), _ in items)),
        items=[_item(key, recs, methods, colours) for key, recs in items])


def write_viewer(records: Sequence[dict[str, Any]], path: str | Path, title: str = "CARE evidence viewer") -> Path:
    """Write the viewer page to ``path`` (UTF-8) and return it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_viewer(records, title), encoding="utf-8")
    return p
