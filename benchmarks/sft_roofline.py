"""How fast SFT could be on this CPU at all: the FLOPs of one SFT update against the machine's matmul rate.

Why: the issue asks for ≥ 2× today's SFT tokens/s. This bounds what any schedule of the same computation can
reach here. It counts the FLOPs of one fwd+bwd pass of the CPU presets' SFT layer (``sft_model`` of
sft_memory_probe.py) with PyTorch's FlopCounterMode, recomputation included, for three settings: today's (no
checkpointing, LoRA dropout 0.05, the LM head at every position), the presets' (checkpointing, no dropout,
the head at the labelled positions) and the cheapest (the presets' without checkpointing). It
times each pass, then times ``torch.mm`` at the model's own linear shapes. The ceiling is that matmul rate
divided by the FLOPs per token: what a step would reach if it did nothing but its matmuls, at full speed.
One process, one run; every pass after a warm-up pass.

    python benchmarks/sft_roofline.py [--length 730] [--rows 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from sft_memory_probe import random_batch, sft_model  # noqa: E402

#: setting -> (gradient checkpointing, LoRA dropout, LM head at the labelled positions only)
SETTINGS = {"today": (False, 0.05, False), "presets": (True, 0.0, True), "no-recompute": (False, 0.0, True)}


def one_pass(model, ids, labels, completion_head: bool) -> None:
    """One fwd+bwd of the SFT loss (with ``completion_head``, the LM head at the labelled positions only)."""
    import torch

    from carelab.care.train.common import completion_positions_only

    with completion_positions_only(completion_head):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True,
                    use_cache=False)
    out.loss.backward()
    model.zero_grad(set_to_none=True)


def matmul_rate(model, tokens: int, seconds: float = 2.0) -> float:
    """GFLOP/s of ``torch.mm`` over the model's linear shapes at ``tokens`` rows, weighted by how often each occurs
    (total FLOPs / total time, so a slow shape counts as much as it costs)."""
    import torch

    shapes: dict[tuple[int, int], int] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name:  # the frozen layers: nearly all the FLOPs
            key = (module.in_features, module.out_features)
            shapes[key] = shapes.get(key, 0) + 1
    flops = secs = 0.0
    for (k, n), count in shapes.items():
        a, b = torch.randn(tokens, k), torch.randn(k, n)
        a @ b
        t0, reps = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds / len(shapes):
            a @ b
            reps += 1
        per_call = (time.perf_counter() - t0) / reps
        flops += count * 2 * tokens * k * n
        secs += count * per_call
    return flops / secs / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--length", type=int, default=730, help="tokens per trace (the step benchmark's are ~730)")
    ap.add_argument("--rows", type=int, default=4, help="traces per batch (the presets' 4)")
    ap.add_argument("--completion-share", type=float, default=0.17, help="labelled share of each trace")
    args = ap.parse_args()

    from torch.utils.flop_counter import FlopCounterMode

    results = {}
    rate = None
    for name, (checkpointing, dropout, completion_head) in SETTINGS.items():
        model = sft_model(args.model, checkpointing=checkpointing, lora_dropout=dropout)
        ids, labels = random_batch(args.rows, args.length, args.completion_share,
                                   vocab=min(40_000, model.config.vocab_size))
        tokens = ids.numel()
        counter = FlopCounterMode(display=False)
        with counter:
            one_pass(model, ids, labels, completion_head)  # also the warm-up
        t0 = time.perf_counter()
        one_pass(model, ids, labels, completion_head)
        results[name] = {"gflop_per_token": counter.get_total_flops() / tokens / 1e9, "wall": time.perf_counter() - t0}
        if rate is None:
            rate = matmul_rate(model, tokens)
        del model
    base = tokens / results["today"]["wall"]
    print(f"\n{args.rows} × {args.length} tokens per pass; torch.mm at the model's shapes: {rate:.1f} GFLOP/s\n")
    print("| setting | GFLOP / token | tokens / s (one pass) | × today | achieved GFLOP/s | ceiling tokens / s "
          "| ceiling × today |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        speed = tokens / r["wall"]
        ceiling = rate / r["gflop_per_token"]
        print(f"| {name} | {r['gflop_per_token']:.3f} | {speed:.0f} | {speed / base:.2f} | "
              f"{speed * r['gflop_per_token']:.0f} | {ceiling:.0f} | {ceiling / base:.2f} |")


if __name__ == "__main__":
    main()
