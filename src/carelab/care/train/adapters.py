"""Stack two LoRA adapters into one exact adapter on the original base (SFT then GRPO → one CARE adapter).

GRPO trains a fresh LoRA on top of the merged SFT model (so its KL reference is the SFT model, as in the
paper). s₁B₁A₁ + s₂B₂A₂ equals one LoRA of rank r₁+r₂ with A = [A₁; A₂], B = [s₁B₁, s₂B₂] and scale 1, so the
result ships as a single small adapter for the untouched base model. PEFT has no such operation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _scale(cfg: dict) -> float:
    r, alpha = cfg["r"], cfg["lora_alpha"]
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


#: ``--adapter`` choices whose saved adapter is a plain LoRA delta on the untouched base (PiSSA and LoRA-GA
#: are saved converted, see ``carelab.lora.variants``); DoRA and full fine-tuning cannot be stacked.
STACKABLE_ADAPTERS = ("lora", "rslora", "pissa", "lora-ga", "lora+", "lora-fa", "lora-pro")


def _unstackable_reason(cfg: dict) -> str | None:
    """Why an adapter config cannot be stacked exactly, or None when it can."""
    if cfg.get("use_dora") or cfg.get("peft_type", "LORA") != "LORA":
        return f"only plain LoRA adapters can be stacked exactly (found {'DoRA' if cfg.get('use_dora') else cfg.get('peft_type')})"
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        return "per-module rank/alpha patterns are not supported for stacking"
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(("pissa", "olora", "lora_ga", "corda", "eva")):
        return (f"init_lora_weights={init!r}: this adapter is relative to a rewritten base, not a plain LoRA delta "
                "(re-save it with PEFT's path_initial_model_for_weight_conversion, as carelab now does)")
    return None


def _load(folder: str) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    path = Path(folder)
    cfg = json.loads((path / "adapter_config.json").read_text())
    reason = _unstackable_reason(cfg)
    if reason:
        raise ValueError(f"{folder}: {reason}")
    return cfg, load_file(str(path / "adapter_model.safetensors"))


def check_init_adapter(cfg: Any) -> None:
    """Refuse a GRPO run whose SFT → GRPO adapters could not be stacked, before any training time is spent.

    ``cfg`` is a ``GRPORunConfig`` (``init_adapter``, ``adapter``). Raises ``InputError``/``ValueError`` with
    the way forward: a full fine-tune is a model (``--model``), DoRA cannot be stacked into one LoRA.
    """
    from carelab.runs import InputError

    init = getattr(cfg, "init_adapter", None)
    if not init:
        return
    folder = Path(init)
    config_file = folder / "adapter_config.json"
    if not config_file.exists():
        if (folder / "config.json").exists():
            raise InputError(folder, "holds a full model (SFT with --adapter full), not an adapter; "
                                     f"pass it as --model {folder} instead of --init-adapter")
        raise InputError(config_file, "missing; --init-adapter needs the --out folder of `carelab care sft`")
    reason = _unstackable_reason(json.loads(config_file.read_text()))
    if reason:
        raise InputError(config_file, f"{reason}; GRPO's adapter could not be stacked onto it into one CARE "
                                      "adapter. Train SFT with a LoRA-type --adapter "
                                      f"({', '.join(STACKABLE_ADAPTERS)}) or pass a merged model as --model")
    adapter = str(getattr(cfg, "adapter", "lora")).strip().lower()
    if adapter not in STACKABLE_ADAPTERS:
        raise ValueError(f"--adapter {adapter} cannot be stacked onto the --init-adapter SFT adapter into one CARE "
                         f"adapter; with --init-adapter use one of {', '.join(STACKABLE_ADAPTERS)}")


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
