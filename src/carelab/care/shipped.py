"""The CARE LoRA adapter bundled with carelab for the embedded SmolLM2 (when one has been shipped)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def default_adapter() -> str | None:
    """Folder of the bundled CARE adapter, or None when this build ships none."""
    folder = Path(str(resources.files("carelab") / "data" / "care-smollm2-adapter"))
    return str(folder) if (folder / "adapter_config.json").exists() else None


def resolve_adapter(adapter: str | None, model: str) -> str | None:
    """``auto`` → the bundled CARE adapter when serving the embedded model; ``none``/None → no adapter."""
    from carelab.models import DEFAULT_MODEL

    if adapter is None or adapter.lower() == "none":
        return None
    if adapter == "auto":
        return default_adapter() if model in (DEFAULT_MODEL, "smollm2", "embedded") else None
    return adapter


def package_adapter(source: str, dest: str, card: str) -> Path:
    """Copy a trained adapter as bf16 safetensors with a model card (how the bundled adapter is made)."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    src, out = Path(source), Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(src / "adapter_model.safetensors")).items()}
    save_file(tensors, str(out / "adapter_model.safetensors"))
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "smollm2-135m-instruct"
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    (out / "README.md").write_text(card)
    return out
