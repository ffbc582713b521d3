"""The robustness experiment: watermarked vs plain HumanEval code, before and after semantics-preserving edits.

Why this shape: the stages are cached one by one (generations, executions, transformed detections,
transformed executions) as append-only JSONL keyed by id, so a killed run resumes where it stopped and
a rerun with more transforms or depths reuses every generation. The protocol follows the paper:
score only the completion body, keep programs that execute, report TPR/FPR at the z threshold on
watermarked/plain code after the same edit — and, beyond the paper, a real ROC AUC, TPR at 1 % FPR,
the share of tokens changed and pass@1 before/after each edit.

Stages (out DIR):
  generations.jsonl   one completion per (variant, task): variant = plain | kgw | unigram | sweet
  executions.jsonl    sandbox status of each original program (prompt + completion + tests)
  detections.jsonl    z-scores of every kept program after each edit at each depth, per detector
                      (kgw, unigram, sweet, and the windowed kgw-win / unigram-win on the same generations)
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

SCHEMES = ("kgw", "unigram", "sweet")
WINDOWED = ("kgw", "unigram")  # generators whose tokens are also scored by the windowed (WinMax) detector
SPLITS = ("all", "dev", "test")
DEV_SHARE = 4  # one problem in four (by a hash of its task id) is the dev split
Z_AT_1PCT = 2.3263478740408408  # one-sided standard-normal quantile: nominal 1 % false positives
EXECUTES = ("pass", "fail")  # ran to the end of the tests (an assertion may fail); crashes/timeouts do not
DETECTOR_NAMES = {"kgw": "KGW", "unigram": "Unigram", "sweet": "SWEET", "kgw-win": "KGW-WinMax",
                  "unigram-win": "Unigram-WinMax"}
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
    limit: int | None = None  # first N problems of the split
    split: str = "all"  # all | dev | test (dev: a quarter of HumanEval chosen by task-id hash)
    problems_path: str | None = None
    prompt_style: str = "chat"
    max_new_tokens: int = 200
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 16
    seed: int = 0
    gamma: float = 0.25
    delta: float = 2.0
    scheme_deltas: dict[str, float] = field(default_factory=dict)  # per-scheme delta (e.g. chosen on dev)
    hash_key: int = 15485863
    unigram_key: int = 0
    z_threshold: float = 3.0
    ignore_repeated_ngrams: bool = False
    sweet_entropy: float = 0.9  # SWEET's entropy threshold (nats; the authors' default)
    windowed: bool = True  # also score kgw/unigram generations with the windowed (WinMax) detector
    min_window: int = 8  # WinMax: smallest window (scored tokens)
    stop_at_fence: bool = True  # end a chat reply at its closing code fence (what follows is cut anyway)
    keep: str = "executes"  # executes | all | passes
    workers: int = 2
    threads: int | None = None  # torch threads for generation (None: torch's default)
    wall_s: float = 10.0
    no_isolation: bool = False  # run generated code even where the OS sandbox (bubblewrap) is unavailable

    def validate(self) -> None:
        bad = [s for s in self.schemes if s not in SCHEMES]
        if bad or not self.schemes:
            raise ValueError(f"unknown scheme(s) {bad}; use {', '.join(SCHEMES)}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        bad = [s for s in self.scheme_deltas if s not in self.schemes]
        if bad:
            raise ValueError(f"scheme_deltas names schemes not in this run: {bad}")
        bad = [t for t in self.transforms if t not in TRANSFORMS]
        if bad:
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

    @property
    def detectors(self) -> list[str]:
        """Detector names: each scheme, plus ``<scheme>-win`` (WinMax) for kgw/unigram when ``windowed``."""
        out = list(self.schemes)
        if self.windowed:
            out += [f"{s}-win" for s in self.schemes if s in WINDOWED]
        return out


def generator_of(detector: str) -> str:
    """The generation variant a detector looks for (``kgw-win`` -> ``kgw``)."""
    return detector.removesuffix("-win")


def in_split(task_id: str, split: str) -> bool:
    """Fixed dev/test split of HumanEval: dev = task ids whose sha256 is 0 mod ``DEV_SHARE``."""
    if split == "all":
        return True
    dev = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:4], "little") % DEV_SHARE == 0
    return dev == (split == "dev")


def split_problems(cfg: RobustnessConfig) -> list[Problem]:
    """The config's problems: its split of the file, then the first ``limit``."""
    chosen = [p for p in load_problems(cfg.problems_path) if in_split(p.task_id, cfg.split)]
    return chosen[: cfg.limit] if cfg.limit is not None else chosen


def _stable_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little")


def build_schemes(cfg: RobustnessConfig, vocab_size: int) -> dict:
    from carelab.watermark.schemes import KGW, SWEET, Unigram

    out: dict = {}
    delta = build_deltas(cfg)
    if "kgw" in cfg.schemes:
        out["kgw"] = KGW(vocab_size, gamma=cfg.gamma, delta=delta["kgw"], hash_key=cfg.hash_key,
                         z_threshold=cfg.z_threshold, ignore_repeated_ngrams=cfg.ignore_repeated_ngrams)
    if "unigram" in cfg.schemes:
        out["unigram"] = Unigram(vocab_size, gamma=cfg.gamma, delta=delta["unigram"], key=cfg.unigram_key,
                                 z_threshold=cfg.z_threshold, ignore_repeated_ngrams=cfg.ignore_repeated_ngrams)
    if "sweet" in cfg.schemes:
        out["sweet"] = SWEET(vocab_size, gamma=cfg.gamma, delta=delta["sweet"], hash_key=cfg.hash_key,
                             entropy_threshold=cfg.sweet_entropy, z_threshold=cfg.z_threshold)
    return out


def build_deltas(cfg: RobustnessConfig) -> dict[str, float]:
    """The delta each scheme of the run uses."""
    return {s: float(cfg.scheme_deltas.get(s, cfg.delta)) for s in cfg.schemes}


class _StopAtClosingFence:
    """Logits step that ends a row (forces EOS) once its reply holds an opening and a closing code fence.

    Why: the chat prompt asks for one code block and ``extract_code`` cuts there; SmolLM2 then explains
    the code until ``max_new_tokens``, which is most of the decoding time. Runs after the watermark.
    """

    def __init__(self, tokenizer, eos_id: int):
        self.tok, self.eos_id, self.start = tokenizer, int(eos_id), None

    def __call__(self, input_ids, scores):
        import torch

        if self.start is None:
            self.start = input_ids.shape[1]
        done = [self.tok.decode(row[self.start:]).count("```") >= 2 for row in input_ids.tolist()]
        if not any(done):
            return scores
        out = scores.clone()
        rows = torch.tensor(done, device=scores.device)
        out[rows] = -float("inf")
        out[rows, self.eos_id] = 0.0
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
        for start in range(0, len(pending), cfg.batch_size):
            batch = pending[start:start + cfg.batch_size]
            steps = [] if v == "plain" else [schemes[v].logits_processor()]
            if cfg.stop_at_fence and cfg.prompt_style == "chat":
                steps.append(_as_processor(_StopAtClosingFence(tokenizer, _eos_id(model, tokenizer))))
            proc = LogitsProcessorList(steps) if steps else None
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
    return _load(cache.path)


def _as_processor(obj):
    from carelab.watermark.schemes import _as_logits_processor

    return _as_logits_processor(obj)


def _eos_id(model, tokenizer) -> int:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    return int(eos[0] if isinstance(eos, (list, tuple)) else eos)


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
    return _load(cache.path)


def _load(path: Path) -> dict[str, dict]:
    """A stage's cache by id ({} when the stage had nothing to do)."""
    return {obj["id"]: obj for _, obj in read_jsonl(path, skip_invalid=True)} if path.exists() else {}


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


def _detectors_for(variant: str, cfg: RobustnessConfig) -> list[str]:
    """Plain programs are negatives for every detector; a watermarked one is scored by its own detectors."""
    return [d for d in cfg.detectors if variant == "plain" or generator_of(d) == variant]


def _entropy_prefix(tokenizer, problem: Problem, code: str, style: str) -> list[int]:
    """What SWEET's generator had seen before the scored body: the prompt, the fence and the def line."""
    import re

    header = re.findall(rf"^def {re.escape(problem.entry_point)}\(.*$", code, re.M)
    text = "```python\n" + (header[-1] + "\n" if header else "")
    return prompt_ids(tokenizer, problem, style) + list(tokenizer(text, add_special_tokens=False)["input_ids"])


def score_entries(cfg: RobustnessConfig, entries: list[dict], schemes: dict, model=None) -> None:
    """Fill ``entry["z"][detector]`` for entries holding ``ids``, ``variant`` (and ``prefix`` for SWEET),
    one batched call per detector."""
    from carelab.watermark.schemes import token_entropies

    entropies: dict[int, np.ndarray] = {}
    for det in cfg.detectors:
        chosen = [e for e in entries if det in _detectors_for(e["variant"], cfg)]
        if not chosen:
            continue
        scheme = schemes[generator_of(det)]
        ids = [e["ids"] for e in chosen]
        if generator_of(det) == "sweet":
            if model is None:
                raise ValueError("SWEET detection needs the model (entropies)")
            need = [e for e in chosen if id(e) not in entropies]
            for e, ent in zip(need, token_entropies(model, [e["prefix"] for e in need], [e["ids"] for e in need]),
                              strict=True):
                entropies[id(e)] = ent
            ents = [entropies[id(e)] for e in chosen]
            res = (scheme.detect_windowed_batch(ids, cfg.min_window, entropies=ents) if det.endswith("-win")
                   else scheme.detect_batch(ids, entropies=ents))
        elif det.endswith("-win"):
            res = scheme.detect_windowed_batch(ids, cfg.min_window)
        else:
            res = scheme.detect_batch(ids)
        for e, r in zip(chosen, res, strict=True):
            e["z"][det] = r.z
            e["scored"][det] = r.scored


def detect_stage(cfg: RobustnessConfig, problems: dict[str, Problem], gens: dict[str, dict],
                 execs: dict[str, dict], tokenizer, schemes: dict, progress=None, model=None,
                 chunk: int = 32) -> dict[str, dict]:
    """Edit every kept program at every depth and score it with every detector; chunks of ``chunk``
    (program, edit) pairs are scored in one batch and then saved (resumable)."""
    cache = JsonlAppender(Path(cfg.out) / "detections.jsonl")
    items = [g for g in gens.values() if g["variant"] in ("plain", *schemes) and g["task_id"] in problems
             and kept(cfg, execs.get(g["id"], {}).get("status", "error"))]
    keys = [(g, t) for g in items for t in ["original", *cfg.transforms]]
    todo = [(g, t) for g, t in keys if f"{g['id']}|{t}" not in cache]
    task = progress.add_task("edit + detect", total=len(todo)) if progress else None
    for start in range(0, len(todo), chunk):
        recs, entries = [], []
        for g, t in todo[start:start + chunk]:
            p = problems[g["task_id"]]
            program = build_program(p, g["completion"], cfg.prompt_style)
            base_ids = tokenizer(scored_text(program, p.entry_point), add_special_tokens=False)["input_ids"]
            rec: dict = {"id": f"{g['id']}|{t}", "gen": g["id"], "variant": g["variant"], "task_id": g["task_id"],
                         "transform": t, "depths": {}}
            if t == "original":
                steps, depth_list = [(program, 0)], [0]
            else:
                try:
                    steps = apply_steps(program, t, seed=_stable_seed(cfg.seed, g["id"], t), steps=cfg.max_depth,
                                        target=p.entry_point)
                except TransformError as exc:
                    steps = [(program, 0)] * cfg.max_depth
                    rec["error"] = str(exc)[:200]
                depth_list = list(range(1, cfg.max_depth + 1))
            for d, (code, edits) in zip(depth_list, steps, strict=True):
                ids = tokenizer(scored_text(code, p.entry_point), add_special_tokens=False)["input_ids"]
                entry = {"edits": edits, "tokens": len(ids), "changed": token_share_changed(base_ids, ids), "z": {},
                         "scored": {}}
                if d == (cfg.check_depth or cfg.max_depth) or d == 0:
                    entry["program"] = code
                rec["depths"][str(d)] = entry
                work = {"ids": ids, "variant": g["variant"], "z": entry["z"], "scored": entry["scored"]}
                if "sweet" in schemes:
                    work["prefix"] = _entropy_prefix(tokenizer, p, code, cfg.prompt_style)
                entries.append(work)
            recs.append(rec)
        score_entries(cfg, entries, schemes, model)  # fills the records' z / scored dicts in place
        for rec in recs:
            cache.write(rec)
        if progress:
            progress.advance(task, len(recs))
    return _load(cache.path)


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


def auc_ci(pos: Sequence[float], neg: Sequence[float], n_resamples: int = 1000, seed: int = 0
           ) -> tuple[float | None, float | None]:
    """95 % percentile-bootstrap interval of the ROC AUC, resampling positives and negatives independently."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if len(pos) < 2 or len(neg) < 2:
        return None, None
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    rng = np.random.default_rng(seed)
    ip = rng.integers(0, len(pos), (n_resamples, len(pos)))
    ineg = rng.integers(0, len(neg), (n_resamples, len(neg)))
    per_pos = np.stack([wins[:, j].mean(axis=1) for j in ineg])  # (resamples, n_pos): P(win) vs resampled negs
    aucs = np.take_along_axis(per_pos, ip, axis=1).mean(axis=1)
    lo, hi = np.percentile(aucs, [2.5, 97.5])
    return float(lo), float(hi)


def compute_metrics(cfg: RobustnessConfig, dets: dict[str, dict], checks: dict[str, dict],
                    execs: dict[str, dict]) -> list[dict]:
    """One row per (detector, transform, depth): TPR/FPR (with the TPR's 95 % CI), AUC (with CI), TPR@1%FPR,
    tokens changed, pass@1. Depth d counts only programs that received d edits (``n_fewer_edits``: those
    that could not); a detector counts only the programs it scored."""
    from carelab.stats import bootstrap_ci

    rows = []
    thr = cfg.z_threshold
    check_d = str(cfg.check_depth or cfg.max_depth)
    for s in cfg.detectors:
        gen = generator_of(s)
        for t in ["original", *cfg.transforms]:
            depths = ["0"] if t == "original" else [str(d) for d in sorted(cfg.depths)]
            all_pos = [r for r in dets.values() if r["variant"] == gen and r["transform"] == t]
            all_neg = [r for r in dets.values() if r["variant"] == "plain" and r["transform"] == t]
            for d in depths:
                recs_pos = [r for r in all_pos if edited_at(r, d) is not None and s in r["depths"][d]["z"]]
                recs_neg = [r for r in all_neg if edited_at(r, d) is not None and s in r["depths"][d]["z"]]
                pos = [r["depths"][d]["z"][s] for r in recs_pos]
                neg = [r["depths"][d]["z"][s] for r in recs_neg]
                changed = [r["depths"][d]["changed"] for r in recs_pos]
                short = sum(1 for r in all_pos + all_neg if d in r["depths"] and edited_at(r, d) is None)
                tpr = bootstrap_ci((np.asarray(pos) > thr).astype(float)) if pos else None
                lo, hi = auc_ci(pos, neg)
                row = {"scheme": s, "generator": gen, "transform": t, "depth": int(d), "n_pos": len(pos),
                       "n_neg": len(neg), "n_fewer_edits": short,
                       "tpr": tpr.mean if tpr else None, "tpr_lo": tpr.lo if tpr else None,
                       "tpr_hi": tpr.hi if tpr else None,
                       "fpr": float(np.mean(np.asarray(neg) > thr)) if neg else None,
                       "auc": roc_auc(pos, neg), "auc_lo": lo, "auc_hi": hi,
                       "tpr_at_1fpr": tpr_at_fpr(pos, neg, 0.01),
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


def paper_table(cfg: RobustnessConfig, rows: list[dict], detectors: Sequence[str] | None = None) -> str:
    """Markdown table in the paper's layout at the largest depth, with the extra columns beside it."""
    from carelab.report import fmt

    d = cfg.max_depth
    detectors = list(detectors) if detectors is not None else cfg.detectors
    get = {(r["scheme"], r["transform"], r["depth"]): r for r in rows}
    head = ["transformation"]
    for s in detectors:
        name = DETECTOR_NAMES.get(s, s)
        head += [f"{name} TPR / FPR", f"{name} AUC [95 % CI]", f"{name} TPR@1%FPR"]
    head += ["tokens changed", "pass@1 before → after", "same outcome"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in ["original", *cfg.transforms]:
        depth = 0 if t == "original" else d
        cells = [ROW_NAMES.get(t, t)]
        changed, passes, same = [], [], []
        for s in detectors:
            r = get.get((s, t, depth), {})
            auc = fmt(r.get("auc")) + (f" [{fmt(r['auc_lo'])}, {fmt(r['auc_hi'])}]" if r.get("auc_lo") is not None
                                       else "")
            cells += [f"{fmt(r.get('tpr'))} / {fmt(r.get('fpr'))}", auc, fmt(r.get("tpr_at_1fpr"))]
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

    dets = cfg.detectors
    fig, axes = plt.subplots(2, len(dets), figsize=(4.6 * len(dets), 7.2), squeeze=False)
    for col, s in enumerate(dets):
        for row, (metric, label) in enumerate([("tpr_at_1fpr", "TPR at 1 % FPR"), ("auc", "ROC AUC")]):
            ax = axes[row][col]
            base = next((r[metric] for r in rows if r["scheme"] == s and r["transform"] == "original"), None)
            for t in cfg.transforms:
                pts = sorted((r["depth"], r[metric]) for r in rows if r["scheme"] == s and r["transform"] == t
                             and r[metric] is not None)
                if base is not None:
                    pts = [(0, base), *pts]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=ROW_NAMES.get(t, t))
            ax.set_title(f"{DETECTOR_NAMES.get(s, s)}: {label}")
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
    problems_list = split_problems(cfg)
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
        dets = detect_stage(cfg, problems, gens, execs, tokenizer, schemes, prog, model=model)
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
    cost = pass_cost(cfg, gens, execs)
    report = [
        "# Code-watermark robustness run\n",
        f"Model `{cfg.model}`, {len(problems)} HumanEval problems, prompt style `{cfg.prompt_style}`, "
        f"temperature {cfg.temperature}, {cfg.max_new_tokens} new tokens, gamma {cfg.gamma}, delta "
        + (", ".join(f"{k} {v:g}" for k, v in build_deltas(cfg).items())) + ", "
        f"z threshold {cfg.z_threshold}, kept programs: `{cfg.keep}`.\n",
        "Generated / kept per variant: "
        + ", ".join(f"{v} {n_gen[v]}/{n_kept[v]}" for v in n_gen) + "\n",
        "Sandbox outcomes of the original programs: "
        + "; ".join(f"{v}: " + ", ".join(f"{k} {c}" for k, c in sc.items()) for v, sc in status_counts.items())
        + "\n",
        "## Cost in pass@1 (all generated programs, paired by problem with the plain generation)\n",
        markdown_table(cost, ["variant", "n", "pass1", "pass1_plain", "diff", "diff_lo", "diff_hi"]),
        f"## Table (d = {cfg.max_depth})\n", table,
        "## Paper (CodeLlama-7B, d = 5)\n", paper_reference_table(),
        "## Every depth\n",
        "Depth d counts only programs that received d edits; `n_fewer_edits` programs had no valid location left.\n",
        markdown_table(depth_rows, ["scheme", "transform", "depth", "n_pos", "n_neg", "n_fewer_edits", "tpr", "tpr_lo",
                                    "tpr_hi", "fpr", "auc", "auc_lo", "auc_hi", "tpr_at_1fpr", "tokens_changed"]),
        "![TPR vs depth](tpr_vs_depth.png)\n",
    ]
    (out / "report.md").write_text("\n".join(report))
    return {"out": str(out), "rows": rows, "table": table, "kept": n_kept, "generated": n_gen,
            "status_counts": status_counts, "pass_cost": cost}


def pass_cost(cfg: RobustnessConfig, gens: dict[str, dict], execs: dict[str, dict]) -> list[dict]:
    """pass@1 of each watermarked variant vs plain on the same problems: the paired difference and its CI."""
    from carelab.stats import paired_difference_ci

    def passed(variant: str, task: str) -> float | None:
        st = execs.get(f"{variant}:{task}", {}).get("status")
        return None if st is None else float(st == "pass")

    out = []
    tasks = sorted({g["task_id"] for g in gens.values()})
    for v in cfg.schemes:
        pairs = [(passed(v, t), passed("plain", t)) for t in tasks]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if not pairs:
            continue
        est = paired_difference_ci([a for a, _ in pairs], [b for _, b in pairs])
        out.append({"variant": v, "n": len(pairs), "pass1": float(np.mean([a for a, _ in pairs])),
                    "pass1_plain": float(np.mean([b for _, b in pairs])), "diff": est.mean, "diff_lo": est.lo,
                    "diff_hi": est.hi})
    return out


# ----------------------------------------------------------------------------- dev-split selection
def _sampling_key(cfg: RobustnessConfig) -> tuple:
    return (cfg.model, cfg.prompt_style, cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed, cfg.stop_at_fence,
            cfg.batch_size, cfg.split, cfg.limit, cfg.problems_path)


def _copy_plain(src: Path, dst: Path) -> None:
    """Reuse plain generations and their sandbox outcomes (identical under the same sampling settings)."""
    for name in ("generations.jsonl", "executions.jsonl"):
        if not (src / name).exists():
            continue
        cache = JsonlAppender(dst / name)
        for _, obj in read_jsonl(src / name, skip_invalid=True):
            if str(obj.get("id", "")).startswith("plain:") and obj["id"] not in cache:
                cache.write(obj)


def choose_settings(rows: Sequence[dict], schemes: Sequence[str], grid_keys: Sequence[str], target_tpr: float = 0.6,
                    min_kept: int = 5) -> dict[str, dict]:
    """Per scheme, the first grid row (weakest watermark first) whose own detector reaches ``target_tpr`` at
    FPR <= 1 % on at least ``min_kept`` kept programs; a TPR over one or two programs that survived a strong
    bias is noise, not a usable baseline. With none qualifying: the best TPR among rows with ``min_kept``
    programs, else the row that kept the most code (``reached`` false either way)."""
    chosen: dict[str, dict] = {}
    for gen in schemes:
        mine = [r for r in rows if r["detector"] == gen]
        enough = [r for r in mine if (r["n_pos"] or 0) >= min_kept]
        ok = [r for r in enough if (r["tpr"] or 0) >= target_tpr and (r["fpr"] or 0) <= 0.01]
        if ok:
            pick = ok[0]
        elif enough:
            pick = max(enough, key=lambda r: r["tpr"] or 0)
        else:
            pick = max(mine, key=lambda r: r["n_pos"] or 0, default=None)
        if pick is not None:
            chosen[gen] = {"setting": pick["setting"], **{k: pick[k] for k in grid_keys}, "tpr": pick["tpr"],
                           "fpr": pick["fpr"], "n_pos": pick["n_pos"], "reached": bool(ok)}
    return chosen


def select_settings(cfg: RobustnessConfig, grid: Sequence[dict], target_tpr: float = 0.6, model=None,
                    tokenizer=None, min_kept: int = 5) -> dict:
    """Choose generation settings on the dev split: unedited programs only, one run per grid point.

    Each grid point (overrides of ``cfg``: delta, gamma, temperature, max_new_tokens, ...) runs in
    ``<out>/<name>``; plain generations are shared between points with the same sampling settings. A
    generator qualifies when its detector's TPR is >= ``target_tpr`` at z > 2.33 (nominal 1 % FPR) with
    no more than 1 % of the dev negatives above it, over at least ``min_kept`` kept programs. Grid order is
    preference (weakest watermark first, so the first point that qualifies costs the least code quality);
    see ``choose_settings`` for the fallback.
    Writes ``dev.csv``, ``dev.md`` and ``chosen.json`` under ``cfg.out``.
    """
    import json
    from dataclasses import replace

    from carelab.report import markdown_table, write_csv

    out = Path(cfg.out)
    if cfg.split == "all":
        cfg = replace(cfg, split="dev")
    if cfg.split != "dev":
        raise ValueError("settings are chosen on the dev split")
    if model is None or tokenizer is None:
        from carelab.models import load_model

        model, tokenizer = load_model(cfg.model)
    rows: list[dict] = []
    plain_dirs: dict[tuple, Path] = {}
    for point in grid:
        name = "-".join(f"{k}{v}" for k, v in point.items()) or "base"
        sub = replace(cfg, out=str(out / name), transforms=[], depths=[1], z_threshold=Z_AT_1PCT, **point)
        key = _sampling_key(sub)
        if key in plain_dirs:
            _copy_plain(plain_dirs[key], Path(sub.out))
        result = run(sub, model, tokenizer)
        plain_dirs.setdefault(key, Path(sub.out))
        for r in result["rows"]:
            rows.append({"setting": name, **point, "detector": r["scheme"], "generator": r["generator"],
                         "kept": result["kept"].get(r["generator"]), "generated": result["generated"].get(r["generator"]),
                         **{k: r.get(k) for k in ("n_pos", "n_neg", "tpr", "fpr", "tpr_at_1fpr", "auc",
                                                  "mean_z_pos", "mean_z_neg", "pass1_before")}})
    chosen = choose_settings(rows, cfg.schemes, list(grid[0]), target_tpr, min_kept)
    write_csv(out / "dev.csv", rows)
    (out / "chosen.json").write_text(json.dumps(chosen, indent=2) + "\n")
    cols = ["setting", "detector", "generated", "kept", "n_pos", "n_neg", "tpr", "fpr", "tpr_at_1fpr", "auc",
            "mean_z_pos", "mean_z_neg", "pass1_before"]
    (out / "dev.md").write_text(
        f"# Dev-split selection ({len(split_problems(cfg))} problems, split `{cfg.split}`)\n\n"
        f"TPR / FPR at z > {Z_AT_1PCT:.2f} (nominal 1 % FPR) on unedited programs; goal TPR >= {target_tpr} "
        f"over at least {min_kept} kept programs (`n_pos`).\n\n"
        + markdown_table(rows, cols) + "\nChosen: " + json.dumps(chosen) + "\n")
    return {"rows": rows, "chosen": chosen}


__all__ = ["BASE_TRANSFORMS", "PAPER_TABLE", "RobustnessConfig", "choose_settings", "compute_metrics", "edited_at",
           "roc_auc", "run", "select_settings", "token_share_changed", "tpr_at_fpr"]
