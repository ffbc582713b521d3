"""Resident memory of SFT fwd+bwd passes with SmolLM2, with and without --release-freed-memory (one process each).

The CPU presets' SFT layer (LoRA r = 8 on all linear layers, gradient checkpointing, TRL's fused LM head at the
completion positions) on a random batch of 4 × ``--length`` tokens, the last 20 % labelled; no Trainer, no data.
Prints, per pass, resident and peak RSS and the process's CPU seconds. It separates what the tensors need from
what glibc's heap keeps: with its default (self-raising) mmap threshold the resident set grows through the
forward pass although checkpointing frees each layer's activations.

    python benchmarks/sft_memory_probe.py [--length 600] [--release-freed-memory] [--all-positions]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from variants import peak_rss_gb  # noqa: E402


def resident_gb() -> float:
    """This process's resident set now (Linux)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--length", type=int, default=600)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--release-freed-memory", action="store_true")
    ap.add_argument("--all-positions", action="store_true", help="the LM head over every position (as before)")
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from trl import SFTConfig
    from trl.trainer.utils import add_fused_lm_head

    from carelab.care.train.common import completion_positions_only, prepare_run
    from carelab.models import load_model

    prepare_run(SFTConfig, {}, release_memory=args.release_freed_memory)
    model, _ = load_model(args.model)
    model.train()
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    ids = torch.randint(3, 40_000, (4, args.length), generator=torch.Generator().manual_seed(0))
    labels = ids.masked_fill(torch.arange(args.length) < int(args.length * 0.8), -100)
    print(f"loaded: resident {resident_gb():.2f} GB, peak {peak_rss_gb():.2f} GB", flush=True)
    for _ in range(args.passes):
        c0 = time.process_time()
        with completion_positions_only(not args.all_positions):
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True,
                        use_cache=False)
        c1 = time.process_time()
        out.loss.backward()
        c2 = time.process_time()
        print(f"fwd {c1 - c0:.1f} CPU-s, bwd {c2 - c1:.1f} CPU-s: resident {resident_gb():.2f} GB, "
              f"peak {peak_rss_gb():.2f} GB, loss {out.loss.item():.5f}", flush=True)
        del out
        model.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
