"""Downstream multiple-choice tasks on the held-out plays, scored by each model's own likelihood.

Why: the study notes' claim is that diffusion's data efficiency carries over to downstream accuracy, not only
to validation loss. The paper scores ARC/HellaSwag/SciQ/LAMBADA by likelihood; at byte scale we build the same
kind of task from plays no model was trained on, with a dev play (checkpoint choice) and a test play (the claim):

* ``next-line``: a context ending at a line break inside a speech; which of ``choices`` line openings
  (``candidate_len`` bytes each, openings of other lines of the same play) comes next?
* ``word-cloze``: which word ends this line? Distractors are other line-final words of the same play with the
  same length, written in the answer's case pattern.
* ``spelling``: the same line-final words (≥ 5 letters) against scrambles of their letters after the first that are
  not words of the play — the orthographic knowledge a byte-level model acquires first.

Every candidate of an item has the same byte length and every scored sequence is exactly ``seq_len`` bytes
(context cut to fit), so summed log-likelihoods compare fairly and both objectives see in-distribution lengths.
AR scores are exact ``log p(candidate | context)``. MDM scores are LLaDA's conditional ELBO bound: mask exactly
l ~ U{1..L} of the L candidate bytes (context never masked) and weight the masked cross-entropy by L/l,
stratified over l with ``mc_samples`` draws; the masks are the same for every choice and every model, so
differences between choices and between checkpoints are not Monte-Carlo noise.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from carelab.diffusion.model import GPT
from carelab.diffusion.objectives import parse_objective

TASKS = ("next-line", "word-cloze", "spelling")
_WORD_AT_END = re.compile(rb"([A-Za-z]+)[^A-Za-z]*$")


@dataclass
class DownstreamConfig:
    """Everything that defines a downstream evaluation; saved as ``config.json`` beside its outputs."""

    sweep_dir: str
    out: str
    tasks: list[str] = field(default_factory=lambda: ["spelling", "word-cloze", "next-line"])
    dev_doc: str = "twelfth-night"
    test_doc: str = "macbeth"
    dev_items: int = 300
    test_items: int = 500
    choices: int = 4
    candidate_len: int = 16
    min_word_len: int = 4
    mc_samples: int = 16
    unique_tokens: int | None = None  # None: the largest U that every compared objective has runs for
    objectives: list[str] | None = None  # None: every objective of the sweep
    epochs: list[int] | None = None  # None: every epoch count within the budget (MDM scoring is the costly part)
    compare: list[str] = field(default_factory=lambda: ["ar", "mdm"])
    seed: int = 0
    bootstrap: int = 2000
    threads: int | None = None


@dataclass
class Item:
    """One multiple-choice question: the candidates all have the same byte length."""

    id: str
    task: str
    split: str
    context: str
    candidates: list[str]
    answer: int


# --- items ------------------------------------------------------------------------------------------------


def _speech_lines(data: bytes) -> list[tuple[int, int, bool]]:
    """(start, end, continues) of every spoken line; ``continues`` when the line before is spoken text too.

    Markdown plays: headings ``#``, stage directions ``_..._``, speaker names ``**...**`` and blank lines are
    not speech; a spoken line that follows another one continues the same speech.
    """
    out, pos, prev_spoken = [], 0, False
    for raw in data.split(b"\n"):
        body = raw.strip()
        spoken = bool(body) and not body.startswith((b"#", b"_", b"**", b"[", b">"))
        if spoken:
            out.append((pos, pos + len(raw.rstrip()), prev_spoken))
        prev_spoken = spoken
        pos += len(raw) + 1
    return out


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word.capitalize() if like[0].isupper() else word.lower()


def _scrambles(word: bytes, k: int, rng: random.Random, vocab: set[bytes], tries: int = 200) -> list[bytes]:
    """Up to ``k`` distinct reorderings of ``word``'s letters after the first, none of them a word in ``vocab``."""
    out: list[bytes] = []
    rest = list(word[1:])
    for _ in range(tries):
        if len(out) >= k:
            break
        rng.shuffle(rest)
        cand = word[:1] + bytes(rest)
        if cand != word and cand not in out and cand.lower() not in vocab:
            out.append(cand)
    return out


def build_items(text: str, task: str, split: str, n: int, seq_len: int, choices: int = 4, candidate_len: int = 16,
                min_word_len: int = 4, seed: int = 0) -> list[Item]:
    """Up to ``n`` items of ``task`` from one document, deterministic in ``seed``; contexts fill ``seq_len`` bytes."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (use {', '.join(TASKS)})")
    data = text.encode("utf-8")
    lines = _speech_lines(data)
    rng = random.Random(f"{seed}-{task}-{split}")
    spots: list[tuple[int, bytes]] = []  # (candidate start, answer bytes)
    pool: dict[int, list[bytes]] = {}
    if task == "next-line":
        openings = [data[s:s + candidate_len] for s, e, _ in lines if e - s >= candidate_len]
        pool[candidate_len] = sorted(set(openings))
        spots = [(s, data[s:s + candidate_len]) for s, e, cont in lines if cont and e - s >= candidate_len]
    else:
        max_len = seq_len // 2
        min_len = max(min_word_len, 5) if task == "spelling" else min_word_len
        for s, e, _ in lines:
            m = _WORD_AT_END.search(data[s:e])
            if m and min_len <= len(m.group(1)) <= max_len:
                pool.setdefault(len(m.group(1)), []).append(m.group(1).lower())
                spots.append((s + m.start(1), m.group(1)))
        pool = {k: sorted(set(v)) for k, v in pool.items()}
    rng.shuffle(spots)
    vocab = {w.lower() for w in re.findall(rb"[A-Za-z]+", data)}
    items: list[Item] = []
    for start, answer in spots:
        if len(items) >= n:
            break
        L = len(answer)
        ctx_start = start - (seq_len - L)
        if ctx_start < 0:
            continue
        if task == "spelling":
            picked = _scrambles(answer, choices - 1, rng, vocab)
        else:
            others = [w for w in pool.get(L, []) if w.lower() != answer.lower()]
            picked = rng.sample(others, choices - 1) if len(others) >= choices - 1 else []
        if len(picked) < choices - 1:
            continue
        if task == "word-cloze":
            like = answer.decode("ascii")
            picked = [_match_case(w.decode("ascii"), like).encode("ascii") for w in picked]
        cands = [answer, *picked]
        rng.shuffle(cands)
        decoded = [_utf8(c) for c in cands]
        context = _utf8(data[ctx_start:start])
        if context is None or any(d is None for d in decoded):
            continue  # a cut inside a multi-byte character
        items.append(Item(f"{split}-{task}-{start}", task, split, context, decoded, cands.index(answer)))
    return items


def encode_items(items: list[Item]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequences (items·choices, seq_len) of byte ids, candidate mask of the same shape); rows item-major."""
    rows, masks = [], []
    for it in items:
        ctx = list(it.context.encode("utf-8"))
        for c in it.candidates:
            cand = list(c.encode("utf-8"))
            rows.append(ctx + cand)
            masks.append([False] * len(ctx) + [True] * len(cand))
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise ValueError(f"items must all have the same sequence length, got {sorted(lengths)}")
    return torch.tensor(rows, dtype=torch.long), torch.tensor(masks, dtype=torch.bool)


# --- scoring ----------------------------------------------------------------------------------------------


@torch.no_grad()
def ar_choice_logprobs(model: GPT, seqs: torch.Tensor, cand: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Exact log p(candidate | context) per row: Σ over candidate positions of the next-token log-probability."""
    out = []
    for i in range(0, seqs.size(0), batch_size):
        x, m = seqs[i:i + batch_size], cand[i:i + batch_size]
        logp = model(x[:, :-1]).float().log_softmax(-1).gather(-1, x[:, 1:, None]).squeeze(-1)
        out.append((logp * m[:, 1:]).sum(-1).double())
    return torch.cat(out)


def mdm_choice_masks(cand: torch.Tensor, choices: int, mc_samples: int, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified masks for LLaDA's conditional ELBO, shared by an item's choices.

    Returns (masks (mc_samples, rows, T) bool, weights (mc_samples, rows) = L/l): draw k masks l_k =
    1 + ⌊L·(k + u)/K⌋ of the L candidate positions (u ~ U(0,1) per item), so l is uniform on {1..L}.
    """
    gen = torch.Generator().manual_seed(seed)
    first = cand[::choices]  # one row per item (all choices share the candidate positions)
    n_items, T = first.shape
    L = first.sum(1)  # (items,)
    u = torch.rand(n_items, generator=gen)
    masks = torch.zeros(mc_samples, n_items, T, dtype=torch.bool)
    weights = torch.zeros(mc_samples, n_items, dtype=torch.float64)
    for k in range(mc_samples):
        count = 1 + torch.floor(L * (k + u) / mc_samples).long().clamp(max=L - 1)
        scores = torch.rand(n_items, T, generator=gen).masked_fill(~first, 2.0)  # non-candidates rank last
        rank = scores.argsort(1).argsort(1)
        masks[k] = rank < count[:, None]
        weights[k] = L.double() / count.double()
    return masks.repeat_interleave(choices, dim=1), weights.repeat_interleave(choices, dim=1)


@torch.no_grad()
def mdm_choice_logprobs(model: GPT, seqs: torch.Tensor, cand: torch.Tensor, choices: int, mc_samples: int = 16,
                        seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """−(conditional ELBO bound) per row: a lower bound on log p(candidate | context) for a masked-diffusion model."""
    masks, weights = mdm_choice_masks(cand, choices, mc_samples, seed)
    total = torch.zeros(seqs.size(0), dtype=torch.float64)
    for k in range(mc_samples):
        for i in range(0, seqs.size(0), batch_size):
            x, m = seqs[i:i + batch_size], masks[k, i:i + batch_size]
            logits = model(torch.where(m, torch.full_like(x, model.mask_id), x)).float()
            ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x.reshape(-1), reduction="none").view_as(x)
            total[i:i + batch_size] -= (ce * m).sum(-1).double() * weights[k, i:i + batch_size]
    return total / mc_samples


def score_items(objective: str, model: GPT, items: list[Item], mc_samples: int = 16, seed: int = 0) -> list[list[float]]:
    """Per item, the score of each candidate (higher = more likely) under ``objective``'s likelihood."""
    if not items:
        return []
    choices = len(items[0].candidates)
    seqs, cand = encode_items(items)
    if seqs.size(1) > model.config.block_size:
        raise ValueError(f"items of {seqs.size(1)} tokens exceed the model's context {model.config.block_size}")
    kind, _ = parse_objective(objective)
    flat = (mdm_choice_logprobs(model, seqs, cand, choices, mc_samples, seed) if kind == "mdm"
            else ar_choice_logprobs(model, seqs, cand))
    return flat.view(len(items), choices).tolist()


def accuracy_flags(items: list[Item], scores: list[list[float]]) -> list[int]:
    """1 where the answer has the strictly highest score (a tie counts as wrong), else 0."""
    out = []
    for it, s in zip(items, scores, strict=True):
        best = max(s)
        out.append(int(s[it.answer] == best and s.count(best) == 1))
    return out


# --- the experiment ---------------------------------------------------------------------------------------


def _doc_text(sweep_cfg: dict, name: str) -> str:
    from carelab.diffusion.corpus import load_documents
    from carelab.runs import InputError

    docs = {d.name: d for d in load_documents(sweep_cfg["corpus"]["sources"])}
    if name not in docs:
        raise InputError(name, "no such document in the sweep's corpus")
    train = set()
    corpus_txt = Path(sweep_cfg["out"]) / "corpus.txt"
    if corpus_txt.exists():
        for line in corpus_txt.read_text().splitlines():
            if line.startswith("train docs"):
                train = {d.strip() for d in line.split(":", 1)[1].split(",")}
    if name in train or name not in sweep_cfg["corpus"]["val_docs"]:
        raise InputError(name, "not a held-out document of this sweep (it must be one of its --val-docs)")
    return docs[name].text


def select_runs(rows: list[dict], objectives: list[str], compare: list[str], unique_tokens: int | None
                ) -> tuple[int, float, list[dict]]:
    """(U, compute budget, candidate runs): one U for all, and only runs every compared objective can afford.

    The budget is the smallest, over the compared objectives, of their largest C at that U — so the best AR and
    the best MDM are picked from the same unique data and the same maximum compute.
    """
    from carelab.runs import InputError

    have = {o: {r["unique_tokens"] for r in rows if r["objective"] == o} for o in compare}
    common = set.intersection(*have.values()) if have else set()
    if not common:
        raise InputError("results.jsonl", f"no unique-token budget U has finished runs of every one of {compare}")
    U = unique_tokens if unique_tokens is not None else max(common)
    if U not in common:
        raise InputError("results.jsonl", f"U = {U} lacks runs of some of {compare} (available: {sorted(common)})")
    budget = min(max(r["C"] for r in rows if r["objective"] == o and r["unique_tokens"] == U) for o in compare)
    cands = [r for r in rows if r["objective"] in objectives and r["unique_tokens"] == U and r["C"] <= budget * 1.0001]
    return U, budget, sorted(cands, key=lambda r: (r["objective"], r["N"], r["epochs"]))


def run_downstream(cfg: DownstreamConfig, show_progress: bool = True) -> dict:
    """Score every candidate run on the dev items, pick each objective's best on dev, score those on test."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from carelab.diffusion.model import load_run_model
    from carelab.diffusion.scaling import load_results
    from carelab.runs import InputError, JsonlAppender, read_json, read_jsonl, save_config, write_jsonl

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    for t in cfg.tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r} (use {', '.join(TASKS)})")
    sweep = Path(cfg.sweep_dir)
    sweep_cfg = read_json(sweep / "config.json") if (sweep / "config.json").exists() else None
    if sweep_cfg is None:
        raise InputError(sweep / "config.json", "not a sweep folder (run `carelab diffusion sweep` first)")
    sweep_cfg["out"] = str(sweep)
    if sweep_cfg["corpus"]["tokenizer"] != "byte":
        raise InputError(sweep / "config.json", "downstream tasks support byte-tokenizer sweeps only", field="tokenizer")
    rows = load_results(sweep)
    objectives = cfg.objectives or sorted({r["objective"] for r in rows})
    U, budget, cands = select_runs(rows, objectives, cfg.compare, cfg.unique_tokens)
    if cfg.epochs:
        cands = [r for r in cands if r["epochs"] in cfg.epochs]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    seq_len = sweep_cfg["seq_len"]
    items = {
        split: {t: build_items(_doc_text(sweep_cfg, doc), t, split, n, seq_len, cfg.choices, cfg.candidate_len,
                               cfg.min_word_len, cfg.seed) for t in cfg.tasks}
        for split, doc, n in (("dev", cfg.dev_doc, cfg.dev_items), ("test", cfg.test_doc, cfg.test_items))
    }
    for split, per_task in items.items():
        for t, its in per_task.items():
            if not its:
                doc = cfg.dev_doc if split == "dev" else cfg.test_doc
                raise InputError(doc, f"no {t} items could be built from this document (too short?)")
    write_jsonl(out / "items.jsonl", [asdict(it) for s in items.values() for its in s.values() for it in its])
    scores = JsonlAppender(out / "scores.jsonl", key="key")

    def evaluate_run(rec: dict, split: str, progress, task) -> None:
        todo = [t for t in cfg.tasks if f"{rec['id']}|{split}|{t}" not in scores]
        if not todo:
            return
        model = load_run_model(sweep / "runs" / rec["id"])
        for t in todo:
            its = items[split][t]
            progress.update(task, description=f"{split} {t}: {rec['id']}")
            sc = score_items(rec["objective"], model, its, cfg.mc_samples, cfg.seed)
            flags = accuracy_flags(its, sc)
            scores.write({"key": f"{rec['id']}|{split}|{t}", "run": rec["id"], "objective": rec["objective"],
                          "size": rec["size"], "unique_tokens": rec["unique_tokens"], "epochs": rec["epochs"],
                          "C": rec["C"], "split": split, "task": t, "n": len(its),
                          "accuracy": sum(flags) / max(1, len(flags)), "correct": flags,
                          "scores": [[round(v, 4) for v in s] for s in sc]})

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not show_progress) as progress:
        bar = progress.add_task("dev", total=len(cands))
        for rec in cands:
            evaluate_run(rec, "dev", progress, bar)
            progress.advance(bar)
        done = {r["key"]: r for _, r in read_jsonl(out / "scores.jsonl", skip_invalid=True)}
        best = {o: pick_best(o, cands, done, cfg.tasks) for o in objectives}
        best = {o: r for o, r in best.items() if r is not None}
        bar = progress.add_task("test", total=len(best))
        for rec in best.values():
            evaluate_run(rec, "test", progress, bar)
            progress.advance(bar)
    done = {r["key"]: r for _, r in read_jsonl(out / "scores.jsonl", skip_invalid=True)}
    return {"U": U, "budget": budget, "candidates": cands, "best": best, "scores": done, "items": items,
            "objectives": objectives}


def pick_best(objective: str, cands: list[dict], scores: dict, tasks: list[str]) -> dict | None:
    """The objective's run with the highest dev accuracy averaged over tasks; ties go to the cheaper run."""
    runs = [r for r in cands if r["objective"] == objective
            and all(f"{r['id']}|dev|{t}" in scores for t in tasks)]
    if not runs:
        return None
    return max(runs, key=lambda r: (sum(scores[f"{r['id']}|dev|{t}"]["accuracy"] for t in tasks) / len(tasks), -r["C"]))


def write_downstream_report(res: dict, cfg: DownstreamConfig, report_dir=None) -> Path:
    """Markdown report + CSV + plot (+ the config) in ``report_dir`` (default: the output folder)."""
    from carelab.diffusion.scaling import COLORS
    from carelab.report import markdown_table, new_figure, save_figure, write_csv
    from carelab.stats import bootstrap_ci, mean_of_means_ci, paired_difference_ci

    out = Path(report_dir or cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_text = (Path(cfg.out) / "config.json").read_text()
    if out != Path(cfg.out):
        (out / "config.json").write_text(cfg_text)
    sc, tasks, best = res["scores"], cfg.tasks, res["best"]
    B = cfg.bootstrap
    pct = lambda e: f"{100 * e.mean:.1f} [{100 * e.lo:.1f}, {100 * e.hi:.1f}]"  # noqa: E731
    sgn = lambda e: f"{100 * e.mean:+.1f} [{100 * e.lo:+.1f}, {100 * e.hi:+.1f}]"  # noqa: E731
    val = {r["id"]: r["val_loss"] for r in res["candidates"]}

    dev_rows = []
    for r in res["candidates"]:
        row = {"objective": r["objective"], "size": r["size"], "epochs": r["epochs"], "C (FLOPs)": f"{r['C']:.3g}",
               "val loss": f"{val[r['id']]:.3f}"}
        for t in tasks:
            s = sc.get(f"{r['id']}|dev|{t}")
            row[f"dev {t} % [95% CI]"] = pct(bootstrap_ci(s["correct"], B)) if s else "–"
        row["picked"] = "yes" if best.get(r["objective"], {}).get("id") == r["id"] else ""
        dev_rows.append(row)

    test_rows, csv_rows = [], []
    for o, r in best.items():
        row = {"objective": o, "picked run": r["id"], "C (FLOPs)": f"{r['C']:.3g}"}
        per_task = []
        for t in tasks:
            s = sc.get(f"{r['id']}|test|{t}")
            if s is None:
                row[f"test {t} % [95% CI]"] = "–"
                continue
            e = bootstrap_ci(s["correct"], B)
            per_task.append(s["correct"])
            row[f"test {t} % [95% CI]"] = pct(e)
            csv_rows.append({"objective": o, "run": r["id"], "epochs": r["epochs"], "C": r["C"], "task": t,
                             "split": "test", "n": s["n"], "accuracy": e.mean, "ci_lo": e.lo, "ci_hi": e.hi})
        if len(per_task) == len(tasks):
            row["test mean of tasks %"] = pct(mean_of_means_ci(per_task, B))
        row["n per task"] = ", ".join(str(sc[f"{r['id']}|test|{t}"]["n"]) for t in tasks if f"{r['id']}|test|{t}" in sc)
        test_rows.append(row)

    diff_rows = []
    ref = "mdm" if "mdm" in best else None
    for o in best:
        if ref is None or o == ref:
            continue
        row = {"comparison": f"best MDM − best {o}"}
        diffs = []
        for t in tasks:
            a, b = sc.get(f"{best[ref]['id']}|test|{t}"), sc.get(f"{best[o]['id']}|test|{t}")
            if a is None or b is None:
                continue
            row[f"{t} (pts) [95% CI]"] = sgn(paired_difference_ci(a["correct"], b["correct"], B))
            diffs.append([x - y for x, y in zip(a["correct"], b["correct"], strict=True)])
            csv_rows.append({"objective": f"mdm-minus-{o}", "run": f"{best[ref]['id']} vs {best[o]['id']}", "task": t,
                             "split": "test", "n": a["n"],
                             **dict(zip(("accuracy", "ci_lo", "ci_hi"),
                                        paired_difference_ci(a["correct"], b["correct"], B)[:3], strict=True))})
        if len(diffs) == len(tasks):
            row["mean of tasks (pts)"] = sgn(mean_of_means_ci(diffs, B))
        diff_rows.append(row)
    write_csv(out / "downstream.csv", csv_rows,
              ["objective", "run", "epochs", "C", "task", "split", "n", "accuracy", "ci_lo", "ci_hi"])

    new_figure()
    import matplotlib.pyplot as plt

    plt.close("all")
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.0), squeeze=False)
    for ax, t in zip(axes[0], tasks, strict=True):
        for j, o in enumerate(res["objectives"]):
            rs = [r for r in res["candidates"] if r["objective"] == o and f"{r['id']}|dev|{t}" in sc]
            for size in sorted({r["size"] for r in rs}):
                pts = sorted((r["epochs"], sc[f"{r['id']}|dev|{t}"]) for r in rs if r["size"] == size)
                if not pts:
                    continue
                es = [e for e, _ in pts]
                cis = [bootstrap_ci(s["correct"], B) for _, s in pts]
                color = COLORS.get(o, plt.cm.Greens(0.4 + 0.5 * j / len(res["objectives"])))
                ax.errorbar(es, [100 * c.mean for c in cis],
                            yerr=[[100 * (c.mean - c.lo) for c in cis], [100 * (c.hi - c.mean) for c in cis]],
                            marker="o", capsize=2, color=color, label=f"{o} {size} (dev)")
        for o, r in best.items():
            s = sc.get(f"{r['id']}|test|{t}")
            if s:
                ax.scatter([r["epochs"]], [100 * s["accuracy"]], marker="*", s=120,
                           color=COLORS.get(o, "tab:green"), edgecolor="k", zorder=5)
        ax.axhline(100 / cfg.choices, color="gray", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("epochs over the U unique tokens")
        ax.set_title(f"{t} (dev curves; ★ = picked run on test)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("accuracy (%)")
    save_figure(fig, out / "downstream_accuracy.png")

    n_dev = {t: len(res["items"]["dev"][t]) for t in tasks}
    n_test = {t: len(res["items"]["test"][t]) for t in tasks}
    md = [
        f"# Downstream multiple-choice accuracy — best of each objective at U = {res['U']:,}, "
        f"C ≤ {res['budget']:.3g} FLOPs ({cfg.sweep_dir})\n",
        f"Tasks: {', '.join(tasks)}; {cfg.choices} choices (chance {100 / cfg.choices:.0f} %). Dev play "
        f"`{cfg.dev_doc}` (items {n_dev}) picks each objective's run (highest mean dev accuracy; ties → less "
        f"compute); test play `{cfg.test_doc}` (items {n_test}) is scored for the picked runs only. Neither play "
        "was trained on. Scores: AR exact log p(candidate | context); MDM LLaDA's conditional ELBO bound with "
        f"{cfg.mc_samples} stratified mask counts (same masks for every choice and model). Intervals: 95 % "
        f"percentile bootstrap over items ({B} resamples); differences are paired over the same test items.\n",
        "## Test accuracy of each objective's dev-picked run\n", markdown_table(test_rows),
        "\n## Paired difference on the test items\n",
        markdown_table(diff_rows) if diff_rows else "(no MDM run to compare with)\n",
        "\n## Dev accuracy of every candidate run\n", markdown_table(dev_rows),
        "\n![downstream accuracy](downstream_accuracy.png)\n",
        "## Config\n", "```json\n" + cfg_text + "\n```\n",
    ]
    (out / "report.md").write_text("\n".join(md))
    return out / "report.md"

