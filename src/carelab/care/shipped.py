"""The CARE LoRA adapter bundled with carelab for the embedded SmolLM2 (when one has been shipped)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def default_adapter() -> str | None:
    """Folder of the bundled CARE adapter, or None when this build ships none."""
    folder = Path(str(resources.files("carelab") / "data" / "care-smollm2-adapter"))
    return str(folder) if (folder / "adapter_config.json").exists() else None
