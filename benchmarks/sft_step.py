"""SFT tokens per second on CPU with SmolLM2: today's settings against packing / checkpointing, in one run.

Each variant runs real SFT steps through ``carelab.care.train.sft.run_sft`` on the same rule-pipeline traces
(HotpotQA-shaped, cpu-full's 7-paragraph contexts) in its own process, so peak RSS is per variant.
Throughput counts real (non-padding) tokens — what the model learns from — per second of optimizer
steps, first step dropped as warm-up, per wall second and per CPU second of the process (the ratio to
trust when other jobs share the cores). Goal: ≥ 2× today's tokens/s, peak RSS ≤ 4 GB.

    python benchmarks/sft_step.py [--steps 6] [--variants today,packing,…]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from variants import FUSED_LORA, HUGE_PAGES, ONEDNN, SMALL_PAGES, dispatch, split_env  # noqa: E402

#: the default this benchmark's later work changed, switched back for the variants measured before it: the LM
#: head over every position
BEFORE = dict(completion_logits_only=False)
PRESET = dict(batch_size=4, gradient_checkpointing=True, lora_dropout=0.0)  # the CPU presets' SFT settings
#: name -> SFTRunConfig overrides; ``today`` is the preset before this benchmark existed (batch 4, padded).
#: These ran with PyTorch's allocator on 4 KB pages, as carelab did before it turned huge pages on.
_SMALL_PAGE_VARIANTS: dict[str, dict] = {
    "today": dict(batch_size=4, **BEFORE),
    "grad-ckpt": dict(batch_size=4, gradient_checkpointing=True, **BEFORE),
    "packing+grad-ckpt": dict(batch_size=2, packing=True, gradient_checkpointing=True, **BEFORE),
    "packing+grad-ckpt+no-dropout": dict(batch_size=2, packing=True, gradient_checkpointing=True, lora_dropout=0.0,
                                         **BEFORE),
    "grad-ckpt+no-dropout": dict(PRESET, **BEFORE),
    "packing": dict(batch_size=2, packing=True, **BEFORE),
    # the LM head only at the completion positions, the loss's (the default now)
    "grad-ckpt+no-dropout+completion-head": dict(PRESET),
    # … and freed activations returned to the OS (--release-freed-memory)
    "grad-ckpt+no-dropout+completion-head+unmap": dict(PRESET, release_freed_memory=True),
    "grad-ckpt+no-dropout+completion-head+length-grouped": dict(
        PRESET, trl={"train_sampling_strategy": "group_by_length"}),
}
VARIANTS: dict[str, dict] = {name: dict(spec, env=SMALL_PAGES) for name, spec in _SMALL_PAGE_VARIANTS.items()}
# the presets now: tensors of >= 2 MB on transparent huge pages (carelab's default), with or without unmapping
VARIANTS["grad-ckpt+no-dropout+completion-head+huge-pages"] = dict(PRESET, env=HUGE_PAGES)
VARIANTS["grad-ckpt+no-dropout+completion-head+unmap+huge-pages"] = dict(PRESET, release_freed_memory=True,
                                                                          env=HUGE_PAGES)
# no recomputation: sft_roofline.py counts 0.46 instead of 0.68 GFLOP per token without checkpointing
VARIANTS["no-dropout+completion-head+huge-pages"] = dict(PRESET, gradient_checkpointing=False, env=HUGE_PAGES)
# the presets now: every linear layer by oneDNN instead of torch's BLAS (carelab.onednn)
VARIANTS["grad-ckpt+no-dropout+completion-head+huge-pages+onednn"] = dict(PRESET, env=ONEDNN)
# every variant above attends with the padding mask, as carelab did before --causal-right-padding
for _spec in VARIANTS.values():
    _spec.setdefault("causal_right_padding", False)
# the presets now: right-padded batches attend causally without the padding mask (--causal-right-padding) …
VARIANTS["grad-ckpt+no-dropout+completion-head+huge-pages+onednn+causal"] = dict(PRESET, env=ONEDNN)
# … and each LoRA layer one fused product (carelab.onednn.lora_linear)
VARIANTS["grad-ckpt+no-dropout+completion-head+huge-pages+onednn+causal+fused-lora"] = dict(PRESET, env=FUSED_LORA)


def measure(variant: str, steps: int, model: str) -> dict:
    """Run ``steps`` SFT updates with ``variant``'s settings; real tokens per second after the first."""
    overrides = split_env(VARIANTS[variant])  # before torch is imported
    from transformers import TrainerCallback

    from carelab.care.data import synth
    from carelab.care.sft.pipeline import SftDataConfig, run_pipeline
    from carelab.care.train.config import SFTRunConfig
    from carelab.care.train.sft import run_sft

    marks: list[tuple[float, float, int]] = []  # wall, CPU seconds of this process, tokens seen

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append((time.perf_counter(), time.process_time(), state.num_input_tokens_seen))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = synth.write("hotpotqa", 60, 0, root / "src.json", context_words=180, distractors=5)
        run_pipeline(SftDataConfig(input=str(src), format="hotpotqa", reasoner="rule", injector="rule",
                                   out=str(root / "sft.jsonl")))
        trl = {"include_num_input_tokens_seen": "non_padding", **overrides.pop("trl", {})}
        cfg = SFTRunConfig(data=[str(root / "sft.jsonl")], out=str(root / "run"), model=model, max_steps=steps,
                           max_length=1024, lr=3e-4, report_to=[], save_steps=10_000, logging_steps=1, trl=trl,
                           **overrides)
        metrics = run_sft(cfg, callbacks=[Clock()])
    (t0, c0, n0), (t1, c1, n1) = marks[0], marks[-1]
    return {"variant": variant, "updates": len(marks) - 1, "tokens_per_s": (n1 - n0) / (t1 - t0),
            "tokens_per_cpu_s": (n1 - n0) / (c1 - c0),
            "s_per_update": (t1 - t0) / (len(marks) - 1), "last_loss": metrics["last_loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=6, help="optimizer updates per variant (the first is warm-up)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # set by the parent for one child process
    args = ap.parse_args()
    names = args.variants.split(",")
    results = dispatch(__file__, args.variant, names, functools.partial(measure, steps=args.steps, model=args.model),
                       ["--steps", str(args.steps), "--model", args.model])
    if results is None:
        return
    base = results[names[0]]["tokens_per_s"]
    cpu_base = results[names[0]]["tokens_per_cpu_s"]
    print(f"SFT on {args.model}: rule-pipeline traces, max length 1024, {args.steps - 1} measured updates each\n")
    print("| variant | real tokens / s | × first | tokens / CPU-s | × first (CPU) | s / update | peak RSS GB "
          "| last loss |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        r = results[name]
        print(f"| {name} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f} | {r['tokens_per_cpu_s']:.0f} "
              f"| {r['tokens_per_cpu_s'] / cpu_base:.2f} | {r['s_per_update']:.1f} "
              f"| {r['peak_rss_gb']:.2f} | {r['last_loss']:.4f} |")


if __name__ == "__main__":
    main()
