"""The three-stage CARE SFT data pipeline: reason -> keep correct -> inject evidence -> keep complete -> tag.

Why this shape (CARE paper, §SFT data): a reasoning model answers each labelled question and only
correct answers survive (stage 1); a fact-injection model rewrites the kept reasoning so it states the
gold supporting facts, and only rewrites containing all of them survive (stage 2); the facts are then
wrapped in retrieval tags by :mod:`carelab.care.format` (stage 3), giving SFT chat records.

Nothing is lost on a kill: every finished item is appended to the output at once, every dropped item
to ``<out>.dropped.jsonl``, and every backend answer to ``<out>.cache.jsonl`` under a key of (stage,
item, item content, backend, prompt version) — so a rerun skips finished work and repeats no API call.
Per-stage kept/dropped counts are printed and saved in ``<out>.stats.json``; the config beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carelab import distributed
from carelab.care import format as care_format
from carelab.care.data.examples import QAExample
from carelab.care.data.loaders import load_examples_with_report
from carelab.care.eval.metrics import best_over_golds, exact_match, qa_f1_score
from carelab.care.quotes import locate, quote_match
from carelab.care.sft.backends import (
    PROMPT_VERSION,
    Backend,
    BackendOptions,
    clean_rewrite,
    make_backend,
    parse_reasoning,
)
from carelab.distributed import ShardedAppender
from carelab.runs import read_jsonl, save_config


@dataclass
class SftDataConfig:
    """Everything that decides the pipeline's output (saved beside it as ``<out>.config.json``)."""

    input: str = ""
    out: str = ""
    format: str | None = None
    reasoner: str = "rule"
    injector: str = "rule"
    limit: int | None = None
    skip_invalid: bool = False
    metric: str = "f1"  # stage-1 correctness: "f1" (LongBench-normalised token F1) or "em"
    threshold: float = 0.8
    completeness: str = "verbatim"  # stage-2: "verbatim" or "similarity"
    similarity: float = 0.9
    batch_size: int = 16
    max_new_tokens: int = 384
    base_url: str | None = None
    api_key: str | None = None  # never saved
    concurrency: int = 4
    timeout: float = 120.0
    retries: int = 4
    item_delay: float = 0.0
    system_prompt: str | None = None  # the SFT record's system prompt; None = format.DEFAULT_SYSTEM_PROMPT
    prompt_version: str = PROMPT_VERSION


def sidecar(out: str | Path, what: str) -> Path:
    """``runs/sft.jsonl`` -> ``runs/sft.<what>`` (stats.json, cache.jsonl, dropped.jsonl, config.json)."""
    p = Path(out)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.with_name(f"{stem}.{what}")


class StageCache:
    """Append-only cache of backend outputs keyed by (stage, item, content, backend, prompt version)."""

    def __init__(self, path: Path):
        self.values: dict[str, str] = {}
        if path.exists():
            for _, obj in read_jsonl(path, skip_invalid=True):
                if "key" in obj and "value" in obj:
                    self.values[obj["key"]] = obj["value"]
        self.appender = ShardedAppender(path, key="key")
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(stage: str, ex: QAExample, backend: Backend, version: str, extra: str = "") -> str:
        content = json.dumps([ex.question, ex.answers, ex.context, extra], ensure_ascii=False)
        digest = hashlib.sha1(content.encode()).hexdigest()[:16]
        return f"{stage}|{ex.id}|{digest}|{backend.name}|{version}"

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def put(self, key: str, value: str, **info: Any) -> None:
        self.values[key] = value
        self.appender.write({"key": key, "value": value, **info})


def correctness(pred: str, golds: list[str], metric: str) -> float:
    fn = exact_match if metric == "em" else qa_f1_score
    return best_over_golds(fn, pred, golds) if pred.strip() else 0.0


def fact_present(fact: str, text: str, mode: str, threshold: float) -> bool:
    """Stage 2's completeness test: the fact verbatim (whitespace-collapsed) in the text, or in ``similarity``
    mode a word window at least ``threshold`` similar (the quote matcher's rule, with this threshold)."""
    if not care_format.collapse_ws(fact):
        return True  # nothing to find (a missing supporting sentence) is not a missing fact
    label = quote_match(fact, care_format.collapse_ws(text), threshold)
    return label == "exact" or (mode == "similarity" and label == "fuzzy")


def insert_tags(text: str, facts: list[str], answer: str) -> str:
    """Stage 3: wrap every supporting fact in ``text`` in retrieval tags (via format.render).

    A fact present only approximately (similarity mode) replaces its best-matching word window, so every
    quote in the output is the context's exact wording.
    """
    text = care_format.collapse_ws(text)
    spans: list[tuple[int, int, str]] = []
    for fact in facts:
        f = care_format.collapse_ws(fact)
        found = locate(f, text, threshold=0.0)  # the exact occurrence, else the most similar word window
        if found is not None:
            spans.append((found.start, found.end, f))
    spans.sort()
    parts: list[tuple[str, bool]] = []
    cursor = 0
    for start, end, f in spans:
        if start < cursor:  # overlapping match: keep the first
            continue
        if text[cursor:start].strip():
            parts.append((text[cursor:start].strip(), False))
        parts.append((f, True))
        cursor = end
    if text[cursor:].strip():
        parts.append((text[cursor:].strip(), False))
    return care_format.render(parts, answer)


def _level(ex: QAExample) -> str:
    lvl = ex.meta.get("level")
    if isinstance(lvl, str) and lvl:
        return lvl
    return "hard" if ex.hops >= 3 else "medium" if ex.hops == 2 else "easy"


def build_record(ex: QAExample, reasoning: str, output: str, system: str, info: dict) -> dict:
    """The SFT record: dataset-card fields plus chat ``messages`` (system, user, tagged assistant turn)."""
    messages = care_format.build_messages(ex.context, ex.question, system)
    prompt = messages[-1]["content"]
    return {
        "id": ex.id, "question": ex.question, "answer": ex.answer, "level": _level(ex), "context": ex.context,
        "supporting_facts": [[t, i] for t, i in ex.supporting_facts], "reasoning": reasoning, "output": output,
        "system": system, "prompt": prompt, "messages": messages + [{"role": "assistant", "content": output}],
        "source": ex.source, **info,
    }


_STAGES = ("stage1_reasoning", "stage2_evidence", "stage3_tags")


def run_pipeline(cfg: SftDataConfig, echo: Callable[[str], None] = print,
                 reasoner: Backend | None = None, injector: Backend | None = None) -> dict:
    """Run (or resume) the pipeline; returns the stats dict also saved to ``<out>.stats.json``.

    Under a multi-process launch each process runs its share of the items (its own backend copy) and the
    main process merges the records, drops and cache into the shared files and sums the counts.
    """
    if cfg.metric not in ("f1", "em"):
        raise ValueError(f"--metric must be f1 or em, got {cfg.metric!r}")
    if cfg.completeness not in ("verbatim", "similarity"):
        raise ValueError(f"--completeness must be verbatim or similarity, got {cfg.completeness!r}")
    if not 0.0 <= cfg.threshold <= 1.0 or not 0.0 <= cfg.similarity <= 1.0:
        raise ValueError("--threshold and --similarity must be between 0 and 1")
    t0 = time.time()
    examples, report = load_examples_with_report(cfg.input, cfg.format, skip_invalid=cfg.skip_invalid,
                                                 limit=cfg.limit)
    main = distributed.is_main()
    if main:
        echo(report.summary())
    seen: set[str] = set()
    unique = []
    for ex in examples:
        if ex.id not in seen:
            seen.add(ex.id)
            unique.append(ex)
    duplicates = len(examples) - len(unique)
    examples = distributed.shard(unique)

    opts = BackendOptions(batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, base_url=cfg.base_url,
                          api_key=cfg.api_key, concurrency=cfg.concurrency, timeout=cfg.timeout, retries=cfg.retries)
    reasoner = reasoner or make_backend(cfg.reasoner, opts)
    injector = injector or make_backend(cfg.injector, opts)
    system = cfg.system_prompt or care_format.DEFAULT_SYSTEM_PROMPT
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if main:
        saved = dataclasses.replace(cfg, api_key="***" if cfg.api_key else None)
        save_config(saved, out.parent, name=sidecar(out, "config.json").name)
    # what a killed multi-process run left in its part files counts as done (before anyone reads)
    distributed.merge_all([out, sidecar(out, "dropped.jsonl")])
    distributed.merge_all([sidecar(out, "cache.jsonl")], key="key")
    output = ShardedAppender(out)
    dropped_log = ShardedAppender(sidecar(out, "dropped.jsonl"))
    cache = StageCache(sidecar(out, "cache.jsonl"))
    counts = {s: {"in": 0, "kept": 0, "dropped": 0} for s in _STAGES}
    reasons: dict[str, int] = {}
    failed = 0
    written = 0
    version = cfg.prompt_version

    def drop(ex: QAExample, stage: str, why: str, **info: Any) -> None:
        counts[stage]["dropped"] += 1
        reasons[f"{stage}: {why}"] = reasons.get(f"{stage}: {why}", 0) + 1
        if ex.id not in dropped_log:
            dropped_log.write({"id": ex.id, "stage": stage, "reason": why, **info})

    from rich.progress import Progress

    with Progress(transient=True, disable=not main) as bar:
        task = bar.add_task("sft-data", total=len(examples))
        for start in range(0, len(examples), cfg.batch_size):
            batch = examples[start:start + cfg.batch_size]
            # ---- stage 1: reasoning (only items without a cached answer reach the backend)
            k1 = {ex.id: StageCache.key("reason", ex, reasoner, version) for ex in batch}
            need = [ex for ex in batch if cache.get(k1[ex.id]) is None]
            cache.hits += len(batch) - len(need)
            if need:
                cache.misses += len(need)
                for ex, raw in zip(need, reasoner.reason(need), strict=True):
                    if raw is not None:
                        cache.put(k1[ex.id], raw, stage="reason", id=ex.id, backend=reasoner.name, version=version)
            stage2: list[tuple[QAExample, str, str, float]] = []
            for ex in batch:
                raw = cache.get(k1[ex.id])
                if raw is None:
                    failed += 1  # backend failure: not cached, retried on the next run
                    continue
                counts["stage1_reasoning"]["in"] += 1
                reasoning, pred = parse_reasoning(raw)
                score = correctness(pred, ex.answers, cfg.metric)
                if not reasoning or score < cfg.threshold:
                    drop(ex, "stage1_reasoning", "no reasoning" if not reasoning else "incorrect answer",
                         prediction=pred, score=round(score, 4))
                    continue
                counts["stage1_reasoning"]["kept"] += 1
                stage2.append((ex, reasoning, pred, score))
            # ---- stage 2: evidence integration + completeness filter
            facts_of = {ex.id: ex.supporting_sentences() for ex, *_ in stage2}
            todo = []
            for ex, reasoning, pred, score in stage2:
                counts["stage2_evidence"]["in"] += 1
                if not facts_of[ex.id]:
                    drop(ex, "stage2_evidence", "no supporting facts")
                    continue
                todo.append((ex, reasoning, pred, score))
            k2 = {ex.id: StageCache.key("inject", ex, injector, version, extra=reasoning)
                  for ex, reasoning, _, _ in todo}
            need2 = [(ex, r) for ex, r, _, _ in todo if cache.get(k2[ex.id]) is None]
            if need2:
                cache.misses += len(need2)
                outs = injector.inject([e for e, _ in need2], [r for _, r in need2],
                                       [facts_of[e.id] for e, _ in need2])
                for (ex, _), raw in zip(need2, outs, strict=True):
                    if raw is not None:
                        cache.put(k2[ex.id], raw, stage="inject", id=ex.id, backend=injector.name, version=version)
            cache.hits += len(todo) - len(need2)
            for ex, reasoning, pred, score in todo:
                raw = cache.get(k2[ex.id])
                if raw is None:
                    failed += 1
                    counts["stage2_evidence"]["in"] -= 1
                    continue
                rewrite = clean_rewrite(raw)
                facts = facts_of[ex.id]
                missing = [f for f in facts if not fact_present(f, rewrite, cfg.completeness, cfg.similarity)]
                if missing:
                    drop(ex, "stage2_evidence", "supporting fact missing", missing=missing[:3])
                    continue
                counts["stage2_evidence"]["kept"] += 1
                # ---- stage 3: retrieval tags (format.render owns the tag strings)
                counts["stage3_tags"]["in"] += 1
                output_text = insert_tags(rewrite, facts, ex.answer)
                parsed = care_format.parse(output_text)
                context = care_format.collapse_ws(ex.context)
                if not parsed.well_formed or any(q not in context for q in parsed.retrievals):
                    drop(ex, "stage3_tags", "tagged output malformed or quote not in context")
                    continue
                counts["stage3_tags"]["kept"] += 1
                if ex.id not in output:
                    info = {"stage1_prediction": pred, "stage1_score": round(score, 4),
                            "reasoner": reasoner.name, "injector": injector.name, "prompt_version": version}
                    output.write(build_record(ex, reasoning, output_text, system, info))
                    written += 1
            if cfg.item_delay and (need or need2):
                time.sleep(cfg.item_delay * len(batch))
            bar.advance(task, len(batch))
    distributed.merge_all([out, sidecar(out, "dropped.jsonl")])
    distributed.merge_all([sidecar(out, "cache.jsonl")], key="key")
    totals = distributed.sum_counts({"counts": counts, "reasons": reasons, "failed": failed, "written": written,
                                     "hits": cache.hits, "misses": cache.misses})
    counts, reasons, failed, written = totals["counts"], totals["reasons"], totals["failed"], totals["written"]
    n_records = sum(1 for _ in read_jsonl(out, skip_invalid=True)) if out.exists() else 0
    stats = {
        "input": cfg.input, "format": report.format, "loaded": report.loaded, "skipped_invalid": report.skipped,
        "unanswerable": report.unanswerable, "duplicate_ids": duplicates, "backend_failures": failed,
        "stages": counts, "drop_reasons": reasons, "output_records": n_records, "written_this_run": written,
        "cache": {"hits": totals["hits"], "misses": totals["misses"]}, "reasoner": reasoner.name,
        "injector": injector.name, "prompt_version": version, "seconds": round(time.time() - t0, 2),
    }
    if not main:
        return stats
    sidecar(out, "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    for s in _STAGES:
        c = counts[s]
        echo(f"{s}: {c['in']} in, {c['kept']} kept, {c['dropped']} dropped")
    if failed:
        echo(f"{failed} items failed in a backend and were not cached; rerun to retry them")
    echo(f"{n_records} records in {out} ({written} new); stats in {sidecar(out, 'stats.json')}")
    return stats
