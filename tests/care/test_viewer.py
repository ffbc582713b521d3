"""The HTML evidence viewer: span location, escaping, and rendering in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from carelab.care import viewer

CONTEXT = ("Alice was born in Paris.\nShe moved to   Rome in 1990. <script>alert('x')</script>\n"
           "Bob sells bread & cheese.")


def quotes():
    return [{"text": "She moved to Rome in 1990.", "match": "exact"},          # whitespace differs in context
            {"text": "bob sells bread and cheese", "match": "fuzzy"},
            {"text": "Unicorns live on Mars.", "match": "none"}]


def record(label: str, dataset: str, f1: float = 1.0, idx: int = 0) -> dict:
    return {"id": f"{label}-{idx}", "label": label, "dataset_name": dataset, "question": "Where did <she> move?",
            "answers": ["Rome"], "prediction": "Rome <b>", "f1": f1, "well_formed": True, "context": CONTEXT,
            "quotes": quotes(), "raw": "<think>…</think>",
            "think": "I see <retrieval>She moved to Rome in 1990.</retrieval> and "
                     "<retrieval>Unicorns live on Mars.</retrieval>"}


def test_locate_quotes_exact_fuzzy_none():
    spans = viewer.locate_quotes(CONTEXT, quotes())
    got = {label: CONTEXT[s:e] for s, e, label, _ in spans}
    assert got["exact"] == "She moved to   Rome in 1990."
    assert got["fuzzy"] == "Bob sells bread & cheese."
    assert len(spans) == 2  # the "none" quote has no place in the context


def test_html_is_escaped_and_marked():
    page = viewer.render_viewer([record("care", "HotpotQA")])
    assert "<script>alert('x')</script>" not in page  # context text never becomes markup
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "Where did &lt;she&gt; move?" in page and "Rome &lt;b&gt;" in page
    assert page.count('class="q q-exact"') == 1 and page.count('class="q q-fuzzy"') == 1
    assert '<span class="rq q-exact"' in page and '<span class="rq q-none"' in page
    assert "not in context" in page


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (Debian package `chromium`)")
def test_viewer_renders_in_headless_chromium(tmp_path):
    records = [record("care", "HotpotQA", 1.0, 0), record("original", "HotpotQA", 0.0, 1),
               record("care", "CofCA", 0.5, 2)]
    page = viewer.write_viewer(records, tmp_path / "viewer.html")

    def dump(fragment: str) -> str:
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=2000", "--dump-dom",
               page.as_uri() + fragment]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout

    dom = dump("")
    # The highlighted spans made it into the rendered DOM, with the escaped text intact.
    assert len(re.findall(r'<mark class="q q-exact"[^>]*>She moved to\s+Rome in 1990\.</mark>', dom)) == 3
    assert len(re.findall(r'<mark class="q q-fuzzy"[^>]*>Bob sells bread &amp; cheese\.</mark>', dom)) == 3
    assert "<script>alert" not in dom.split("<main>")[1].split("</main>")[0]
    assert '<span id="shown">3</span>' in dom

    # The inline script ran: the URL filter hides the other methods and updates the counter.
    dom = dump("#method=care&wrong=1")
    assert '<span id="shown">1</span>' in dom
    shown = re.findall(r'<div class="ex" id="(ex\d)"[^>]*?(style="display: none;")?>', dom)
    assert [i for i, hidden in shown if not hidden] == ["ex2"]
