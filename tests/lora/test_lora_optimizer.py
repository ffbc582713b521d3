"""LoRAProAdamW: finds the pairs, reads s from the module, trains, resumes bit-identically, refuses bad setups."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from peft import LoraConfig, get_peft_model

from carelab.lora.lorapro import LoRAProAdamW, _adjust_gradients_reference, find_lora_pairs
from carelab.models import load_model


def _peft_tiny(rank: int = 4, seed: int = 0, **extra):
    model, tok = load_model("tiny-random-qwen2", trainable=True)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", **extra)
    peft_model = get_peft_model(model, config)
    # B starts at 0; give it a small random value so every gradient path is exercised from step 1
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft_model.train()
    return peft_model, tok


def _batch(tok, seed: int = 0, n: int = 4, length: int = 24):
    """Periodic token rows (a learnable pattern) with a seed-dependent vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    vocab = torch.randint(5, len(tok) - 1, (n, 5), generator=gen)
    ids = vocab[:, torch.arange(length) % 5]
    return {"input_ids": ids, "labels": ids}


def _train(model, opt, batches):
    losses = []
    for b in batches:
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_finds_pairs_and_reads_scaling_from_module():
    model, _ = _peft_tiny(use_rslora=True)
    pairs = find_lora_pairs(model)
    assert len(pairs) == 14  # 7 linear layers × 2 decoder layers, lm_head excluded
    assert all(p.adapter == "default" for p in pairs)
    assert pairs[0].scaling == pytest.approx(8 / 4**0.5)  # rsLoRA: α/√r read from module.scaling
    pairs[0].module.scaling["default"] = 3.0
    assert pairs[0].scaling == 3.0


def _updates(model, before):
    return {n: p.detach() - before[n] for n, p in model.named_parameters() if n in before}


def _rel(a: dict, b: dict) -> float:
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a)
    den = sum(float(b[k].double().pow(2).sum()) for k in a)
    return (num / den) ** 0.5


@pytest.mark.parametrize(
    ("dtype", "opt_kwargs", "tol", "scale"),
    [
        (torch.float64, {}, 1e-10, 0.5),
        (torch.float32, {}, 1e-5, 4.0),
        (torch.float32, {"fused": True}, 1e-5, 0.5),
        (torch.float32, {"amsgrad": True}, 1e-5, 4.0),  # not stackable: the per-parameter path
    ],
)
def test_efficient_step_is_adamw_on_the_reference_per_layer_adjustment(dtype, opt_kwargs, tol, scale):
    """The batched solve + stacked AdamW equals the original per-layer closed form fed to torch's AdamW.

    Over 5 steps, with weight decay in one param group and none in another, a trainable non-LoRA
    parameter, and s set on the modules (the optimizer must read it, not α/r).
    """
    model, tok = _peft_tiny()
    model.to(dtype)
    norm = model.base_model.model.model.norm.weight
    norm.requires_grad_(True)
    for p in find_lora_pairs(model):
        p.module.scaling["default"] = scale
    ref_model = copy.deepcopy(model)

    def groups(m):
        named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
        return [{"params": [p for n, p in named if "lora_A" in n or "norm" in n], "weight_decay": 0.1},
                {"params": [p for n, p in named if "lora_B" in n], "weight_decay": 0.0}]

    opt = LoRAProAdamW(groups(model), lr=1e-2, model=model, **opt_kwargs)
    ref = torch.optim.AdamW(groups(ref_model), lr=1e-2, **opt_kwargs)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for step in range(5):
        batch = _batch(tok, seed=step)
        for m in (model, ref_model):
            m.zero_grad(set_to_none=True)
            m(**batch).loss.backward()
        raw = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        for pair in find_lora_pairs(ref_model):
            pair.A.grad, pair.B.grad = _adjust_gradients_reference(pair.A, pair.B, pair.A.grad, pair.B.grad, scale)
        opt.step()
        ref.step()
        for n, p in model.named_parameters():  # the raw gradients are left in place
            if p.grad is not None:
                assert torch.equal(p.grad, raw[n]), n
    assert _rel(_updates(model, before), _updates(ref_model, before)) < tol
    state = opt.state[find_lora_pairs(model)[0].A]
    assert float(state["step"]) == 5.0 and state["exp_avg"].shape == find_lora_pairs(model)[0].A.shape


def _against_reference(steps: int, after_backward):
    """float64 tiny model stepped by LoRAProAdamW and a twin by torch AdamW on the reference per-layer
    adjustment, same batches; ``after_backward(step, model)`` may alter either. Returns (model, opt, ref,
    relative L2 of the two updates)."""
    model, tok = _peft_tiny()
    model.to(torch.float64)
    ref_model = copy.deepcopy(model)
    opt = LoRAProAdamW(model, lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW([p for p in ref_model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for step in range(steps):
        batch = _batch(tok, seed=step)
        for m in (model, ref_model):
            m.zero_grad(set_to_none=True)
            m(**batch).loss.backward()
            after_backward(step, m)
        for pair in find_lora_pairs(ref_model):
            if pair.A.grad is not None:
                pair.A.grad, pair.B.grad = _adjust_gradients_reference(pair.A, pair.B, pair.A.grad, pair.B.grad,
                                                                       pair.scaling)
        opt.step()
        ref.step()
    return model, opt, ref, _rel(_updates(model, before), _updates(ref_model, before))


def test_layers_without_gradients_at_some_steps_keep_their_own_step_counts():
    """Layers that miss steps (no gradient) have other Adam step counts than their shape group: the batched
    step still equals torch's AdamW on the reference adjustment (float64, 6 steps, some skipped)."""

    def skip_some(step, m):
        for i, pair in enumerate(find_lora_pairs(m)):
            if (i + step) % 3 == 0:  # this layer sits this step out
                pair.A.grad = pair.B.grad = None

    model, opt, ref, rel = _against_reference(6, skip_some)
    assert rel < 1e-10
    steps = {float(opt.state[pair.A]["step"]) for pair in find_lora_pairs(model)}
    assert steps == {4.0}  # each layer skipped 2 of the 6 steps, at different steps
    assert {float(ref.state[p]["step"]) for p in ref.state if p.dim() == 2} == steps


def test_rehomed_factors_save_and_survive_reallocation(tmp_path):
    """The efficient step makes each lora_A/lora_B a view of stacked storage: the adapter still saves with
    safetensors and reloads equal, and storage replaced between steps (as ``model.to`` does) is noticed —
    the updates stay torch's AdamW on the reference adjustment (float64)."""
    from safetensors.torch import load_file

    def reallocate(step, m):
        if step == 2:
            for p in m.parameters():
                if p.requires_grad:
                    p.data = p.data.clone()  # fresh storage, as moving the model would give

    model, _, _, rel = _against_reference(4, reallocate)
    assert rel < 1e-10
    pair = find_lora_pairs(model)[0]
    assert pair.A.untyped_storage().nbytes() > pair.A.numel() * pair.A.element_size()  # a view of a stack
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    lora = {n.replace(".default", ""): p for n, p in model.named_parameters() if "lora_" in n}
    assert saved.keys() == lora.keys()
    for name, tensor in saved.items():
        assert torch.equal(tensor, lora[name].detach()), name


@pytest.mark.parametrize("mode", ["efficient", "full"])
def test_trains_tiny_peft_model(mode):
    model, tok = _peft_tiny()
    opt = LoRAProAdamW(model, lr=2e-2, mode=mode)
    batch = _batch(tok)
    losses = _train(model, opt, [batch] * 25)
    assert all(map(lambda x: x == x, losses))  # no NaN
    assert losses[-1] < losses[0] - 0.25


def test_trains_from_peft_default_init_b_zero():
    model, tok = load_model("tiny-random-qwen2", trainable=True)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    model.train()
    for mode in ("efficient", "full"):
        m = copy.deepcopy(model)
        opt = LoRAProAdamW(m, lr=2e-2, mode=mode)
        losses = _train(m, opt, [_batch(tok)] * 20)
        assert losses[-1] < losses[0] - 0.25, mode


@pytest.mark.parametrize("mode", ["efficient", "full"])
def test_save_resume_is_bit_identical(mode):
    model, tok = _peft_tiny(seed=1)
    # a trainable non-LoRA parameter too, so the plain-AdamW path is resumed as well
    norm = model.base_model.model.model.norm.weight
    norm.requires_grad_(True)
    opt = LoRAProAdamW(model, lr=1e-2, weight_decay=0.05, mode=mode)
    batches = [_batch(tok, seed=i) for i in range(6)]
    _train(model, opt, batches[:3])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)

    twin, _ = _peft_tiny(seed=99)  # different init; everything must come from the checkpoint
    twin.base_model.model.model.norm.weight.requires_grad_(True)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    twin.load_state_dict(ckpt["model"])
    twin_opt = LoRAProAdamW(twin, lr=1e-2, weight_decay=0.05, mode=mode)
    twin_opt.load_state_dict(ckpt["opt"])

    a = _train(model, opt, batches[3:])
    b = _train(twin, twin_opt, batches[3:])
    assert a == b
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    if mode == "full":
        pair = find_lora_pairs(model)[0]
        m_full = opt.state[pair.A]["full_exp_avg"]
        assert m_full.shape == (pair.B.shape[0], pair.A.shape[1])  # m×n moments, as full fine-tuning


def test_non_lora_parameters_get_plain_adamw():
    model, tok = _peft_tiny()
    for p in model.parameters():
        p.requires_grad_(False)
    norm = model.base_model.model.model.norm.weight
    norm.requires_grad_(True)
    ref = norm.detach().clone().requires_grad_(True)
    with pytest.warns(UserWarning, match="no LoRA pairs"):
        opt = LoRAProAdamW(model, lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.1)
    for i in range(3):
        model(**_batch(tok, seed=i)).loss.backward()
        ref.grad = norm.grad.clone()
        opt.step()
        ref_opt.step()
        opt.zero_grad()
    assert torch.equal(norm, ref)


def test_lora_fa_frozen_a_stays_and_b_gets_fa_gradient():
    model, tok = _peft_tiny()
    for n, p in model.named_parameters():
        if "lora_A" in n:
            p.requires_grad_(False)
    a0 = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    assert a0
    opt = LoRAProAdamW(model, lr=2e-2)
    losses = _train(model, opt, [_batch(tok)] * 15)
    assert losses[-1] < losses[0]
    for n, p in model.named_parameters():
        if "lora_A" in n:
            assert torch.equal(p, a0[n])


def test_works_with_param_groups_and_model_kwarg():
    model, tok = _peft_tiny()
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": 0.0}]
    opt = LoRAProAdamW(groups, lr=1e-2, model=model)
    assert len(opt.pairs) == 14
    with pytest.raises(ValueError, match="needs the model"):
        LoRAProAdamW(groups, lr=1e-2)


def test_refuses_a_and_b_on_different_devices():
    model, _ = _peft_tiny()
    layer = find_lora_pairs(model)[0].module
    layer.lora_B["default"].to("meta")
    with pytest.raises(ValueError, match="device"):
        LoRAProAdamW(model, lr=1e-3)


def test_refuses_dora_and_bad_mode():
    model, _ = _peft_tiny(use_dora=True)
    with pytest.raises(ValueError, match="DoRA"):
        LoRAProAdamW(model, lr=1e-3)
    plain, _ = _peft_tiny()
    with pytest.raises(ValueError, match="mode"):
        LoRAProAdamW(plain, lr=1e-3, mode="fast")
