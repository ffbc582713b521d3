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
