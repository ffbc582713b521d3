"""Stacking the SFT and GRPO LoRA adapters into one adapter is exact."""

from __future__ import annotations

import pytest
import torch


def test_stacked_adapter_equals_sequential_application(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from carelab.care.train.adapters import stack_lora_adapters
    from carelab.models import load_model

    ids = torch.tensor([[5, 9, 17, 33, 2]])
    base, _ = load_model("tiny-random-qwen2")
    first = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    first.save_pretrained(tmp_path / "a")
    merged = first.merge_and_unload()
    second = get_peft_model(merged, LoraConfig(r=2, lora_alpha=8, use_rslora=True, target_modules=["v_proj", "o_proj"],
                                               init_lora_weights=False))
    second.save_pretrained(tmp_path / "b")
    with torch.no_grad():
        expected = second(input_ids=ids).logits
    stack_lora_adapters(str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "ab"))
    fresh, _ = load_model("tiny-random-qwen2")
    stacked = PeftModel.from_pretrained(fresh, str(tmp_path / "ab"))
    with torch.no_grad():
        got = stacked(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5)


def test_dora_refused(tmp_path):
    import json

    from carelab.care.train.adapters import stack_lora_adapters

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "adapter_config.json").write_text(json.dumps({"use_dora": True, "r": 4, "lora_alpha": 8}))
    with pytest.raises(ValueError, match="only plain LoRA"):
        stack_lora_adapters(str(tmp_path / "d"), str(tmp_path / "d"), str(tmp_path / "o"))


def _adapter_dir(path, **cfg):
    import json

    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, **cfg}))
    return path


@pytest.mark.parametrize(("sft", "grpo_adapter", "message"), [
    ({"use_dora": True}, "lora", "DoRA"),
    ({"init_lora_weights": "pissa"}, "lora", "rewritten base"),
    ({"rank_pattern": {"q_proj": 8}}, "lora", "patterns"),
    ({}, "dora", "--adapter dora cannot be stacked"),
    ({}, "full", "--adapter full cannot be stacked"),
])
def test_grpo_refuses_an_unstackable_init_adapter_before_training(tmp_path, sft, grpo_adapter, message):
    from carelab.care.train.config import GRPORunConfig
    from carelab.care.train.grpo import run_grpo

    init = _adapter_dir(tmp_path / "sft", **sft)
    out = tmp_path / "grpo"
    cfg = GRPORunConfig(easy=[str(tmp_path / "missing.json")], out=str(out), model="tiny-random-qwen2",
                        init_adapter=str(init), adapter=grpo_adapter, report_to=[])
    with pytest.raises(ValueError, match=message):
        run_grpo(cfg)
    assert not out.exists(), "refused only after starting the run"


def test_grpo_names_a_full_sft_output_and_a_missing_adapter(tmp_path):
    from carelab.care.train.adapters import check_init_adapter
    from carelab.care.train.config import GRPORunConfig
    from carelab.runs import InputError

    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    with pytest.raises(InputError, match=f"--model {full}"):
        check_init_adapter(GRPORunConfig(easy=["x"], out="o", init_adapter=str(full)))
    with pytest.raises(InputError, match="adapter_config.json: missing"):
        check_init_adapter(GRPORunConfig(easy=["x"], out="o", init_adapter=str(tmp_path / "nothing")))
    check_init_adapter(GRPORunConfig(easy=["x"], out="o", init_adapter=None, adapter="full"))  # no stacking: fine
    ok = _adapter_dir(tmp_path / "ok", init_lora_weights=True)
    for adapter in ("lora", "rslora", "pissa", "lora-ga", "lora+", "lora-fa", "lora-pro"):
        check_init_adapter(GRPORunConfig(easy=["x"], out="o", init_adapter=str(ok), adapter=adapter))


def test_grpo_cli_refuses_dora_init_adapter_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from carelab.cli import app

    init = _adapter_dir(tmp_path / "sft", use_dora=True)
    res = CliRunner().invoke(app, ["care", "grpo", "--easy", str(tmp_path / "e.json"), "--init-adapter", str(init),
                                   "--out", str(tmp_path / "grpo"), "--model", "tiny-random-qwen2"])
    assert res.exit_code == 2 and "DoRA" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "grpo").exists()
