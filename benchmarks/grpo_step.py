"""GRPO optimizer updates per hour on CPU with SmolLM2: today's settings against the faster ones, in one run.

Each variant runs real GRPO steps through ``carelab.care.train.grpo.run_grpo`` (curriculum sampler and the three
rewards included) in its own process, at the same group size, prompt and completion lengths. Prints, per
variant: wall and CPU seconds per optimizer update (first update dropped as warm-up), generation and reward
share, updates/hour as a ratio to ``today``, and peak RSS. Goal: ≥ 3× today's updates/hour. The CPU-time
ratio is the one to trust when other jobs share the cores (wall time then depends on their load).

    python benchmarks/grpo_step.py [--steps 5] [--completion-tokens 160] [--variants today,batched,…]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from variants import FUSED_LORA, HUGE_PAGES, ONEDNN, SMALL_PAGES, dispatch, split_env, timed  # noqa: E402

#: name -> GRPORunConfig overrides; ``today`` is the cpu-full preset before this benchmark existed.
#: These ran with PyTorch's allocator on 4 KB pages, as carelab did before it turned huge pages on.
_SMALL_PAGE_VARIANTS: dict[str, dict] = {
    "today": dict(batch_size=1, grad_accum=5, beta=0.01, share_prompt=False),
    "group-batch": dict(batch_size=5, grad_accum=1, beta=0.01, share_prompt=False),
    "per-rollout+beta0+mu2": dict(batch_size=1, grad_accum=5, beta=0.0, num_iterations=2, share_prompt=False),
    "group-batch+beta0": dict(batch_size=5, grad_accum=1, beta=0.0, share_prompt=False),
    "group-batch+beta0+mu2": dict(batch_size=5, grad_accum=1, beta=0.0, num_iterations=2, share_prompt=False),
    "group-batch+beta0+mu2+gc": dict(batch_size=5, grad_accum=1, beta=0.0, num_iterations=2,
                                     gradient_checkpointing=True, share_prompt=False),
    # the group's prompt encoded once for the update, the old log-probs and the rollouts' prefill
    "shared-prompt+beta0": dict(batch_size=5, grad_accum=1, beta=0.0, share_prompt=True),
    "shared-prompt+beta0+mu2": dict(batch_size=5, grad_accum=1, beta=0.0, num_iterations=2, share_prompt=True),
    # cpu-full now: the KL anchor to the SFT model costs one reference pass (adapter off) per generated group
    "shared-prompt+beta0.04+mu2": dict(batch_size=5, grad_accum=1, beta=0.04, num_iterations=2, share_prompt=True),
    "shared-prompt+beta0+mu4": dict(batch_size=5, grad_accum=1, beta=0.0, num_iterations=4, share_prompt=True),
    # freed activations returned to the OS (--release-freed-memory; generation keeps the heap)
    "shared-prompt+beta0+mu2+unmap": dict(batch_size=5, grad_accum=1, beta=0.0, num_iterations=2, share_prompt=True,
                                          release_freed_memory=True),
}
#: (and scored a shared prompt's completions all at once: no recomputation)
VARIANTS: dict[str, dict] = {name: dict(spec, env=SMALL_PAGES, recompute_rows=0)
                             for name, spec in _SMALL_PAGE_VARIANTS.items()}
# tensors of >= 2 MB on transparent huge pages (carelab's default), then the completions scored one row at a time
# under activation checkpointing (the default now: cpu-full)
VARIANTS["shared-prompt+beta0.04+mu2+huge-pages"] = dict(_SMALL_PAGE_VARIANTS["shared-prompt+beta0.04+mu2"],
                                                        env=HUGE_PAGES, recompute_rows=0)
for _rows in (1, 2):
    VARIANTS[f"shared-prompt+beta0.04+mu2+huge-pages+recompute{_rows}"] = dict(
        _SMALL_PAGE_VARIANTS["shared-prompt+beta0.04+mu2"], env=HUGE_PAGES, recompute_rows=_rows)
# cpu-full's settings with every linear layer by oneDNN instead of torch's BLAS (carelab.onednn) …
VARIANTS["shared-prompt+beta0.04+mu2+huge-pages+recompute1+onednn"] = dict(
    _SMALL_PAGE_VARIANTS["shared-prompt+beta0.04+mu2"], env=ONEDNN, recompute_rows=1)
# … and each LoRA layer one fused product (carelab.onednn.lora_linear): the default now
VARIANTS["shared-prompt+beta0.04+mu2+huge-pages+recompute1+onednn+fused-lora"] = dict(
    _SMALL_PAGE_VARIANTS["shared-prompt+beta0.04+mu2"], env=FUSED_LORA, recompute_rows=1)
# the same defaults with four updates per generation batch and no reference model (μ = 4, β = 0)
VARIANTS["shared-prompt+beta0+mu4+huge-pages+recompute1+onednn+fused-lora"] = dict(
    _SMALL_PAGE_VARIANTS["shared-prompt+beta0+mu4"], env=FUSED_LORA, recompute_rows=1)


def measure(variant: str, steps: int, completion_tokens: int, model: str) -> dict:
    """Run ``steps`` GRPO updates with ``variant``'s settings; time generation, rewards and whole updates."""
    overrides = split_env(VARIANTS[variant])  # before torch is imported
    from transformers import TrainerCallback

    from carelab.care.data import synth
    from carelab.care.train.config import GRPORunConfig
    from carelab.care.train.grpo import run_grpo

    times = {"generation": 0.0, "reward": 0.0}  # generation: inside generate (a shared prefill runs before it)
    step_times: list[float] = []
    cpu_times: list[float] = []  # CPU seconds of this process: robust when other jobs share the cores

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            model.generate = timed(model.generate, times, "generation")

        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()
            if state.global_step == 1:  # the first update is warm-up: forget its parts
                times.update(generation=0.0, reward=0.0)

        def on_step_end(self, args, state, control, **kw):
            step_times.append(time.perf_counter() - self.t0)
            cpu_times.append(time.process_time() - self.c0)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        easy = synth.write("drop", 20, 0, root / "easy.json", context_words=80)
        hard = synth.write("msmarco", 10, 0, root / "hard.json", context_words=200)
        cfg = GRPORunConfig(easy=[str(easy)], hard=[str(hard)], out=str(root / "run"), model=model,
                            max_steps=steps, num_generations=5, max_completion_tokens=completion_tokens,
                            max_prompt_tokens=768, temperature=0.7, top_p=0.9, lr=2e-5, report_to=[],
                            save_steps=10_000, **overrides)
        run_grpo(cfg, callbacks=[Clock()], reward_wrapper=lambda fn: timed(fn, times, "reward"))
    measured = step_times[1:]
    total = sum(measured)
    return {"variant": variant, "updates": len(measured), "s_per_update": total / len(measured),
            "cpu_s_per_update": sum(cpu_times[1:]) / len(measured),
            "generation_share": times["generation"] / total, "reward_share": times["reward"] / total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=5, help="optimizer updates per variant (the first is warm-up)")
    ap.add_argument("--completion-tokens", type=int, default=160)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # set by the parent for one child process
    args = ap.parse_args()
    names = args.variants.split(",")
    results = dispatch(__file__, args.variant, names, functools.partial(
        measure, steps=args.steps, completion_tokens=args.completion_tokens, model=args.model),
        ["--steps", str(args.steps), "--completion-tokens", str(args.completion_tokens), "--model", args.model])
    if results is None:
        return
    base = results[names[0]]["s_per_update"]
    cpu_base = results[names[0]]["cpu_s_per_update"]
    print(f"GRPO on {args.model}: group 5, prompts ≤ 768, completions ≤ {args.completion_tokens} tokens, "
          f"{args.steps - 1} measured updates per variant\n")
    print("| variant | s / update | updates / hour | × today | CPU-s / update | × today (CPU) | generation | rewards "
          "| peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        r = results[name]
        print(f"| {name} | {r['s_per_update']:.1f} | {3600 / r['s_per_update']:.0f} | {base / r['s_per_update']:.2f} "
              f"| {r['cpu_s_per_update']:.1f} | {cpu_base / r['cpu_s_per_update']:.2f} | {100 * r['generation_share']:.0f} % | {100 * r['reward_share']:.1f} % | {r['peak_rss_gb']:.2f} |")


if __name__ == "__main__":
    main()
