"""Loaders for native dataset files (the eight formats below).

Loaders for the native formats (HotpotQA, 2Wiki, MuSiQue, DROP, MS MARCO, LongBench, CofCA-style,
carelab JSONL) all produce :class:`QAExample`, so the rest of CARE never sees a dataset's own shape.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carelab.care.data.examples import Passage, QAExample
from carelab.care.text import split_sentences
from carelab.runs import InputError, check_file, iter_jsonl, parse_json, read_json

# --------------------------------------------------------------------------------------------------
# Native loaders
# --------------------------------------------------------------------------------------------------

FORMATS = ("hotpotqa", "2wiki", "musique", "drop", "msmarco", "longbench", "cofca", "carelab")

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """What a load kept and skipped: ``skipped`` counts malformed rows, ``reasons`` the first few messages."""

    path: str
    format: str
    loaded: int = 0
    skipped: int = 0
    unanswerable: int = 0
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = f"{self.path}: {self.loaded} examples loaded as {self.format}"
        if self.skipped:
            s += f", {self.skipped} malformed rows skipped"
        if self.unanswerable:
            s += f", {self.unanswerable} unanswerable rows dropped"
        return s


class _Row:
    """Field access on one raw row that raises ``InputError`` naming file, line/item and field."""

    def __init__(self, path: Path, where: str, line: int | None, obj: Any):
        self.path, self.where, self.line, self.obj = path, where, line, obj

    def error(self, message: str, fld: str | None = None) -> InputError:
        p = f"{self.path}{self.where}" if self.where else self.path
        return InputError(p, message, line=self.line, field=fld)

    def get(self, key: str, typ: type | tuple[type, ...], *, obj: Any = None, required: bool = True,
            default: Any = None, name: str | None = None) -> Any:
        src = self.obj if obj is None else obj
        fld = name or key
        if not isinstance(src, dict):
            raise self.error("expected a JSON object", fld)
        if key not in src or src[key] is None:
            if required:
                raise self.error("missing", fld)
            return default
        val = src[key]
        types = typ if isinstance(typ, tuple) else (typ,)
        if not isinstance(val, typ) or (isinstance(val, bool) and bool not in types):
            names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise self.error(f"expected {names}, got {type(val).__name__}", fld)
        return val

    def text(self, key: str, **kw: Any) -> str:
        """A string field; a number where text is expected is a field error, never silently converted."""
        val = self.get(key, str, **kw)
        return "" if val is None else val

    def ident(self, key: str, **kw: Any) -> str:
        """An id field: a string or an integer (MS MARCO and DROP number their queries)."""
        val = self.get(key, (str, int), **kw)
        return "" if val is None else str(val)


def _facts_list(row: _Row, value: Any, fld: str) -> list[tuple[str, int]]:
    """Supporting facts as ``[[title, sentence index], ...]``; anything else is a field error."""
    if not isinstance(value, list):
        raise row.error("expected a list of [title, sentence index]", fld)
    out = []
    for j, fact in enumerate(value):
        if (not isinstance(fact, (list, tuple)) or len(fact) != 2 or not isinstance(fact[0], str)
                or not isinstance(fact[1], int) or isinstance(fact[1], bool)):
            raise row.error("each entry must be [title, sentence index]", f"{fld}[{j}]")
        out.append((fact[0], fact[1]))
    return out


def _merge_carelab_meta(row: _Row, meta: dict) -> list[tuple[str, int]] | None:
    """Synthetic rows carry ``carelab_meta`` (the reasoning chain, ...); native tools ignore unknown keys."""
    extra = row.obj.get("carelab_meta") if isinstance(row.obj, dict) else None
    if extra is None:
        return None
    if not isinstance(extra, dict):
        raise row.error("expected an object", "carelab_meta")
    meta.update({k: v for k, v in extra.items() if k != "supporting_facts"})
    sf = extra.get("supporting_facts")
    return _facts_list(row, sf, "carelab_meta.supporting_facts") if sf else None


def _answers_list(row: _Row, value: Any, fld: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise row.error("expected a non-empty answer string or list of strings", fld)
    out = [a.strip() for a in value if a.strip()]
    if not out:
        raise row.error("answer is empty", fld)
    return out


def _hotpot_like(row: _Row, source: str) -> QAExample:
    qid = row.ident("_id") if "_id" in row.obj or "id" not in row.obj else row.ident("id")
    question = row.text("question")
    answer = row.text("answer")
    ctx = row.get("context", list)
    passages = []
    for j, par in enumerate(ctx):
        if (not isinstance(par, (list, tuple)) or len(par) != 2 or not isinstance(par[0], str)
                or not isinstance(par[1], list) or not all(isinstance(s, str) for s in par[1])):
            raise row.error("each entry must be [title, [sentences...]]", f"context[{j}]")
        passages.append(Passage(par[0], list(par[1])))
    sf = _facts_list(row, row.get("supporting_facts", list, required=False, default=[]), "supporting_facts")
    titles = {p.title for p in passages}
    for j, (t, _) in enumerate(sf):
        if t not in titles:
            raise row.error(f"title {t!r} is not in the context", f"supporting_facts[{j}]")
    meta: dict[str, Any] = {"type": row.obj.get("type"), "level": row.obj.get("level")}
    if source == "2wiki" and isinstance(row.obj.get("evidences"), list):
        meta["evidences"] = row.obj["evidences"]
    _merge_carelab_meta(row, meta)
    hops = int(meta.get("hops") or len(meta.get("evidences") or []) or len({t for t, _ in sf}) or 1)
    if not answer.strip():
        raise row.error("answer is empty", "answer")
    return QAExample(qid, question, [answer], passages, sf, source, hops, meta)


def _musique(row: _Row) -> QAExample:
    qid = row.ident("id")
    question = row.text("question")
    answer = row.text("answer")
    aliases = row.get("answer_aliases", list, required=False, default=[])
    passages, sf = [], []
    for j, par in enumerate(row.get("paragraphs", list)):
        title = row.text("title", obj=par, name=f"paragraphs[{j}].title")
        text = row.text("paragraph_text", obj=par, name=f"paragraphs[{j}].paragraph_text")
        passages.append(Passage(title, [text]))
        if par.get("is_supporting"):
            sf.append((title, 0))
    decomp = row.get("question_decomposition", list, required=False, default=[])
    meta: dict[str, Any] = {"answerable": row.obj.get("answerable", True), "decomposition": decomp}
    _merge_carelab_meta(row, meta)
    hops = len(decomp) or (int(qid[0]) if qid[:1].isdigit() and "hop" in qid else len(sf) or 1)
    return QAExample(qid, question, _answers_list(row, [answer, *aliases], "answer"), passages, sf, "musique",
                     hops, meta)


def _drop_answer(row: _Row, ans: Any, fld: str) -> str:
    if not isinstance(ans, dict):
        raise row.error("expected an object with number/date/spans", fld)
    if str(ans.get("number") or "").strip():
        return str(ans["number"]).strip()
    spans = ans.get("spans") or []
    if spans:
        return ", ".join(str(s) for s in spans)
    date = ans.get("date") or {}
    parts = [str(date.get(k) or "").strip() for k in ("month", "day", "year")]
    if any(parts):
        month, day, year = parts
        return f"{month} {day}, {year}".replace(" ,", ",").strip(", ") if day else " ".join(p for p in parts if p)
    raise row.error("no number, spans or date in the answer", fld)


def _longbench(row: _Row) -> QAExample:
    qid = row.ident("_id")
    question = row.text("input")
    context = row.text("context")
    answers = _answers_list(row, row.get("answers", (list, str)), "answers")
    chunks = re.split(r"(?:^|\n\n)Passage \d+:\n", context)
    passages = []
    if len(chunks) > 1:
        for ch in chunks:
            ch = ch.strip()
            if ch:
                title, _, body = ch.partition("\n")
                passages.append(Passage(title.strip(), split_sentences(body) or [body]))
    else:
        passages = [Passage("", [p.strip() for p in context.split("\n\n") if p.strip()] or [context])]
    meta: dict[str, Any] = {"dataset": row.obj.get("dataset", ""), "length": row.obj.get("length"),
                            "language": row.obj.get("language"), "all_classes": row.obj.get("all_classes")}
    _merge_carelab_meta(row, meta)
    return QAExample(qid, question, answers, passages, [], "longbench", int(meta.get("hops") or 1), meta)


def _passages_field(row: _Row, key: str = "passages") -> list[Passage]:
    out = []
    for j, p in enumerate(row.get(key, list)):
        sents = row.get("sentences", list, obj=p, name=f"{key}[{j}].sentences")
        if not all(isinstance(s, str) for s in sents):
            raise row.error("sentences must be strings", f"{key}[{j}].sentences")
        out.append(Passage(str(p.get("title", "")), list(sents)))
    return out


def _cofca(row: _Row) -> QAExample:
    qid = row.ident("id")
    question = row.text("question")
    answers = _answers_list(row, row.obj.get("answers", row.obj.get("answer")), "answer")
    if "passages" in row.obj:
        passages = _passages_field(row)
    else:
        passages = [Passage("", split_sentences(row.text("context")))]
    cf = row.get("counterfactual", bool)
    original = row.obj.get("original_answer")
    if cf and original is None:
        raise row.error("counterfactual rows need the original (real-world) answer", "original_answer")
    sf = _facts_list(row, row.get("supporting_facts", list, required=False, default=[]), "supporting_facts")
    meta: dict[str, Any] = {"counterfactual": cf, "original_answer": original,
                            "fact_id": row.obj.get("fact_id"), "category": row.obj.get("category")}
    _merge_carelab_meta(row, meta)
    return QAExample(qid, question, answers, passages, sf, "cofca", int(meta.get("hops") or 1), meta)


def _carelab(row: _Row) -> QAExample:
    row.ident("id")
    row.text("question")
    _answers_list(row, row.get("answers", list), "answers")
    _passages_field(row)
    _facts_list(row, row.get("supporting_facts", list, required=False, default=[]), "supporting_facts")
    try:
        return QAExample.from_dict(row.obj)
    except (KeyError, TypeError, ValueError) as exc:
        raise row.error(f"malformed record ({exc})") from None


def _msmarco_hf_row(row: _Row) -> tuple[QAExample | None, bool]:
    """One row of the Hugging Face MS MARCO v2.1 layout; ``(None, True)`` for 'No Answer Present.'."""
    query = row.text("query")
    qid = row.ident("query_id")
    answers = [a for a in (row.get("answers", list)) if isinstance(a, str) and a.strip()
               and a.strip() != "No Answer Present."]
    well = row.obj.get("wellFormedAnswers")
    if isinstance(well, list):
        answers = [a for a in well if isinstance(a, str) and a.strip()] + answers
    ps = row.get("passages", (dict, list))
    if isinstance(ps, dict):  # columnar inside the row: {is_selected: [...], passage_text: [...], url: [...]}
        texts, sel, urls = ps.get("passage_text"), ps.get("is_selected") or [], ps.get("url") or []
        if not isinstance(texts, list):
            raise row.error("missing list", "passages.passage_text")
        ps = [{"passage_text": t, "is_selected": sel[j] if j < len(sel) else 0,
               "url": urls[j] if j < len(urls) else ""} for j, t in enumerate(texts)]
    passages, sf = [], []
    for j, p in enumerate(ps):
        text = row.text("passage_text", obj=p, name=f"passages[{j}].passage_text")
        title = str(p.get("url") or f"Passage {j + 1}")
        passages.append(Passage(title, [text]))
        if p.get("is_selected"):
            sf.append((title, 0))
    if not answers:
        return None, True
    meta: dict[str, Any] = {"query_type": row.obj.get("query_type")}
    _merge_carelab_meta(row, meta)
    return QAExample(qid, query, answers, passages, sf, "msmarco", 1, meta), False


# --------------------------------------------------------------------------------------------------
# File-level readers and detection
# --------------------------------------------------------------------------------------------------

_JSONL_FORMATS = {"musique": _musique, "longbench": _longbench, "cofca": _cofca, "carelab": _carelab}


def _detect_obj(obj: dict) -> str | None:
    keys = set(obj)
    if {"paragraphs", "question_decomposition"} <= keys or ("paragraphs" in keys and "answerable" in keys):
        return "musique"
    if {"input", "context", "answers"} <= keys:
        return "longbench"
    if "counterfactual" in keys or "original_answer" in keys:
        return "cofca"
    if {"query", "passages"} <= keys:
        return "msmarco"
    if "evidences" in keys or "entity_ids" in keys:
        return "2wiki"
    if {"context", "supporting_facts"} <= keys and "question" in keys:
        return "hotpotqa"
    if {"question", "answers", "passages"} <= keys:
        return "carelab"
    return None


def _head(path: Path, n: int) -> bytes:
    """The first ``n`` bytes of a file, leading whitespace removed (to tell JSON arrays from JSONL)."""
    with check_file(path).open("rb") as fh:
        return fh.read(n).lstrip()


def _first_jsonl_object(path: Path, max_lines: int = 100) -> tuple[dict | None, InputError | None]:
    """The first line that parses as a JSON object (bad lines are the loader's business), and the first error."""
    error = None
    for k, (_, obj) in enumerate(iter_jsonl(path)):
        if isinstance(obj, dict):
            return obj, error
        error = error or (obj if isinstance(obj, InputError) else None)
        if k >= max_lines:
            break
    return None, error


def detect_format(path: str | os.PathLike) -> str:
    """Guess the native format from the file's content (first record); raises ``InputError`` if unclear."""
    p = Path(path)
    head = _head(p, 64)
    first: Any = None
    error: InputError | None = None
    if head.startswith(b"["):
        data = read_json(p)
        first = data[0] if isinstance(data, list) and data else None
    else:  # JSONL (detected from the first good line) or one JSON object
        first, error = _first_jsonl_object(p)
        if head.startswith(b"{") and (first is None or p.suffix == ".json"):
            try:
                whole = read_json(p)
            except InputError as exc:
                whole, error = None, (exc if p.suffix == ".json" else error)
            if isinstance(whole, dict):
                if {"query", "passages"} <= set(whole) and isinstance(whole.get("query"), dict):
                    return "msmarco"
                vals = list(whole.values())[:1]
                if vals and isinstance(vals[0], dict) and {"passage", "qa_pairs"} <= set(vals[0]):
                    return "drop"
                first = whole
    fmt = _detect_obj(first) if isinstance(first, dict) else None
    if fmt is None and first is None and error is not None:
        raise error  # no readable record at all: say what is wrong with the first one
    if fmt is None:
        raise InputError(p, "cannot tell the dataset format from the content; pass --format with one of "
                         + ", ".join(FORMATS))
    return fmt


def _iter_rows(path: Path, fmt: str) -> Iterator[_Row]:
    """Yield raw rows of a file with where-information (line for JSONL, item for JSON arrays)."""
    if _head(path, 64).startswith(b"["):
        data = read_json(path)
        for j, obj in enumerate(data):
            yield _Row(path, f", item {j}", None, obj)
        return
    if fmt in ("drop",) or (fmt == "msmarco" and path.suffix == ".json" and not _looks_jsonl(path)):
        data = read_json(path)
        if not isinstance(data, dict):
            raise InputError(path, "expected a JSON object at the top level")
        yield _Row(path, "", None, data)
        return
    for lineno, obj in iter_jsonl(path):  # a bad line (JSON or UTF-8) arrives as an InputError row
        yield _Row(path, "", lineno, obj)


def _looks_jsonl(path: Path) -> bool:
    with path.open("rb") as fh:
        first = fh.readline().strip()
    try:
        obj = parse_json(first.decode("utf-8"), path, 1)
    except (InputError, UnicodeDecodeError):
        return False
    return isinstance(obj, dict) and "query" in obj and not isinstance(obj.get("query"), dict)


def _convert(fmt: str, row: _Row) -> list[tuple[QAExample | None, bool, _Row]]:
    """Rows -> examples; DROP and columnar MS MARCO expand one top-level object into many rows."""
    if isinstance(row.obj, InputError):
        raise row.obj
    if not isinstance(row.obj, dict):
        raise row.error("expected a JSON object")
    if fmt in ("hotpotqa", "2wiki"):
        return [(_hotpot_like(row, fmt), False, row)]
    if fmt in _JSONL_FORMATS:
        return [(_JSONL_FORMATS[fmt](row), False, row)]
    if fmt == "msmarco":
        if isinstance(row.obj.get("query"), dict):  # official v2.1 columnar file
            return [(None, False, _Row(row.path, f", query {k}", None, _msmarco_column(row.obj, k)))
                    for k in row.obj["query"]]
        ex, unanswerable = _msmarco_hf_row(row)
        return [(ex, unanswerable, row)]
    if fmt == "drop":
        out = []
        for pid, entry in row.obj.items():
            sub = _Row(row.path, f", passage {pid}", None, entry)
            out.append((None, False, sub))
        return out
    raise InputError(row.path, f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _guarded(row: _Row, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a row converter so that a shape no check foresaw still names the file and line, never a traceback."""
    try:
        return fn(*args)
    except InputError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise row.error(f"malformed row ({type(exc).__name__}: {exc})") from None


def _msmarco_column(data: dict, k: str) -> dict:
    row = {col: (vals.get(k) if isinstance(vals, dict) else None) for col, vals in data.items()}
    if isinstance(row.get("wellFormedAnswers"), str):  # the official file stores "[]" strings
        row["wellFormedAnswers"] = []
    return row


def _drop_passage(sub: _Row, pid: str, on_error: Callable[[InputError], None] | None = None) -> list[QAExample]:
    """The questions of one DROP passage; a bad question is reported to ``on_error`` (or raised)."""
    passage = sub.text("passage")
    pairs = sub.get("qa_pairs", list)
    sents = split_sentences(passage)
    out = []
    for j, qa in enumerate(pairs):
        q = _Row(sub.path, f"{sub.where}, qa_pairs[{j}]", None, qa)
        try:
            question = q.text("question")
            answers = [_drop_answer(q, q.get("answer", dict), "answer")]
        except InputError as exc:
            if on_error is None:
                raise
            on_error(exc)
            continue
        for v in qa.get("validated_answers") or []:
            try:
                a = _drop_answer(q, v, "validated_answers")
            except InputError:
                continue
            if a not in answers:
                answers.append(a)
        meta: dict[str, Any] = {"passage_id": pid}
        sf = _merge_carelab_meta(q, meta) or []
        out.append(QAExample(q.ident("query_id", required=False, default=f"{pid}-{j}") or f"{pid}-{j}", question,
                             answers, [Passage("", sents)], sf, "drop", 1, meta))
    return out


def load_examples_with_report(path: str | os.PathLike, format: str | None = None, *, skip_invalid: bool = False,
                              limit: int | None = None) -> tuple[list[QAExample], LoadReport]:
    """Like :func:`load_examples`, also returning the :class:`LoadReport` (kept/skipped counts)."""
    p = check_file(path)
    fmt = format or detect_format(p)
    if fmt == "2wikimqa":
        fmt = "2wiki"
    if fmt not in FORMATS:
        raise InputError(p, f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}", field="format")
    report = LoadReport(str(p), fmt)
    out: list[QAExample] = []

    def skip(exc: InputError) -> None:
        if not skip_invalid:
            raise exc
        report.skipped += 1
        if len(report.reasons) < 20:
            report.reasons.append(str(exc))

    def add(ex: QAExample | None, unanswerable: bool) -> bool:
        if unanswerable or ex is None:
            report.unanswerable += int(unanswerable)
            return False
        out.append(ex)
        return limit is not None and len(out) >= limit

    for row in _iter_rows(p, fmt):
        try:
            converted = _guarded(row, _convert, fmt, row)
        except InputError as exc:
            skip(exc)
            continue
        for ex, unanswerable, sub in converted:
            try:
                if fmt == "drop":
                    exs: list[tuple[QAExample | None, bool]] = [
                        (e, False) for e in _guarded(sub, _drop_passage, sub, sub.where.split()[-1],
                                                     skip if skip_invalid else None)]
                elif fmt == "msmarco" and ex is None and not unanswerable:
                    exs = [_guarded(sub, _msmarco_hf_row, sub)]
                else:
                    exs = [(ex, unanswerable)]
            except InputError as exc:
                skip(exc)
                continue
            for e, u in exs:
                if add(e, u):
                    report.loaded = len(out)
                    return out, report
    report.loaded = len(out)
    if report.skipped:
        log.warning("%s", report.summary())
    return out, report


def load_examples(path: str | os.PathLike, format: str | None = None, *, skip_invalid: bool = False,
                  limit: int | None = None) -> list[QAExample]:
    """Load a native dataset file into :class:`QAExample` records.

    ``format`` is one of :data:`FORMATS` (``None``: detect from the content). A malformed row raises
    ``carelab.runs.InputError`` naming the file, line (JSONL) or item (JSON), and field; with
    ``skip_invalid`` such rows are skipped and counted (a warning is logged; see
    :func:`load_examples_with_report` for the counts).
    """
    return load_examples_with_report(path, format, skip_invalid=skip_invalid, limit=limit)[0]
