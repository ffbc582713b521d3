"""Peak RSS of one GRPO group's gradient pass on the shared-prompt path, completions all at once or recomputed.

The GRPO layer of the CPU presets (SmolLM2, LoRA r = 8 on all linear layers, TRL's fused LM head) scores one group
of ``--group`` completions of ``--completion`` random tokens against one ``--prompt``-token prompt with
``carelab.care.train.shared_prefix.shared_prefix_logps``, then backpropagates; no Trainer, no generation. Each
setting runs in its own process (peak RSS only grows within one). Defaults are the cpu-full pool's longest
shapes: prompts up to ~900 tokens, completions up to 192.

    python benchmarks/grpo_update_memory.py [--prompt 900] [--completion 192] [--variants recompute0,recompute1]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from variants import dispatch  # noqa: E402

#: name -> ``recompute_rows`` (0: the group's completions in one pass)
VARIANTS = {"recompute0": 0, "recompute1": 1, "recompute2": 2}


def measure(variant: str, model_name: str, prompt: int, completion: int, group: int, passes: int) -> dict:
    """``passes`` forward/backward passes of one group; the log-prob sum shows both settings compute the same."""
    import torch
    from peft import LoraConfig, get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    from carelab.care.train.shared_prefix import shared_prefix_logps
    from carelab.models import load_model

    model, _ = load_model(model_name)
    add_fused_lm_head(model, temperature=1.0, outputs=("log_probs", "entropy"))
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    shared = torch.randint(100, vocab, (prompt,), generator=g)
    ids = torch.stack([torch.cat([shared, torch.randint(100, vocab, (completion,), generator=g)]) for _ in range(group)])
    mask = torch.ones_like(ids)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(passes):
        logps, entropy = shared_prefix_logps(model, ids, mask, completion, compute_entropy=True, max_rows=group,
                                             recompute_rows=VARIANTS[variant] or None)
        (logps.sum() + 0.01 * entropy.sum()).backward()
    return {"variant": variant, "s_per_pass": (time.perf_counter() - t0) / passes,
            "cpu_s_per_pass": (time.process_time() - c0) / passes, "logp_sum": round(logps.sum().item(), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompt", type=int, default=900)
    ap.add_argument("--completion", type=int, default=192)
    ap.add_argument("--group", type=int, default=5)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--variants", default="recompute0,recompute1")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # set by the parent for one child process
    args = ap.parse_args()
    names = args.variants.split(",")
    opts = ["--model", args.model, "--prompt", str(args.prompt), "--completion", str(args.completion),
            "--group", str(args.group), "--passes", str(args.passes)]
    results = dispatch(__file__, args.variant, names,
                       functools.partial(measure, model_name=args.model, prompt=args.prompt,
                                         completion=args.completion, group=args.group, passes=args.passes), opts)
    if results is None:
        return
    print(f"One group's gradient pass on {args.model}: prompt {args.prompt} + {args.group} × {args.completion} "
          f"tokens, {args.passes} passes each\n")
    print("| variant | s / pass | CPU-s / pass | × first (CPU) | peak RSS GB | log-prob sum |")
    print("|---|---|---|---|---|---|")
    base = results[names[0]]["cpu_s_per_pass"]
    for name in names:
        r = results[name]
        print(f"| {name} | {r['s_per_pass']:.1f} | {r['cpu_s_per_pass']:.1f} | {base / r['cpu_s_per_pass']:.2f} "
              f"| {r['peak_rss_gb']:.2f} | {r['logp_sum']} |")


if __name__ == "__main__":
    main()
