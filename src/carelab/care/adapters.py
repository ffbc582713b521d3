"""Stack two LoRA adapters into one exact adapter on the original base (SFT then GRPO → one CARE adapter).

GRPO trains a fresh LoRA on top of the merged SFT model (so its KL reference is the SFT model, as in the
paper). s₁B₁A₁ + s₂B₂A₂ equals one LoRA of rank r₁+r₂ with A = [A₁; A₂], B = [s₁B₁, s₂B₂] and scale 1, so the
result ships as a single small adapter for the untouched base model. PEFT has no such operation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def _scale(cfg: dict) -> float:
    r, alpha = cfg["r"], cfg["lora_alpha"]
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def _load(folder: str) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    path = Path(folder)
    cfg = json.loads((path / "adapter_config.json").read_text())
    if cfg.get("use_dora") or cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{folder}: only plain LoRA adapters can be stacked exactly (found DoRA or {cfg.get('peft_type')})")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{folder}: per-module rank/alpha patterns are not supported for stacking")
    return cfg, load_file(str(path / "adapter_model.safetensors"))


def stack_lora_adapters(first: str, second: str, out: str) -> Path:
    """Write ``out``: one LoRA adapter whose update is exactly first's plus second's (see module doc)."""
    import torch
    from safetensors.torch import save_file

    cfg1, w1 = _load(first)
    cfg2, w2 = _load(second)
    s1, s2 = _scale(cfg1), _scale(cfg2)
    r1, r2 = cfg1["r"], cfg2["r"]
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in list(w1) + list(w2) if ".lora_" in k})
    tensors: dict[str, torch.Tensor] = {}
    for mod in modules:
        a1, b1 = w1.get(f"{mod}.lora_A.weight"), w1.get(f"{mod}.lora_B.weight")
        a2, b2 = w2.get(f"{mod}.lora_A.weight"), w2.get(f"{mod}.lora_B.weight")
        ref_a, ref_b = (a1 if a1 is not None else a2), (b1 if b1 is not None else b2)
        n, m = ref_a.shape[1], ref_b.shape[0]
        dtype = torch.float32
        a1 = a1.to(dtype) if a1 is not None else torch.zeros(r1, n)
        a2 = a2.to(dtype) if a2 is not None else torch.zeros(r2, n)
        b1 = b1.to(dtype) * s1 if b1 is not None else torch.zeros(m, r1)
        b2 = b2.to(dtype) * s2 if b2 is not None else torch.zeros(m, r2)
        tensors[f"{mod}.lora_A.weight"] = torch.cat([a1, a2], dim=0).contiguous()
        tensors[f"{mod}.lora_B.weight"] = torch.cat([b1, b2], dim=1).contiguous()
    cfg = dict(cfg1)
    rank = r1 + r2
    targets = set(cfg1.get("target_modules") or []) | set(cfg2.get("target_modules") or [])
    cfg.update(r=rank, lora_alpha=rank, use_rslora=False, target_modules=sorted(targets), init_lora_weights=True)
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    (path / "STACKED_FROM.json").write_text(json.dumps({"first": str(first), "second": str(second),
                                                        "scales": [s1, s2], "ranks": [r1, r2]}, indent=2))
    return path
