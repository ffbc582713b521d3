"""Materialise a model folder with seeded random weights from a folder holding only its config and tokenizer.

Why: a GPU machine that can be reached only by copying at most 64 MiB (this workplace's device tool) cannot receive
SmolLM2's 98 MB GGUF, but ``benchmarks/gpu_smoke.sh`` checks code paths (bf16 SFT, GRPO rollouts and updates, eval
batches), not answer quality, and these run the same on the real architecture and tokenizer with random weights.

    python benchmarks/random_weights.py CONFIG_DIR OUT_DIR [--seed 0] [--dtype bfloat16]

CONFIG_DIR: ``config.json`` plus the tokenizer files (``tokenizer.json``, ``tokenizer_config.json``, chat template),
e.g. a copy of ``~/.cache/carelab/smollm2-135m-instruct`` without ``model.safetensors``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

#: the tokenizer's files (and the generation settings), copied as they are; save_pretrained writes config.json
COPIED = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
          "special_tokens_map.json")


def materialise(config_dir: Path, out_dir: Path, seed: int = 0, dtype: str = "bfloat16") -> Path:
    """Write ``out_dir`` = the config's architecture with random weights (seeded) and the same tokenizer files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (config_dir / "config.json").exists():
        raise SystemExit(f"random_weights: {config_dir / 'config.json'} is missing")
    config = AutoConfig.from_pretrained(str(config_dir))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.to(getattr(torch, dtype)).save_pretrained(str(out_dir))
    for name in COPIED:  # save_pretrained may have written generation_config.json already
        if (config_dir / name).exists() and not (out_dir / name).exists():
            shutil.copy(config_dir / name, out_dir / name)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    out = materialise(args.config_dir, args.out_dir, args.seed, args.dtype)
    files = sum(1 for _ in out.iterdir())
    print(f"random_weights: {out} ({files} files, seed {args.seed}, {args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
