"""The HTML evidence viewer: span location, escaping, one card per item with a column per method, the
items ``viewer_records`` picks, and rendering plus filters in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from carelab.care.eval import viewer
from carelab.care.eval.results import viewer_records

CONTEXT = ("Alice was born in Paris.\nShe moved to   Rome in 1990. <script>alert('x')</script>\n"
           "Bob sells bread & cheese.")


def quotes():
    return [{"text": "Alice was born in Paris.", "match": "exact"},
            {"text": "bob sells bread and cheese", "match": "fuzzy"},
            {"text": "Unicorns live on Mars.", "match": "none"}]


def record(label: str, dataset: str, f1: float = 1.0, idx: int = 0, **kw) -> dict:
    rec = {"id": f"q{idx}", "label": label, "dataset_name": dataset, "question": "Where did <she> move?",
           "answers": ["Rome"], "prediction": "Rome <b>", "f1": f1, "well_formed": True, "context": CONTEXT,
           "quotes": quotes(), "raw": "<think>…</think>",
           "think": "I see <retrieval>Alice was born in Paris.</retrieval> and "
                    "<retrieval>Unicorns live on Mars.</retrieval>"}
    return rec | kw


def plain(label: str, dataset: str, f1: float, idx: int) -> dict:
    """A plain-answer method: no format, no quotes, another answer."""
    return record(label, dataset, f1, idx, prediction="Paris", well_formed=None, quotes=[], think="", raw="Paris")


def cards(page: str) -> list[str]:
    return page.split('<section class="item"')[1:]


def columns(card: str) -> dict[str, str]:
    parts = re.split(r'(?=<div class="col(?: na)?" data-method=")', card)[1:]
    return {re.match(r'<div class="col(?: na)?" data-method="([^"]*)"', p).group(1): p for p in parts}


def test_locate_quotes_exact_fuzzy_none():
    spans = viewer.locate_quotes(CONTEXT, quotes())
    got = {label: CONTEXT[s:e] for s, e, label, _ in spans}
    assert got["exact"] == "Alice was born in Paris."
    assert got["fuzzy"] == "Bob sells bread & cheese."
    assert len(spans) == 2  # the "none" quote has no place in the context


def test_highlight_label_is_the_matchers_not_the_records():
    """A quote whose spacing differs from the context is no substring of it: the reward calls it fuzzy there,
    and so does the highlight, whatever label the record carries."""
    (span,) = viewer.locate_quotes(CONTEXT, [{"text": "She moved to Rome in 1990.", "match": "exact"}])
    assert CONTEXT[span[0]:span[1]] == "She moved to   Rome in 1990." and span[2] == "fuzzy"


def test_html_is_escaped_and_marked():
    page = viewer.render_viewer([record("care", "HotpotQA")])
    assert "<script>alert('x')</script>" not in page  # context text never becomes markup
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page  # jinja2's autoescape spelling
    assert "Where did &lt;she&gt; move?" in page and "Rome &lt;b&gt;" in page
    assert page.count('class="q q-exact"') == 1 and page.count('class="q q-fuzzy"') == 1
    assert '<span class="rq q-exact"' in page and '<span class="rq q-none"' in page
    assert "not in context" in page


def test_script_in_any_record_field_stays_text():
    """Whatever a model or a dataset wrote — answer, quotes, reasoning, question, labels — is escaped, never run."""
    evil = "<script>alert(1)</script>"
    rec = record(f"m{evil}", f"ds{evil}", prediction=f"Rome{evil}", question=f"Q{evil}", answers=[evil],
                 context=f"ctx {evil} end", raw=evil, think=f"so <retrieval>{evil}</retrieval>",
                 quotes=[{"text": evil, "match": "exact"}], counterfactual=True, original_answers=[evil],
                 info={"action": evil}, id=evil)
    page = viewer.render_viewer([rec], title=f"T{evil}")
    assert page.count("<script>") == 1 and page.count("</script>") == 1  # the viewer's own inline script only
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for shown in (f"Rome{escaped}", f"Q{escaped}", f"ctx <mark class=\"q q-exact\" data-quote=\"0\" "
                  f"title=\"quote 1: exact\">{escaped}</mark> end", f"CRAG action: {escaped}",
                  f'<span class="rq q-exact" title="exact">{escaped}</span>', f"<title>T{escaped}</title>"):
        assert shown in page


def test_one_card_per_item_with_a_column_per_method():
    # Records arrive method after method; item q2 was evaluated by "care" only.
    records = [record("care", "HotpotQA", 1.0, 0), record("care", "HotpotQA", 0.0, 1), record("care", "CofCA", 1, 2),
               plain("original", "HotpotQA", 0.0, 0), plain("original", "HotpotQA", 0.0, 1)]
    page = viewer.render_viewer(records)
    cs = cards(page)
    assert [re.search(r'data-id="([^"]*)"', c).group(1) for c in cs] == ["q0", "q1", "q2"]
    for c in cs:
        assert list(columns(c)) == ["care", "original"]  # every card has every method, in the same order
        assert c.count("Where did &lt;she&gt; move?") == 1 and c.count('<span class="gold">') == 1
    assert "(not evaluated)" in columns(cs[2])["original"] and "(not evaluated)" not in columns(cs[0])["original"]
    assert 'data-f1="0.0000"' in columns(cs[1])["care"] and "Paris" in columns(cs[0])["original"]
    assert '<span id="shown">3</span> of 3 items' in page


def test_labels_shown_are_the_matchers():
    """Badges carry the evaluation-time label; the highlighted spans are exactly ``locate_quotes``'s."""
    only_fuzzy = [quotes()[1], {"text": "She moved to Rome in 1990.", "match": "exact"}]
    records = [record("care", "HotpotQA"), record("sft", "HotpotQA", quotes=quotes()),
               record("other", "HotpotQA", quotes=only_fuzzy), plain("original", "HotpotQA", 0.0, 0)]
    (card,) = cards(viewer.render_viewer(records))
    for rec in records:
        col = columns(card)[rec["label"]]
        assert re.findall(r'data-match="([^"]*)"', col) == [q["match"] for q in rec["quotes"]]
    views = re.findall(r'<div class="ctx" data-methods="([^"]*)"[^>]*>(.*?)</div>', card, re.DOTALL)
    methods = [json.loads(html.unescape(m)) for m, _ in views]
    assert methods == [["care", "sft"], ["other"], ["original"]]  # the same spans are shown once
    for ms, (_, body) in zip(methods, views, strict=True):
        rec = next(r for r in records if r["label"] == ms[0])
        expected = [(label, i) for _, _, label, i in viewer.locate_quotes(CONTEXT, rec["quotes"])]
        assert [(label, int(i)) for label, i in re.findall(r'<mark class="q q-(\w+)" data-quote="(\d+)"', body)] \
            == expected
    # The first method with a placed quote is highlighted at first, the others' copies hidden.
    assert re.search(r'data-default="care"', card)
    assert [bool(re.search(r"\shidden>", v)) for v in re.findall(r'<div class="ctx"[^>]*>', card)] == [False, True, True]


def _rows(tmp_path: Path, files: dict[tuple[str, str], list[str]]) -> list[dict]:
    rows = []
    for (label, ds), ids in files.items():
        path = tmp_path / label / f"{ds}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(record(label, ds) | {"id": i}) + "\n" for i in ids))
        rows.append({"label": label, "dataset": ds, "dataset_name": ds.upper(), "run_dir": str(tmp_path),
                     "predictions": f"{label}/{ds}.jsonl"})
    return rows


def test_viewer_records_same_items_for_every_method(tmp_path):
    rows = _rows(tmp_path, {("care", "a"): ["x0", "x1", "x2", "x3", "x4"],
                            ("original", "a"): ["x1", "x2", "x4", "x3"],  # never evaluated x0
                            ("care", "b"): ["y0", "y1", "y2"], ("original", "b"): ["y0", "y1", "y2"]})
    recs = viewer_records(rows, max_per_group=3)
    got = [(r["dataset_name"], r["id"], r["label"]) for r in recs]
    # The cap counts items per dataset; items every method has come first, in file order; methods in row order.
    assert got == [("A", i, m) for i in ("x1", "x2", "x3") for m in ("care", "original")] + \
        [("B", i, m) for i in ("y0", "y1", "y2") for m in ("care", "original")]
    all_a = [r["id"] for r in viewer_records(rows, max_per_group=None) if r["dataset_name"] == "A"]
    assert list(dict.fromkeys(all_a)) == ["x1", "x2", "x3", "x4", "x0"] and all_a.count("x0") == 1
    page = viewer.render_viewer(recs)
    assert len(cards(page)) == 6 and "(not evaluated)" not in page


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (Debian package `chromium`)")
def test_viewer_renders_in_headless_chromium(tmp_path):
    records = [record("care", "HotpotQA", 1.0, 0), record("care", "HotpotQA", 0.0, 1), record("care", "CofCA", 0.5, 2),
               plain("original", "HotpotQA", 0.0, 0), plain("original", "HotpotQA", 0.0, 1)]
    page = viewer.write_viewer(records, tmp_path / "viewer.html")

    def dump(fragment: str) -> str:
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=2000", "--dump-dom",
               page.as_uri() + fragment]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout

    def shown_items(dom: str) -> list[str]:
        tags = re.findall(r'<section class="item" id="(item\d)"[^>]*>', dom)
        return [t for t in tags if 'style="display: none;"' not in
                re.search(rf'<section class="item" id="{t}"[^>]*>', dom).group(0)]

    dom = dump("")
    # The highlighted spans made it into the rendered DOM, with the escaped text intact: one card per item.
    assert len(re.findall(r'<mark class="q q-exact"[^>]*>Alice was born in Paris\.</mark>', dom)) == 3
    assert len(re.findall(r'<mark class="q q-fuzzy"[^>]*>Bob sells bread &amp; cheese\.</mark>', dom)) == 3
    assert "<script>alert" not in dom.split("<main>")[1].split("</main>")[0]
    assert '<span id="shown">3</span>' in dom and shown_items(dom) == ["item0", "item1", "item2"]

    # The inline script ran: the URL hides the "original" column and filters on the columns shown.
    dom = dump("#method=care&wrong=1")
    assert '<span id="shown">2</span>' in dom and shown_items(dom) == ["item1", "item2"]
    orig = re.findall(r'<div class="col(?: na)?" data-method="original"[^>]*>', dom)
    assert len(orig) == 3 and all("display: none" in t for t in orig)
    # Disagreement needs two methods with an answer; "hl" switches the highlighted copy of the context.
    dom = dump("#disagree=1&hl=original")
    assert shown_items(dom) == ["item0", "item1"]
    ctx = re.findall(r'<div class="ctx" data-methods="\[&quot;\w+&quot;\]"[^>]*>', dom)
    assert [("hidden" in t) for t in ctx if "original" in t] == [False, False]
    assert [("hidden" in t) for t in ctx if "care" in t] == [True, True, False]  # q2 has no "original" copy
