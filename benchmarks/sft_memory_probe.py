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


def sft_model(name: str, release_memory: bool = False, checkpointing: bool = True, lora_dropout: float = 0.0):
    """The CPU presets' SFT layer without a Trainer: TRL's fused LM head, LoRA r = 8 on every linear layer and
    (by default) gradient checkpointing, on the model ``name``."""
    from peft import LoraConfig, get_peft_model
    from trl import SFTConfig
    from trl.trainer.utils import add_fused_lm_head

    from carelab.care.train.common import prepare_run
    from carelab.models import load_model

    prepare_run(SFTConfig, {}, release_memory=release_memory)
    model, _ = load_model(name)
    model.train()
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=lora_dropout,
                                             target_modules="all-linear"))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def random_batch(rows: int, length: int, completion_share: float, vocab: int = 40_000):
    """``rows`` × ``length`` random token ids, the last ``completion_share`` of each row labelled (the rest -100)."""
    import torch

    ids = torch.randint(3, vocab, (rows, length), generator=torch.Generator().manual_seed(0))
    labels = ids.masked_fill(torch.arange(length) < int(length * (1 - completion_share)), -100)
    return ids, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--length", type=int, default=600)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--release-freed-memory", action="store_true")
    ap.add_argument("--all-positions", action="store_true", help="the LM head over every position (as before)")
    args = ap.parse_args()

    import torch

    from carelab.care.train.common import completion_positions_only

    model = sft_model(args.model, release_memory=args.release_freed_memory)
    ids, labels = random_batch(4, args.length, completion_share=0.2)
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
