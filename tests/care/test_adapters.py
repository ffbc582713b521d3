"""Stacking the SFT and GRPO LoRA adapters into one adapter is exact."""

from __future__ import annotations

import pytest
import torch


def test_stacked_adapter_equals_sequential_application(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from carelab.care.adapters import stack_lora_adapters
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

    from carelab.care.adapters import stack_lora_adapters

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "adapter_config.json").write_text(json.dumps({"use_dora": True, "r": 4, "lora_alpha": 8}))
    with pytest.raises(ValueError, match="only plain LoRA"):
        stack_lora_adapters(str(tmp_path / "d"), str(tmp_path / "d"), str(tmp_path / "o"))
