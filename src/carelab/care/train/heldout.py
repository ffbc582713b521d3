"""Reward on a fixed held-out prompt set during GRPO: the curve that shows whether RL is learning.

TRL logs the reward of the rollouts it trains on; those prompts change every step and are sampled, so
the curve is noise at CPU budgets. This callback scores greedy completions of the *same* held-out
prompts (never trained on) every N steps with the training reward functions, and appends one JSON line
per evaluation (with per-item totals, so a report can put a bootstrap CI on each point).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: the file written beside a GRPO run
HELDOUT_FILE = "heldout_reward.jsonl"


def split_heldout(rows: list[dict], n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Take ``n`` rows out of ``rows`` (seeded, spread over the list) as the held-out set; returns (train, held)."""
    if n <= 0:
        return rows, []
    if n >= len(rows):
        raise ValueError(f"cannot hold out {n} of {len(rows)} GRPO prompts: nothing would be left to train on")
    picked = set(random.Random(seed).sample(range(len(rows)), n))
    return [r for i, r in enumerate(rows) if i not in picked], [r for i, r in enumerate(rows) if i in picked]


def score_completions(rows: Sequence[dict], completions: Sequence[str], funcs: Sequence[Callable[..., list]],
                      weights: Sequence[float]) -> dict[str, list[float]]:
    """Each reward function's per-item scores and their weighted total, as the trainer combines them."""
    wrapped = [[{"role": "assistant", "content": c}] for c in completions]
    columns = {"answer": [r["answer"] for r in rows], "context": [r["context"] for r in rows]}
    scores: dict[str, list[float]] = {}
    for fn in funcs:
        values = fn(wrapped, **columns)
        scores[fn.__name__] = [0.0 if v is None else float(v) for v in values]
    scores["total"] = [sum(w * scores[fn.__name__][i] for fn, w in zip(funcs, weights, strict=True))
                       for i in range(len(rows))]
    return scores


#: where ``--heldout-keep-adapters`` saves the adapter of each held-out evaluation (``step-N``)
HELDOUT_ADAPTERS = "heldout-adapters"


def heldout_callback(rows: list[dict], funcs: Sequence[Callable[..., list]], weights: Sequence[float], tokenizer,
                     out: Path, every: int, max_new_tokens: int, batch_size: int = 8, keep_adapters: bool = False):
    """A TrainerCallback that scores greedy completions of ``rows`` at step 0, every ``every`` steps and at the end.

    ``keep_adapters`` also saves the adapter at each evaluation, so the checkpoint with the best dev reward can be
    chosen afterwards (the Trainer keeps only its last checkpoints).
    """
    from rich.console import Console
    from transformers import TrainerCallback

    from carelab.care.train.common import heap_allocations
    from carelab.generation import GenerationSettings, chat_prompt_ids, generate_from_ids

    path = out / HELDOUT_FILE
    prompts = [chat_prompt_ids(tokenizer, r["prompt"]) for r in rows]
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    console = Console(stderr=True)

    def done_steps() -> set[int]:
        if not path.exists():
            return set()
        return {json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()}

    class HeldoutReward(TrainerCallback):
        def _evaluate(self, state, model) -> None:
            if not state.is_world_process_zero or state.global_step in done_steps():
                return
            was_training = model.training
            model.eval()
            try:
                with heap_allocations():
                    texts = generate_from_ids(model, tokenizer, prompts, settings)
            finally:
                model.train(was_training)
            scores = score_completions(rows, texts, funcs, weights)
            record: dict[str, Any] = {"step": state.global_step, "n": len(rows),
                                      **{f"{k}_mean": sum(v) / len(v) for k, v in scores.items()},
                                      "per_item": scores["total"], "per_item_scores": scores,
                                      "ids": [r.get("id") for r in rows]}
            if keep_adapters:
                model.save_pretrained(str(out / HELDOUT_ADAPTERS / f"step-{state.global_step}"))
            with path.open("a") as fh:  # after the adapter: a recorded step always has its adapter
                fh.write(json.dumps(record) + "\n")
            parts = " ".join(f"{k}={record[f'{k}_mean']:.3f}" for k in scores)
            console.print(f"[cyan]held-out[/] step {state.global_step}: {parts} (n={len(rows)})")

        def on_train_begin(self, args, state, control, model=None, **kw):
            self._evaluate(state, model)

        def on_step_end(self, args, state, control, model=None, **kw):
            if every > 0 and state.global_step % every == 0:
                self._evaluate(state, model)

        def on_train_end(self, args, state, control, model=None, **kw):
            self._evaluate(state, model)

    return HeldoutReward()


def best_heldout_step(records: Sequence[dict]) -> int | None:
    """The step with the highest mean held-out reward (the earliest on ties): the dev-chosen checkpoint."""
    if not records:
        return None
    return max(sorted(records, key=lambda r: r["step"]), key=lambda r: r["total_mean"])["step"]


def read_heldout(run_dir: str | Path) -> list[dict]:
    """The held-out reward records of a GRPO run, in step order (empty when it tracked none). ``run_dir`` may
    also be such a JSONL file under another name (the copies kept under docs/results)."""
    path = Path(run_dir) if Path(run_dir).is_file() else Path(run_dir) / HELDOUT_FILE
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(records, key=lambda r: r["step"])


def heldout_summary(records: Sequence[dict]) -> list[dict]:
    """One row per evaluated step: mean held-out reward with its 95 % bootstrap CI, and the paired difference
    to the first evaluation (the same prompts at every step, so the change is paired per prompt); the same for
    each reward where its per-prompt scores were kept (``<name>``, ``<name>_change``)."""
    from carelab.stats import bootstrap_ci, paired_difference_ci

    if not records:
        return []
    first = records[0]["per_item"]
    first_scores = records[0].get("per_item_scores") or {}
    rows = []
    for rec in records:
        level = bootstrap_ci(rec["per_item"])
        row = {"step": rec["step"], "n": rec["n"], "reward": level.mean, "reward_lo": level.lo,
               "reward_hi": level.hi}
        if len(rec["per_item"]) == len(first):
            change = paired_difference_ci(rec["per_item"], first)
            row.update(change=change.mean, change_lo=change.lo, change_hi=change.hi)
        per_item = rec.get("per_item_scores") or {}
        for key, value in rec.items():  # each reward's mean over the prompts, with its CI where items were kept
            name = key.removesuffix("_mean")
            if key.endswith("_mean") and name != "total":
                row[name] = value
                if name in per_item:
                    est = bootstrap_ci(per_item[name])
                    row.update({f"{name}_lo": est.lo, f"{name}_hi": est.hi})
                    if len(first_scores.get(name, ())) == len(per_item[name]):  # which reward moved, paired
                        moved = paired_difference_ci(per_item[name], first_scores[name])
                        row.update({f"{name}_change": moved.mean, f"{name}_change_lo": moved.lo,
                                    f"{name}_change_hi": moved.hi})
        rows.append(row)
    return rows


def write_heldout_report(run_dir: str | Path) -> Path | None:
    """``heldout_reward.md`` + ``.png`` + ``.csv`` beside a GRPO run: the dev-set reward curve with CIs (None
    when the run tracked no held-out set)."""
    from carelab.report import new_figure, save_figure, write_csv
    from carelab.stats import format_ci

    run = Path(run_dir)
    rows = heldout_summary(read_heldout(run))
    if not rows:
        return None
    write_csv(run / "heldout_reward.csv", rows)
    fig, ax = new_figure()
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["reward"] for r in rows], marker="o", label="held-out reward (greedy)")
    ax.fill_between(steps, [r["reward_lo"] for r in rows], [r["reward_hi"] for r in rows], alpha=0.25,
                    label="95 % bootstrap CI")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("total reward")
    ax.set_title(f"Reward on {rows[0]['n']} held-out prompts")
    ax.legend()
    save_figure(fig, run / "heldout_reward.png")
    components = sorted({k for r in rows for k in r if not k.endswith(("_lo", "_hi", "_change"))}
                        - {"step", "n", "reward", "change"})
    moved = [c for c in components if any(f"{c}_change" in r for r in rows)]
    lines = ["# Held-out reward during GRPO", "",
             f"Greedy completions of the same {rows[0]['n']} held-out prompts (drawn out of the GRPO pool, never "
             "trained on) scored with the training rewards. Mean with 95 % bootstrap CI; change = paired "
             "difference to the first evaluation (same prompts).", "",
             "| " + " | ".join(["step", "n", "reward", "change vs first", *components,
                                *(f"{c} change" for c in moved)]) + " |",
             "|---" * (4 + len(components) + len(moved)) + "|"]
    for r in rows:
        cells = [str(r["step"]), str(r["n"]), format_ci(r["reward"], r["reward_lo"], r["reward_hi"], digits=3),
                 format_ci(r.get("change"), r.get("change_lo"), r.get("change_hi"), digits=3, signed=True),
                 *(format_ci(r[c], r.get(f"{c}_lo"), r.get(f"{c}_hi"), digits=3) if c in r else "–"
                   for c in components),
                 *(format_ci(r.get(f"{c}_change"), r.get(f"{c}_change_lo"), r.get(f"{c}_change_hi"), digits=3,
                             signed=True) for c in moved)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![held-out reward](heldout_reward.png)", ""]
    path = run / "heldout_reward.md"
    path.write_text("\n".join(lines))
    return path


def arm_difference(records_a: Sequence[dict], records_b: Sequence[dict], step: int | None = None,
                   rewards: Sequence[str] | None = None) -> list[dict]:
    """Two GRPO runs from one start on the same held-out prompts (CARE and an ablation): per reward, each run's
    change since its first evaluation and A's change minus B's, paired per prompt, at ``step`` (default: the last
    step both evaluated).

    Why paired: both runs score the same prompts, so the prompt-to-prompt spread cancels in the difference. Where
    both started from the same adapter, their first evaluations are identical and the difference is simply A − B
    at ``step``. Rows: ``reward`` (``total`` first), ``n``, ``same_start``, and ``a``/``b``/``difference`` as
    (mean, lo, hi); ``rewards`` keeps only those names (the others' bootstraps are not run).
    """
    from carelab.stats import bootstrap_ci, paired_difference_ci

    by_step_a, by_step_b = {r["step"]: r for r in records_a}, {r["step"]: r for r in records_b}
    common = sorted(set(by_step_a) & set(by_step_b))
    if not records_a or not records_b or not common:
        raise ValueError("the two runs share no evaluated step")
    step = common[-1] if step is None else step
    if step not in by_step_a or step not in by_step_b:
        raise ValueError(f"step {step} is not evaluated in both runs (both have: {common})")
    first_a, first_b = min(records_a, key=lambda r: r["step"]), min(records_b, key=lambda r: r["step"])
    if first_a.get("ids") != first_b.get("ids") or by_step_a[step].get("ids") != first_a.get("ids"):
        raise ValueError("the two runs' held-out prompts differ (ids): they cannot be paired")

    def scores(rec: dict) -> dict[str, list[float]]:
        return {"total": rec["per_item"], **{k: v for k, v in (rec.get("per_item_scores") or {}).items()
                                             if k != "total"}}

    start_a, start_b, end_a, end_b = scores(first_a), scores(first_b), scores(by_step_a[step]), scores(by_step_b[step])
    rows = []
    shared = [k for k in start_a if k in start_b and k in end_a and k in end_b]
    for name in [k for k in shared if rewards is None or k in rewards]:
        change_a = [e - s for e, s in zip(end_a[name], start_a[name], strict=True)]
        change_b = [e - s for e, s in zip(end_b[name], start_b[name], strict=True)]
        rows.append({"reward": name, "step": step, "n": len(change_a), "same_start": start_a[name] == start_b[name],
                     "a": bootstrap_ci(change_a).as_tuple()[:3], "b": bootstrap_ci(change_b).as_tuple()[:3],
                     "difference": paired_difference_ci(change_a, change_b).as_tuple()[:3]})
    return rows


def plot_arm_curves(records_a: Sequence[dict], records_b: Sequence[dict], path: str | Path, reward: str = "retrieval",
                    labels: tuple[str, str] = ("A", "B")) -> Path:
    """One reward's change since update 0 in two runs at every step both evaluated, with 95 % CIs, and their
    paired difference: the ablation's claim read along the whole curve rather than at one chosen step."""
    from carelab.report import new_figure, save_figure

    common = sorted({r["step"] for r in records_a} & {r["step"] for r in records_b})
    if not common:
        raise ValueError("the two runs share no evaluated step")
    by_step = [arm_difference(records_a, records_b, step, rewards=(reward,)) for step in common]
    if not all(by_step):
        raise ValueError(f"reward {reward!r} is not scored per prompt in both runs")
    by_step = [rows[0] for rows in by_step]
    steps = [r["step"] for r in by_step]
    fig, ax = new_figure()
    for key, label, style in (("a", labels[0], "o-"), ("b", labels[1], "s-"),
                              ("difference", f"{labels[0]} − {labels[1]} (paired)", "^--")):
        line, = ax.plot(steps, [r[key][0] for r in by_step], style, label=label)
        ax.fill_between(steps, [r[key][1] for r in by_step], [r[key][2] for r in by_step], alpha=0.15,
                        color=line.get_color())
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("GRPO update")
    ax.set_ylabel(f"{reward} reward change since update 0")
    ax.set_title(f"{reward} on {by_step[0]['n']} dev prompts, 95 % bootstrap CIs")
    ax.legend()
    return save_figure(fig, path)
