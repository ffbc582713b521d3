"""Time of a CARE GRPO step on CPU with SmolLM2, split into generation, reward and update.

Runs a few real GRPO steps through ``carelab.care.train.run_grpo`` (curriculum sampler included) and
reports how much of a step the rewards and the curriculum cost. Goal: reward + curriculum ≤ 2 %.

    python benchmarks/grpo_step.py [--steps 3] [--completion-tokens 128] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from carelab.care import synth
from carelab.care.curriculum import CurriculumSampler
from carelab.care.train import GRPORunConfig, run_grpo


class StepClock(TrainerCallback):
    """Wall time per optimizer step and of every ``generate`` call inside it."""

    def __init__(self):
        self.step_times: list[float] = []
        self.generation = 0.0
        self._t = 0.0

    def on_train_begin(self, args, state, control, model=None, **kw):
        original = model.generate

        @functools.wraps(original)
        def timed_generate(*a, **k):
            t0 = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                self.generation += time.perf_counter() - t0

        model.generate = timed_generate

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.step_times.append(time.perf_counter() - self._t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--completion-tokens", type=int, default=128)
    ap.add_argument("--num-generations", type=int, default=5)
    args = ap.parse_args()
    reward_time = {"t": 0.0}

    def wrap(fn):
        @functools.wraps(fn)
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                reward_time["t"] += time.perf_counter() - t0

        return timed

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        easy = synth.write("drop", 20, 0, root / "easy.json", context_words=80)
        hard = synth.write("msmarco", 10, 0, root / "hard.json", context_words=200)
        clock = StepClock()
        cfg = GRPORunConfig(easy=[str(easy)], hard=[str(hard)], out=str(root / "run"), model=args.model,
                            max_steps=args.steps, batch_size=1, grad_accum=args.num_generations,
                            num_generations=args.num_generations, max_completion_tokens=args.completion_tokens,
                            max_prompt_tokens=768, temperature=0.7, top_p=0.9, lr=2e-5, report_to=[], save_steps=10_000)
        run_grpo(cfg, callbacks=[clock], reward_wrapper=wrap)
    # the curriculum's own cost: planning the whole run's draw, as the sampler does at each epoch
    t0 = time.perf_counter()
    CurriculumSampler(20, 10, num_generations=args.num_generations, prompts_per_chunk=1, repeat_count=1,
                      num_chunks=args.steps + 1).plan()
    curriculum = time.perf_counter() - t0
    steps = clock.step_times[1:] or clock.step_times  # the first step includes warm-up
    n = len(steps)
    total = sum(steps)
    scale = n / len(clock.step_times)
    gen, rew = clock.generation * scale, reward_time["t"] * scale
    update = total - gen - rew
    print(f"{'part':<22}{'s/step':>10}{'share':>9}")
    for name, t in (("generation", gen), ("reward (3 functions)", rew), ("update + logprobs", update),
                    ("curriculum sampler", curriculum / len(clock.step_times))):
        print(f"{name:<22}{t / n:>10.3f}{100 * t / total:>8.2f}%")
    print(f"{'step total':<22}{total / n:>10.3f}")
    overhead = (rew + curriculum * scale) / total
    print(f"reward + curriculum overhead: {100 * overhead:.3f} % of a step (goal ≤ 2 %)")


if __name__ == "__main__":
    main()
