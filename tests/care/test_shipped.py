"""Shipping a reproduce run's CARE adapter: refused unless it beats Original; bf16 copy + model card; loadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from carelab.cli import app


def _fake_run(root: Path, care_scores: tuple[float, float], original_scores: tuple[float, float]) -> Path:
    """A reproduce folder with a real tiny LoRA adapter and an eval metrics.json with the given scores."""
    from peft import LoraConfig, get_peft_model

    from carelab.models import load_model

    base, _ = load_model("tiny-random-qwen2")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(root / "grpo" / "final-adapter")
    results = [{"label": label, "method": method, "dataset": ds, "dataset_name": ds, "score": score}
               for label, method, scores in (("Original", "original", original_scores), ("CARE", "care", care_scores))
               for ds, score in zip(("multihop", "CofCA"), scores, strict=True)]
    (root / "eval").mkdir(parents=True)
    (root / "eval" / "metrics.json").write_text(json.dumps({"results": results}))
    (root / "sft").mkdir()
    (root / "sft" / "sft_metrics.json").write_text(json.dumps({"n_examples": 100, "steps": 75, "first_loss": 1.4,
                                                               "last_loss": 0.3}))
    (root / "grpo" / "grpo_metrics.json").write_text(json.dumps({"steps": 12, "n_easy": 120, "n_hard": 60}))
    (root / "reproduce_config.json").write_text(json.dumps({
        "preset": "cpu-full", "out": "runs/cpu-full-v2", "model": "smollm2-135m-instruct",
        "sft": {"epochs": 3, "lr": 5e-4}, "grpo": {"num_generations": 5, "lr": 3e-5}, "eval": {"limit": 12},
        "data": {"sft_source": 100}}))
    return root


def test_ship_packages_bf16_adapter_with_card_and_it_loads(tmp_path):
    from safetensors.torch import load_file

    from carelab.care.shipped import ship_from_run
    from carelab.models import load_model

    run = _fake_run(tmp_path / "run", care_scores=(30.0, 20.0), original_scores=(10.0, 14.0))
    dest = ship_from_run(str(run), str(tmp_path / "shipped"))
    tensors = load_file(str(dest / "adapter_model.safetensors"))
    assert tensors and all(t.dtype == torch.bfloat16 for t in tensors.values())
    card = (dest / "README.md").read_text()
    assert "carelab care ship runs/cpu-full-v2" in card and "| CARE | 20.0 | 30.0 | 25.0 |" in card
    assert "75 steps" in card and "rank 4" in card and "sft_source 100" in card
    cfg = json.loads((dest / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "smollm2-135m-instruct"
    model, _ = load_model("tiny-random-qwen2", adapter=str(dest))  # PEFT reads the bf16 copy
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_ship_refuses_an_adapter_that_does_not_beat_original(tmp_path):
    from carelab.care.shipped import ship_from_run

    run = _fake_run(tmp_path / "run", care_scores=(5.0, 0.0), original_scores=(10.0, 14.0))
    with pytest.raises(ValueError, match="--force"):
        ship_from_run(str(run), str(tmp_path / "shipped"))
    assert not (tmp_path / "shipped").exists()
    res = CliRunner().invoke(app, ["care", "ship", str(run), "--out", str(tmp_path / "shipped")])
    assert res.exit_code == 2 and "does not beat" in res.output.replace("\n", " ") and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["care", "ship", str(run), "--out", str(tmp_path / "shipped"), "--force"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "shipped" / "README.md").exists()


def test_ship_names_a_folder_that_is_not_a_run(tmp_path):
    res = CliRunner().invoke(app, ["care", "ship", str(tmp_path)])
    assert res.exit_code == 2 and "reproduce_config.json: missing" in res.output.replace("\n", "")


def test_ship_takes_the_base_model_from_the_run(tmp_path):
    """A run on another model records that model as the adapter's base; it cannot become the bundled default."""
    from carelab.care.shipped import ship_from_run
    from carelab.models import load_model

    run = _fake_run(tmp_path / "run", care_scores=(30.0, 20.0), original_scores=(10.0, 14.0))
    cfg = json.loads((run / "reproduce_config.json").read_text())
    (run / "reproduce_config.json").write_text(json.dumps({**cfg, "model": "tiny-random-qwen2"}))
    with pytest.raises(ValueError, match="--out"):
        ship_from_run(str(run))
    dest = ship_from_run(str(run), str(tmp_path / "shipped"))
    assert json.loads((dest / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-random-qwen2"
    card = (dest / "README.md").read_text()
    assert card.startswith("# CARE LoRA adapter for tiny-random-qwen2") and "SmolLM2" not in card
    assert "carelab care sft-data" in card and "carelab data sft" not in card
    model, _ = load_model(str(dest))  # the folder alone names its base
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_model_card_describes_the_preset_set_specs():
    from carelab.care.shipped import describe_sets

    line = describe_sets({"sft": [{"kind": "hotpotqa", "n": 160, "style": "mixed"}, {"kind": "cofca", "n": 100}],
                          "easy": {"kind": "drop", "n": 160}, "hard": {"kind": "msmarco", "n": 80},
                          "tests": {"heldout-style": {"kind": "hotpotqa", "n": 100, "style": "heldout"}}})
    assert line == ("SFT sources hotpotqa 160 (mixed style) + cofca 100; easy drop 160; hard msmarco 80; "
                    "tests heldout-style: hotpotqa 100 (heldout style)")
    assert describe_sets({"sft_source": 100}) == "sft_source 100"


def _add_rows(run: Path, label: str, scores: tuple[float, float], items: dict[str, list[float]]) -> None:
    """Append a method's rows (with per-item scores, so paired differences can be computed) to the run's eval."""
    path = run / "eval" / "metrics.json"
    data = json.loads(path.read_text())
    for r in data["results"]:
        r.setdefault("item_scores", {f"{r['dataset']}-{i}": v for i, v in enumerate(items[r["label"]])})
    data["results"] += [{"label": label, "method": "care", "dataset": ds, "dataset_name": ds, "score": score,
                         "item_scores": {f"{ds}-{i}": v for i, v in enumerate(items[label])}}
                        for ds, score in zip(("multihop", "CofCA"), scores, strict=True)]
    path.write_text(json.dumps(data))


def test_ship_replaces_the_bundled_adapter_only_on_paired_evidence(tmp_path):
    """With a bundled row in the run, CARE must beat it on the same items (interval above 0); the card shows
    intervals and the paired differences."""
    from carelab.care.shipped import ship_from_run

    run = _fake_run(tmp_path / "run", care_scores=(30.0, 20.0), original_scores=(10.0, 14.0))
    # CARE better than the bundled adapter on two items, worse on one: the interval straddles 0
    _add_rows(run, "CARE (bundled)", (20.0, 20.0), {"Original": [0, 0, 0], "CARE": [100, 100, 0],
                                                    "CARE (bundled)": [0, 0, 100]})
    with pytest.raises(ValueError, match=r"bundled adapter on the same items.*interval is above 0"):
        ship_from_run(str(run), str(tmp_path / "shipped"))
    run2 = _fake_run(tmp_path / "run2", care_scores=(30.0, 20.0), original_scores=(10.0, 14.0))
    _add_rows(run2, "CARE (bundled)", (20.0, 20.0), {"Original": [0, 0, 0], "CARE": [100, 100, 100],
                                                     "CARE (bundled)": [0, 0, 0]})
    card = (ship_from_run(str(run2), str(tmp_path / "shipped")) / "README.md").read_text()
    assert "| CARE − CARE (bundled) | +100.0 [100.0, 100.0] * | +100.0 [100.0, 100.0] * |" in card
    assert "95 % bootstrap interval" in card
