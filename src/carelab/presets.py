"""Named presets (YAML) for the CARE commands: ``cpu-quick``, ``cpu-full``, ``paper-qwen2.5-7b`` or a file path.

A preset fills the config; any flag given on the command line overrides it; the effective config is
saved beside the run.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from carelab.options import coerce_field_types
from carelab.runs import InputError


def preset_names() -> list[str]:
    folder = resources.files("carelab") / "configs"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """The preset as a dict of sections (``data``, ``sft``, ``grpo``, ``eval``)."""
    path = Path(name_or_path)
    if not path.exists():
        candidate = resources.files("carelab") / "configs" / f"{name_or_path}.yaml"
        if not candidate.is_file():
            raise InputError(name_or_path, f"unknown preset; choose one of {', '.join(preset_names())} or a YAML file")
        text = candidate.read_text()
        path = Path(str(candidate))
    else:
        text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise InputError(path, f"invalid YAML: {exc}", line=None if line is None else line + 1) from None
    if not isinstance(data, dict):
        raise InputError(path, "a preset must be a mapping of sections")
    return data


def build_config(cls, section: dict[str, Any] | None, overrides: dict[str, Any], source: str = "preset"):
    """Instantiate dataclass ``cls`` from a preset section, then non-None overrides; unknown keys are errors."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, val in (section or {}).items():
        if key not in names:
            raise InputError(source, f"unknown setting for {cls.__name__}", field=key)
        values[key] = val
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**coerce_field_types(cls, values))
