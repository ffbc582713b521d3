"""The robustness experiment: watermarked vs plain HumanEval code, before and after semantics-preserving edits.

Why this shape: the stages are cached one by one (generations, executions, transformed detections,
transformed executions) as append-only JSONL keyed by id, so a killed run resumes where it stopped and
a rerun with more transforms or depths reuses every generation. The protocol follows the paper:
score only the completion body, keep programs that execute, report TPR/FPR at the z threshold on
watermarked/plain code after the same edit — and, beyond the paper, a real ROC AUC, TPR at 1 % FPR,
the share of tokens changed and pass@1 before/after each edit.

Stages (out DIR):
  generations.jsonl   one completion per (variant, task): variant = plain | kgw | unigram
  executions.jsonl    sandbox status of each original program (prompt + completion + tests)
  detections.jsonl    z-scores of every kept program after each edit at each depth
  checks.jsonl        sandbox status of the edited programs at the check depth (semantics preserved?)
  metrics.csv, table.md, report.md, tpr_vs_depth.png, config.json
"""

from __future__ import annotations

import difflib
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from carelab.runs import JsonlAppender, read_jsonl, save_config
from carelab.watermark.humaneval import (
    PROMPT_STYLES,
    Problem,
    build_program,
    completion_of,
    load_problems,
    prompt_ids,
    scored_text,
)
from carelab.watermark.transforms import BASE_TRANSFORMS, TRANSFORMS, TransformError, apply_steps

log = logging.getLogger(__name__)

SCHEMES = ("kgw", "unigram")
EXECUTES = ("pass", "fail")  # ran to the end of the tests (an assertion may fail); crashes/timeouts do not
ROW_NAMES = {"original": "original", "rename": "Rename", "add_dead_code": "AddDeadCode",
             "insert_print": "InsertPrint", "wrap_try_catch": "WrapTryCatch", "mixed": "Mixed"}

# The paper's Table (CodeLlama-7B, d = 5): block A taken as KGW/UMD, block B as Unigram (unverified).
PAPER_TABLE = {
    "original": (0.82, 0.01, 0.72, 0.01, None),
    "rename": (0.70, 0.03, 0.25, 0.0, 0.05),
    "add_dead_code": (0.45, 0.04, 0.03, 0.0, 0.36),
    "insert_print": (0.61, 0.04, 0.26, 0.0, 0.12),
    "wrap_try_catch": (0.28, 0.01, 0.09, 0.0, 0.27),
    "mixed": (0.35, 0.03, 0.12, 0.0, 0.22),
}


@dataclass
class RobustnessConfig:
    """Everything that defines a run; saved as ``config.json`` beside the results."""

    out: str = "runs/watermark"
    model: str = "smollm2-135m-instruct"
    schemes: list[str] = field(default_factory=lambda: list(SCHEMES))
    transforms: list[str] = field(default_factory=lambda: list(TRANSFORMS))
    depths: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    check_depth: int | None = None  # sandbox the edited programs at this depth (default: the largest)
    limit: int | None = None
    problems_path: str | None = None
    prompt_style: str = "chat"
    max_new_tokens: int = 200
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 16
    seed: int = 0
    gamma: float = 0.25
    delta: float = 2.0
    hash_key: int = 15485863
    unigram_key: int = 0
    z_threshold: float = 3.0
    ignore_repeated_ngrams: bool = False
    keep: str = "executes"  # executes | all | passes
    workers: int = 2
    threads: int | None = None  # torch threads for generation (None: torch's default)
    wall_s: float = 10.0
    no_isolation: bool = False  # run generated code even where the OS sandbox (bubblewrap) is unavailable

    def validate(self) -> None:
        bad = [s for s in self.schemes if s not in SCHEMES]
        if bad or not self.schemes:
            raise ValueError(f"unknown scheme(s) {bad}; use kgw, unigram or both")
        bad = [t for t in self.transforms if t not in TRANSFORMS]
        if bad or not self.transforms:
            raise ValueError(f"unknown transform(s) {bad}; choose from {', '.join(TRANSFORMS)} or 'all'")
        if not self.depths or min(self.depths) < 1:
            raise ValueError(f"depths must be >= 1, got {self.depths}")
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}")
        if self.keep not in ("executes", "all", "passes"):
            raise ValueError("keep must be executes, all or passes")

    @property
    def max_depth(self) -> int:
        return max(self.depths)


def _stable_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little")


def build_schemes(cfg: RobustnessConfig, vocab_size: int) -> dict:
    from carelab.watermark.schemes import KGW, Unigram

    out = {}
    if "kgw" in cfg.schemes:
        out["kgw"] = KGW(vocab_size, gamma=cfg.gamma, delta=cfg.delta, hash_key=cfg.hash_key,
                         z_threshold=cfg.z_threshold, ignore_repeated_ngrams=cfg.ignore_repeated_ngrams)
    if "unigram" in cfg.schemes:
        out["unigram"] = Unigram(vocab_size, gamma=cfg.gamma, delta=cfg.delta, key=cfg.unigram_key,
                                 z_threshold=cfg.z_threshold, ignore_repeated_ngrams=cfg.ignore_repeated_ngrams)
    return out


# ----------------------------------------------------------------------------- stage 1: generation
def generate_stage(cfg: RobustnessConfig, problems: Sequence[Problem], model, tokenizer, schemes: dict,
                   progress=None) -> dict[str, dict]:
    """Generate (or load from the cache) one completion per variant and problem."""
    import torch
    from transformers import LogitsProcessorList

    from carelab.generation import GenerationSettings, generate_from_ids

    cache = JsonlAppender(Path(cfg.out) / "generations.jsonl")
    variants = ["plain", *schemes]
    todo = [(v, p) for v in variants for p in problems if f"{v}:{p.task_id}" not in cache]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = progress.add_task("generate", total=len(todo)) if progress else None
    for v in variants:
        pending = [p for p in problems if f"{v}:{p.task_id}" not in cache]
        proc = None if v == "plain" else LogitsProcessorList([schemes[v].logits_processor()])
        for start in range(0, len(pending), cfg.batch_size):
            batch = pending[start:start + cfg.batch_size]
            settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, do_sample=True,
                                          temperature=cfg.temperature, top_p=cfg.top_p,
                                          batch_size=cfg.batch_size,
                                          seed=_stable_seed(cfg.seed, v, batch[0].task_id))
            ids = [prompt_ids(tokenizer, p, cfg.prompt_style) for p in batch]
            texts = generate_from_ids(model, tokenizer, ids, settings, logits_processor=proc)
            for p, raw in zip(batch, texts, strict=True):
                cache.write({"id": f"{v}:{p.task_id}", "variant": v, "task_id": p.task_id, "raw": raw,
                             "completion": completion_of(raw, cfg.prompt_style)})
            if progress:
                progress.advance(task, len(batch))
    return {obj["id"]: obj for _, obj in read_jsonl(cache.path, skip_invalid=True)}


# ----------------------------------------------------------------------------- stage 2: execution
def _sandbox_stage(path: Path, jobs: list[tuple[str, dict, str]], cfg: RobustnessConfig, progress,
                   label: str) -> dict[str, dict]:
    from carelab.watermark.sandbox import Limits, run_humaneval

    cache = JsonlAppender(path)
    todo = [j for j in jobs if j[0] not in cache]
    limits = Limits(wall_s=cfg.wall_s, cpu_s=int(cfg.wall_s), allow_unisolated=cfg.no_isolation)
    task = progress.add_task(label, total=len(todo)) if progress else None
    from concurrent.futures import ThreadPoolExecutor

    def one(job):
        key, problem, program = job
        r = run_humaneval(problem, program, limits)
        return {"id": key, "status": r.status, "detail": r.detail[:200], "seconds": round(r.duration_s, 3)}

    with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        for rec in pool.map(one, todo):
            cache.write(rec)
            if progress:
                progress.advance(task)
    return {obj["id"]: obj for _, obj in read_jsonl(cache.path, skip_invalid=True)}


def kept(cfg: RobustnessConfig, status: str) -> bool:
    if cfg.keep == "all":
        return True
    if cfg.keep == "passes":
        return status == "pass"
    return status in EXECUTES


# ----------------------------------------------------------------------------- stage 3: edits + detection
def token_share_changed(before: Sequence[int], after: Sequence[int]) -> float:
    """Share of the edited text's tokens that are not aligned with the original (difflib matching blocks)."""
    if not after:
        return 0.0
    sm = difflib.SequenceMatcher(a=list(before), b=list(after), autojunk=False)
    matched = sum(b.size for b in sm.get_matching_blocks())
    return 1.0 - matched / len(after)


def _detectors_for(variant: str, schemes: dict) -> list[str]:
    return list(schemes) if variant == "plain" else [variant]


def detect_stage(cfg: RobustnessConfig, problems: dict[str, Problem], gens: dict[str, dict],
                 execs: dict[str, dict], tokenizer, schemes: dict, progress=None) -> dict[str, dict]:
    """Edit every kept program at every depth and score it; also returns the edited programs to check."""
    cache = JsonlAppender(Path(cfg.out) / "detections.jsonl")
    items = [g for g in gens.values() if g["variant"] in ("plain", *schemes) and g["task_id"] in problems
             and kept(cfg, execs.get(g["id"], {}).get("status", "error"))]
    keys = [(g, t) for g in items for t in ["original", *cfg.transforms]]
    todo = [(g, t) for g, t in keys if f"{g['id']}|{t}" not in cache]
    task = progress.add_task("edit + detect", total=len(todo)) if progress else None
    for g, t in todo:
        p = problems[g["task_id"]]
        program = build_program(p, g["completion"], cfg.prompt_style)
        base_text = scored_text(program, p.entry_point)
        base_ids = tokenizer(base_text, add_special_tokens=False)["input_ids"]
        rec: dict = {"id": f"{g['id']}|{t}", "gen": g["id"], "variant": g["variant"], "task_id": g["task_id"],
                     "transform": t, "depths": {}}
        if t == "original":
            steps = [(program, 0)]
            depth_list = [0]
        else:
            try:
                steps = apply_steps(program, t, seed=_stable_seed(cfg.seed, g["id"], t), steps=cfg.max_depth,
                                    target=p.entry_point)
            except TransformError as exc:
                steps = [(program, 0)] * cfg.max_depth
                rec["error"] = str(exc)[:200]
            depth_list = list(range(1, cfg.max_depth + 1))
        for d, (code, edits) in zip(depth_list, steps, strict=True):
            text = scored_text(code, p.entry_point)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            entry = {"edits": edits, "tokens": len(ids), "changed": token_share_changed(base_ids, ids), "z": {}}
            for s in _detectors_for(g["variant"], schemes):
                det = schemes[s].detect(ids)
                entry["z"][s] = det.z
            if d == (cfg.check_depth or cfg.max_depth) or d == 0:
                entry["program"] = code
            rec["depths"][str(d)] = entry
        cache.write(rec)
        if progress:
            progress.advance(task)
    return {obj["id"]: obj for _, obj in read_jsonl(cache.path, skip_invalid=True)}


# ----------------------------------------------------------------------------- metrics
def roc_auc(pos: Sequence[float], neg: Sequence[float]) -> float | None:
    """Area under the ROC curve = P(z_pos > z_neg) + 0.5 P(tie) (Mann-Whitney U)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if len(pos) == 0 or len(neg) == 0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def tpr_at_fpr(pos: Sequence[float], neg: Sequence[float], fpr: float = 0.01) -> float | None:
    """TPR at the strictest threshold whose empirical FPR is <= ``fpr`` (z > threshold counts as positive).

    With n negatives, floor(fpr*n) of them may lie above the threshold; with fewer than 100 negatives at
    1 % this means the threshold is the largest negative z.
    """
    pos, neg = np.asarray(pos, float), np.sort(np.asarray(neg, float))[::-1]
    if len(pos) == 0 or len(neg) == 0:
        return None
    k = int(np.floor(fpr * len(neg)))
    thr = neg[k] if k < len(neg) else -np.inf
    return float(np.mean(pos > thr))


def edited_at(rec: dict, depth: str) -> dict | None:
    """``rec``'s entry at ``depth`` if that many edits were really applied, else None.

    A program with no valid location left keeps its previous version (``apply_steps``); counting it at depth
    d would credit the watermark with surviving edits that never happened.
    """
    entry = rec["depths"].get(depth)
    if entry is None or int(entry.get("edits", depth)) != int(depth):
        return None
    return entry


def compute_metrics(cfg: RobustnessConfig, dets: dict[str, dict], checks: dict[str, dict],
                    execs: dict[str, dict]) -> list[dict]:
    """One row per (scheme, transform, depth) with TPR/FPR, AUC, TPR@1%FPR, tokens changed, pass@1.

    Depth d counts only programs that received d edits; ``n_fewer_edits`` counts those that could not.
    """
    rows = []
    thr = cfg.z_threshold
    check_d = str(cfg.check_depth or cfg.max_depth)
    for s in cfg.schemes:
        for t in ["original", *cfg.transforms]:
            depths = ["0"] if t == "original" else [str(d) for d in sorted(cfg.depths)]
            all_pos = [r for r in dets.values() if r["variant"] == s and r["transform"] == t]
            all_neg = [r for r in dets.values() if r["variant"] == "plain" and r["transform"] == t]
            for d in depths:
                recs_pos = [r for r in all_pos if edited_at(r, d) is not None]
                recs_neg = [r for r in all_neg if edited_at(r, d) is not None and s in r["depths"][d]["z"]]
                pos = [r["depths"][d]["z"][s] for r in recs_pos]
                neg = [r["depths"][d]["z"][s] for r in recs_neg]
                changed = [r["depths"][d]["changed"] for r in recs_pos]
                short = sum(1 for r in all_pos + all_neg if d in r["depths"] and edited_at(r, d) is None)
                row = {"scheme": s, "transform": t, "depth": int(d), "n_pos": len(pos), "n_neg": len(neg),
                       "n_fewer_edits": short,
                       "tpr": float(np.mean(np.asarray(pos) > thr)) if pos else None,
                       "fpr": float(np.mean(np.asarray(neg) > thr)) if neg else None,
                       "auc": roc_auc(pos, neg), "tpr_at_1fpr": tpr_at_fpr(pos, neg, 0.01),
                       "tokens_changed": float(np.mean(changed)) if changed else None,
                       "mean_z_pos": float(np.mean(pos)) if pos else None,
                       "mean_z_neg": float(np.mean(neg)) if neg else None}
                if t == "original" or d == check_d:
                    before = [execs[r["gen"]]["status"] for r in recs_pos if r["gen"] in execs]
                    row["pass1_before"] = float(np.mean([b == "pass" for b in before])) if before else None
                    if t != "original":
                        after = [checks.get(r["id"], {}).get("status") for r in recs_pos]
                        after = [a for a in after if a is not None]
                        same = [checks[r["id"]]["status"] == execs[r["gen"]]["status"] for r in recs_pos
                                if r["id"] in checks and r["gen"] in execs]
                        row["pass1_after"] = float(np.mean([a == "pass" for a in after])) if after else None
                        row["same_outcome"] = float(np.mean(same)) if same else None
                rows.append(row)
    return rows


def paper_table(cfg: RobustnessConfig, rows: list[dict]) -> str:
    """Markdown table in the paper's layout at the largest depth, with the extra columns beside it."""
    from carelab.report import fmt

    d = cfg.max_depth
    get = {(r["scheme"], r["transform"], r["depth"]): r for r in rows}
    head = ["transformation"]
    for s in cfg.schemes:
        head += [f"{s.upper()} TPR / FPR", f"{s.upper()} AUC", f"{s.upper()} TPR@1%FPR"]
    head += ["tokens changed", "pass@1 before → after", "same outcome"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in ["original", *cfg.transforms]:
        depth = 0 if t == "original" else d
        cells = [ROW_NAMES.get(t, t)]
        changed, passes, same = [], [], []
        for s in cfg.schemes:
            r = get.get((s, t, depth), {})
            cells += [f"{fmt(r.get('tpr'))} / {fmt(r.get('fpr'))}", fmt(r.get("auc")), fmt(r.get("tpr_at_1fpr"))]
            if r.get("tokens_changed") is not None and t != "original":
                changed.append(r["tokens_changed"])
            if r.get("pass1_before") is not None:
                passes.append((r.get("pass1_before"), r.get("pass1_after")))
            if r.get("same_outcome") is not None:
                same.append(r["same_outcome"])
        cells.append(fmt(float(np.mean(changed))) if changed else "–")
        if passes and t != "original":
            b = np.mean([p[0] for p in passes])
            a = [p[1] for p in passes if p[1] is not None]
            cells.append(f"{b:.2f} → {fmt(float(np.mean(a))) if a else '–'}")
        elif passes:
            cells.append(f"{np.mean([p[0] for p in passes]):.2f}")
        else:
            cells.append("–")
        cells.append(fmt(float(np.mean(same))) if same else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paper_reference_table() -> str:
    lines = ["| transformation | A (KGW?) TPR / FPR | B (Unigram?) TPR / FPR | tokens changed |", "|---|---|---|---|"]
    for t, (at, af, bt, bf, ch) in PAPER_TABLE.items():
        lines.append(f"| {ROW_NAMES[t]} | {at:.2f} / {af:.2f} | {bt:.2f} / {bf:.2f} | "
                     f"{'–' if ch is None else f'{ch:.2f}'} |")
    return "\n".join(lines) + "\n"


def plot_depth(cfg: RobustnessConfig, rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from carelab.report import save_figure

    fig, axes = plt.subplots(2, len(cfg.schemes), figsize=(5.2 * len(cfg.schemes), 7.2), squeeze=False)
    for col, s in enumerate(cfg.schemes):
        for row, (metric, label) in enumerate([("tpr", f"TPR at z > {cfg.z_threshold:g}"), ("auc", "ROC AUC")]):
            ax = axes[row][col]
            base = next((r[metric] for r in rows if r["scheme"] == s and r["transform"] == "original"), None)
            for t in cfg.transforms:
                pts = sorted((r["depth"], r[metric]) for r in rows if r["scheme"] == s and r["transform"] == t
                             and r[metric] is not None)
                if base is not None:
                    pts = [(0, base), *pts]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=ROW_NAMES.get(t, t))
            ax.set_title(f"{s.upper()}: {label}")
            ax.set_xlabel("edits d")
            ax.set_ylabel(label)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- driver
def run(cfg: RobustnessConfig, model=None, tokenizer=None) -> dict:
    """Run (or resume) the whole experiment; returns paths and the headline rows."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from carelab.report import markdown_table, write_csv

    cfg.validate()
    from carelab.watermark.sandbox import Limits, require_isolation

    require_isolation(Limits(allow_unisolated=cfg.no_isolation))  # refuse before hours of generation, not after
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    problems_list = load_problems(cfg.problems_path, cfg.limit)
    problems = {p.task_id: p for p in problems_list}
    if model is None or tokenizer is None:
        from carelab.models import load_model

        model, tokenizer = load_model(cfg.model)
    vocab = int(model.config.vocab_size)
    schemes = build_schemes(cfg, vocab)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as prog:
        gens = generate_stage(cfg, problems_list, model, tokenizer, schemes, prog)
        gens = {k: v for k, v in gens.items() if v["task_id"] in problems}
        jobs = [(g["id"], problems[g["task_id"]].as_dict(),
                 build_program(problems[g["task_id"]], g["completion"], cfg.prompt_style)) for g in gens.values()]
        execs = _sandbox_stage(out / "executions.jsonl", jobs, cfg, prog, "execute originals")
        dets = detect_stage(cfg, problems, gens, execs, tokenizer, schemes, prog)
        dets = {k: v for k, v in dets.items() if v["gen"] in gens and v["transform"] in ["original", *cfg.transforms]}
        check_d = str(cfg.check_depth or cfg.max_depth)
        check_jobs = [(r["id"], problems[r["task_id"]].as_dict(), r["depths"][check_d]["program"])
                      for r in dets.values() if r["transform"] != "original" and check_d in r["depths"]
                      and r["variant"] != "plain" and "program" in r["depths"][check_d]]
        checks = _sandbox_stage(out / "checks.jsonl", check_jobs, cfg, prog, f"check edits (d={check_d})")
    rows = compute_metrics(cfg, dets, checks, execs)
    write_csv(out / "metrics.csv", rows)
    table = paper_table(cfg, rows)
    (out / "table.md").write_text(table)
    plot_depth(cfg, rows, out / "tpr_vs_depth.png")
    n_gen = {v: sum(1 for g in gens.values() if g["variant"] == v) for v in ["plain", *cfg.schemes]}
    n_kept = {v: sum(1 for g in gens.values() if g["variant"] == v and kept(cfg, execs.get(g["id"], {})
                                                                            .get("status", "error")))
              for v in ["plain", *cfg.schemes]}
    status_counts = {v: {st: sum(1 for g in gens.values() if g["variant"] == v
                                 and execs.get(g["id"], {}).get("status") == st)
                         for st in ("pass", "fail", "error", "timeout")} for v in ["plain", *cfg.schemes]}
    depth_rows = [r for r in rows if r["transform"] != "original"]
    report = [
        "# Code-watermark robustness run\n",
        f"Model `{cfg.model}`, {len(problems)} HumanEval problems, prompt style `{cfg.prompt_style}`, "
        f"temperature {cfg.temperature}, {cfg.max_new_tokens} new tokens, gamma {cfg.gamma}, delta {cfg.delta}, "
        f"z threshold {cfg.z_threshold}, kept programs: `{cfg.keep}`.\n",
        "Generated / kept per variant: "
        + ", ".join(f"{v} {n_gen[v]}/{n_kept[v]}" for v in n_gen) + "\n",
        "Sandbox outcomes of the original programs: "
        + "; ".join(f"{v}: " + ", ".join(f"{k} {c}" for k, c in sc.items()) for v, sc in status_counts.items())
        + "\n",
        f"## Table (d = {cfg.max_depth})\n", table,
        "## Paper (CodeLlama-7B, d = 5)\n", paper_reference_table(),
        "## Every depth\n",
        "Depth d counts only programs that received d edits; `n_fewer_edits` programs had no valid location left.\n",
        markdown_table(depth_rows, ["scheme", "transform", "depth", "n_pos", "n_neg", "n_fewer_edits", "tpr",
                                    "fpr", "auc", "tpr_at_1fpr", "tokens_changed"]),
        "![TPR vs depth](tpr_vs_depth.png)\n",
    ]
    (out / "report.md").write_text("\n".join(report))
    return {"out": str(out), "rows": rows, "table": table, "kept": n_kept, "generated": n_gen,
            "status_counts": status_counts}


__all__ = ["BASE_TRANSFORMS", "PAPER_TABLE", "RobustnessConfig", "compute_metrics", "edited_at", "roc_auc", "run",
           "token_share_changed", "tpr_at_fpr"]
