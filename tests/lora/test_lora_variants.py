"""Every adapter name yields a trainable setup; one optimizer step changes exactly what it should."""

from __future__ import annotations

import pytest
import torch

from carelab.lora.lorapro import LoRAProAdamW
from carelab.lora.variants import ADAPTER_CHOICES, make_optimizer, prepare_adapter, resolve_target_modules
from carelab.models import load_model


def _ids(tok, seed=0, n=4, length=16):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(5, len(tok) - 1, (n, length), generator=gen)


def _step(model, opt, ids):
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def _changed(before, model):
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


@pytest.mark.parametrize("name", ADAPTER_CHOICES)
def test_every_adapter_trains_and_changes_only_what_it_should(name):
    model, tok = load_model("tiny-random-qwen2", trainable=True)
    torch.manual_seed(0)
    ids = _ids(tok)
    batches = [{"input_ids": _ids(tok, seed=i), "attention_mask": torch.ones_like(ids)} for i in range(2)]
    setup = prepare_adapter(name, model, r=4, alpha=8, dropout=0.0, lr=1e-2, train_batches=batches)
    assert setup.name == name
    m = setup.model
    m.train()
    opt = make_optimizer(setup, m, lr=1e-2, weight_decay=0.0)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    _step(m, opt, ids)
    _step(m, opt, _ids(tok, seed=1))
    changed = _changed(before, m)
    assert changed, "nothing was trained"
    assert changed <= trainable, f"frozen parameters moved: {sorted(changed - trainable)[:3]}"

    if name == "full":
        assert setup.peft_config is None and setup.optimizer_factory is None
        assert trainable == set(before)
        assert "model.embed_tokens.weight" in changed
        return
    assert setup.peft_config is not None
    lora_a = {n for n in before if "lora_A" in n}
    lora_b = {n for n in before if "lora_B" in n}
    assert lora_a and lora_b
    assert not any("embed" in n or "lm_head" in n for n in lora_a)  # all-linear skips head and embeddings
    assert not {n for n in changed if "lora" not in n}, "base weights moved"
    assert lora_b <= changed
    if name == "lora-fa":
        assert not lora_a & trainable and not lora_a & changed
        assert isinstance(opt, LoRAProAdamW)
    else:
        assert lora_a <= changed  # after two steps A moves too (B ≠ 0 from step 1 on)
    if name == "dora":
        assert any("lora_magnitude_vector" in n for n in changed)
    if name in ("lora-pro",):
        assert isinstance(opt, LoRAProAdamW) and len(opt.pairs) == 14
    if name == "lora+":
        lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        named = dict(m.named_parameters())
        a_lr = {lr_of[id(named[n])] for n in lora_a}
        b_lr = {lr_of[id(named[n])] for n in lora_b}
        assert a_lr == {1e-2} and len(b_lr) == 1 and b_lr.pop() == pytest.approx(16e-2)
    if name == "rslora":
        layer = m.base_model.model.model.layers[0].self_attn.q_proj
        assert layer.scaling["default"] == pytest.approx(8 / 2)  # α/√r


@pytest.mark.parametrize("name", ["pissa", "lora-ga"])
def test_data_or_svd_initialised_adapters_start_from_the_same_function(name):
    """PiSSA and LoRA-GA move the initial B·A out of W0, so the wrapped model's output is unchanged."""
    model, tok = load_model("tiny-random-qwen2", trainable=True)
    ids = _ids(tok)
    with torch.no_grad():
        ref = model(input_ids=ids).logits.clone()
    setup = prepare_adapter(name, model, r=4, alpha=8, dropout=0.0, lr=1e-3, train_batches=[{"input_ids": ids}])
    setup.model.eval()
    with torch.no_grad():
        out = setup.model(input_ids=ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    b = setup.model.base_model.model.model.layers[0].mlp.up_proj.lora_B["default"].weight
    assert b.abs().sum() > 0  # not the zero init of plain LoRA


def test_lora_ga_needs_batches_and_unknown_name_is_clear():
    model, _ = load_model("tiny-random-qwen2", trainable=True)
    with pytest.raises(ValueError, match="train_batches"):
        prepare_adapter("lora-ga", model, lr=1e-3)
    with pytest.raises(ValueError, match="choose one of"):
        prepare_adapter("qlora-xl", model, lr=1e-3)


def test_factory_and_make_optimizer_agree_and_refuse_bare_params():
    model, _ = load_model("tiny-random-qwen2", trainable=True)
    setup = prepare_adapter("lora-pro", model, r=2, alpha=4, lr=1e-3, weight_decay=0.1)
    opt = setup.optimizer_factory(setup.model, 1e-3)
    assert isinstance(opt, LoRAProAdamW)
    assert max(g["weight_decay"] for g in opt.param_groups) == 0.1
    with pytest.raises(ValueError, match="needs the model"):
        setup.optimizer_factory([p for p in setup.model.parameters() if p.requires_grad], 1e-3)
    plain = prepare_adapter("lora", load_model("tiny-random-qwen2", trainable=True)[0], r=2, lr=1e-3)
    assert plain.optimizer_factory is None
    assert type(make_optimizer(plain, plain.model, 1e-3, 0.0)) is torch.optim.AdamW


def test_resolve_target_modules_excludes_head():
    model, _ = load_model("tiny-random-qwen2")
    names = resolve_target_modules(model, "all-linear")
    assert set(names) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert resolve_target_modules(model, "q_proj, v_proj") == ["q_proj", "v_proj"]


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    """Four short CARE-format SFT records (enough for one step of batch 4)."""
    import json

    path = tmp_path_factory.mktemp("variants-sft") / "sft.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Context: The capital of France is Paris {i}. Question: capital?"},
                          {"role": "assistant", "content": "<think> <retrieval> The capital of France is Paris"
                                                           f" {i}. </retrieval> </think> Answer: Paris"}]}
            for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("name", ADAPTER_CHOICES)
def test_sft_output_reloads_on_a_fresh_base_with_the_trained_logits(name, sft_file, tmp_path, monkeypatch):
    """`care sft --adapter NAME`, one step: the saved output on an untouched base gives the in-memory logits.

    PiSSA and LoRA-GA train on a rewritten base; their saved adapter must be the converted plain-LoRA delta.
    """
    import json

    import carelab.lora.variants as variants
    from carelab.care.train.adapters import STACKABLE_ADAPTERS
    from carelab.care.train.config import SFTRunConfig
    from carelab.care.train.sft import run_sft

    trained = {}
    prepare = variants.prepare_adapter

    def capture(*args, **kwargs):
        trained["setup"] = prepare(*args, **kwargs)
        return trained["setup"]

    monkeypatch.setattr(variants, "prepare_adapter", capture)
    out = tmp_path / "sft"
    cfg = SFTRunConfig(data=[sft_file], out=str(out), model="tiny-random-qwen2", adapter=name, lora_r=4,
                       lora_alpha=8, max_steps=1, lr=5e-2, batch_size=4, warmup_ratio=0.0, report_to=[],
                       save_steps=100, max_length=512)
    assert run_sft(cfg)["steps"] == 1
    model = trained["setup"].model.eval()
    tok = load_model("tiny-random-qwen2")[1]
    ids = _ids(tok, seed=3, n=2, length=12)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        base = load_model("tiny-random-qwen2")[0](input_ids=ids).logits
    assert not torch.allclose(expected, base, atol=1e-4), "one step changed nothing: the test would prove nothing"
    reloaded, _ = load_model(str(out)) if name == "full" else load_model("tiny-random-qwen2", adapter=str(out))
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    if name != "full":
        saved = json.loads((out / "adapter_config.json").read_text())
        assert saved["init_lora_weights"] is True  # a plain LoRA delta, not PiSSA/LoRA-GA's residual form
        assert saved["base_model_name_or_path"] == "tiny-random-qwen2"
        assert saved["r"] == (8 if name in variants.CONVERTED_ON_SAVE else 4)
        assert (name in STACKABLE_ADAPTERS) == (name != "dora")
