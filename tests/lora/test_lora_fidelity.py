"""Fidelity experiment: exact full gradient captured, LoRA-Pro never worse than best-scaled LoRA, resumable, CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from typer.testing import CliRunner

from carelab.lora.cli import app
from carelab.lora.fidelity import (
    FIDELITY_METHODS,
    FidelityConfig,
    best_lr_rows,
    closeness_rows,
    layer_fidelity,
    load_records,
    make_task,
    run_experiment,
    summarise,
)
from carelab.lora.lorapro import find_lora_pairs
from carelab.lora.variants import ADAPTER_CHOICES
from carelab.models import load_model
from carelab.runs import InputError


def _tiny_cfg(**kw) -> FidelityConfig:
    base = dict(methods=["lora", "lora-pro", "full"], optimizers=["sgd", "adamw"], sgd_lrs=[0.5], adamw_lrs=[1e-2],
                seeds=1, steps=3, batch_size=4, seq_len=16, n_train=32, n_eval=8, n_test=8)
    base.update(kw)
    return FidelityConfig(**base)


def test_probe_captures_the_exact_full_weight_gradient():
    """The base-weight gradient inside the PEFT model equals the gradient of the merged plain model."""
    model, tok = load_model("tiny-random-qwen2", trainable=True)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(True)
    pairs = find_lora_pairs(peft_model)
    for pair in pairs:
        pair.module.get_base_layer().weight.requires_grad_(True)
    ids = torch.randint(5, len(tok) - 1, (2, 12), generator=torch.Generator().manual_seed(1))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    merged(input_ids=ids, labels=ids).loss.backward()
    merged_params = dict(merged.named_parameters())
    assert len(pairs) >= 5
    for pair in pairs[:5]:
        name = pair.name.removeprefix("base_model.model.") + ".weight"
        torch.testing.assert_close(pair.module.get_base_layer().weight.grad, merged_params[name].grad,
                                   rtol=1e-4, atol=1e-6)
        row = layer_fidelity(pair, pair.module.get_base_layer().weight.grad)
        assert row["err_pro"] <= row["best_err_lora"] + 1e-6
        assert row["cos_pro"] >= row["cos_lora"] - 1e-6
        assert row["err_pro"] == pytest.approx((1 - row["cos_pro"] ** 2) ** 0.5, abs=1e-4)  # a projection


def test_experiment_writes_report_and_resumes(tmp_path):
    cfg = _tiny_cfg()
    summary = run_experiment(cfg, tmp_path, progress=False)
    for name in ("config.json", "runs.jsonl", "summary.csv", "best_lr.csv", "fidelity.csv", "steps.csv",
                 "loss_curves.png", "fidelity.png"):
        assert (tmp_path / name).exists(), name
    assert json.loads((tmp_path / "config.json").read_text())["methods"] == ["lora", "lora-pro", "full"]
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 6  # 3 methods × 2 optimizers × 1 lr × 1 seed
    records = [json.loads(line) for line in lines]
    for r in records:
        assert len(r["losses"]) == 3
        if r["method"] != "full":
            assert r["per_layer"] and all(it["err_pro"] <= it["best_err_lora"] + 1e-6 for it in r["per_layer"])
    full_adamw = next(r for r in records if r["method"] == "full" and r["optimizer"] == "adamw")
    lora_adamw = next(r for r in records if r["method"] == "lora" and r["optimizer"] == "adamw")
    assert full_adamw["state_bytes"] > lora_adamw["state_bytes"] > 0
    text = summary.read_text()
    assert "pro_le_lora_best" in text and "![loss curves](loss_curves.png)" in text
    # resume: nothing is re-run
    run_experiment(cfg, tmp_path, progress=False)
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 6
    # a narrower grid on the same folder reports only its own runs (and runs nothing new)
    narrow = _tiny_cfg(optimizers=["sgd"])
    run_experiment(narrow, tmp_path, progress=False)
    assert len(load_records(narrow, tmp_path)) == 3
    assert "| adamw |" not in (tmp_path / "summary.md").read_text()


def test_tasks_are_deterministic_and_text_file_errors_are_clear(tmp_path):
    _, tok = load_model("tiny-random-qwen2")
    a, dev, test = make_task(_tiny_cfg(task="copy"), tok)
    b, _, _ = make_task(_tiny_cfg(task="copy"), tok)
    assert len(dev) == 8 and len(test) == 8
    assert torch.equal(a, b) and a.shape == (32, 16)
    half = (16 - 1) // 2
    assert torch.equal(a[:, :half], a[:, half + 1 : 2 * half + 1])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="empty.txt"):
        make_task(_tiny_cfg(task=str(empty)), tok)


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["fidelity", "--methods", "lora,magic", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert "unknown method 'magic'" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["fidelity", "--task", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "task" in res.output
    res = runner.invoke(app, ["variants"])
    assert res.exit_code == 0 and "lora-pro" in res.output


def test_every_variant_takes_part_and_the_closeness_table_pairs_seeds(tmp_path):
    """All adapter names train under AdamW; each is compared with full FT at dev-chosen lrs, paired by seed."""
    assert set(ADAPTER_CHOICES) <= set(FIDELITY_METHODS)
    cfg = _tiny_cfg(methods=list(ADAPTER_CHOICES), optimizers=["adamw"], adamw_lrs=[1e-3, 1e-2], seeds=2, steps=2)
    summary = run_experiment(cfg, tmp_path, progress=False)
    records = load_records(cfg, tmp_path)
    assert len(records) == len(ADAPTER_CHOICES) * 2 * 2
    for r in records:
        assert len(r["losses"]) == 2 and 0.0 <= r["test_acc"] <= 1.0, r["run_id"]
    rows = closeness_rows(records, best_lr_rows(summarise(records)))
    assert {r["method"] for r in rows} == set(ADAPTER_CHOICES)
    full = next(r for r in rows if r["method"] == "full")
    assert full["curve_dist"] == 0.0 and full["seeds"] == 2  # full against itself
    for row in rows:  # the chosen lr is the dev-loss minimiser, whatever the test split says
        dev: dict[float, list[float]] = {}
        for r in records:
            if r["method"] == row["method"]:
                dev.setdefault(r["lr"], []).append(r["eval_loss"])
        assert row["lr"] == min(dev, key=lambda lr: sum(dev[lr]) / len(dev[lr]))
    text = summary.read_text()
    assert "Which variant comes closest to full fine-tuning" in text and "LoRA-Pro ranks" in text
    assert (tmp_path / "gap_to_full.png").exists() and (tmp_path / "closeness.csv").exists()
