"""carelab.onednn: fp32 linear layers through oneDNN give torch's results (up to float rounding), with gradients."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from carelab import onednn  # noqa: E402

pytestmark = pytest.mark.skipif(not onednn.enabled(), reason="this torch build has no oneDNN linear")


@pytest.fixture
def counted(monkeypatch):
    """Count the products that really went through oneDNN."""
    calls = []
    real = onednn._onednn

    def counting(x, weight, bias):
        calls.append(tuple(x.shape))
        return real(x, weight, bias)

    monkeypatch.setattr(onednn, "_onednn", counting)
    return calls


def test_linear_matches_torch_in_value_and_gradients(counted):
    torch.manual_seed(0)
    x = torch.randn(3, 17, 96, requires_grad=True)
    weight = torch.randn(40, 96, requires_grad=True)
    bias = torch.randn(40, requires_grad=True)
    upstream = torch.randn(3, 17, 40)

    ours = onednn.linear(x, weight, bias)
    ours.backward(upstream)
    grads = [t.grad.clone() for t in (x, weight, bias)]
    for t in (x, weight, bias):
        t.grad = None
    theirs = torch.nn.functional.linear(x, weight, bias)
    theirs.backward(upstream)

    assert len(counted) == 3  # forward, input gradient, weight gradient
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
    for mine, ref in zip(grads, (x.grad, weight.grad, bias.grad), strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-4)


def test_a_frozen_weight_gets_no_gradient_and_costs_no_weight_product(counted):
    x = torch.randn(8, 32, requires_grad=True)
    weight = torch.randn(16, 32)  # frozen, as a LoRA base layer
    onednn.linear(x, weight).sum().backward()
    assert weight.grad is None and x.grad is not None
    assert len(counted) == 2  # forward and input gradient only


def test_float64_stays_with_torch_and_inference_skips_autograd(counted):
    x, weight = torch.randn(4, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    torch.testing.assert_close(onednn.linear(x, weight), x @ weight.T)
    assert not counted  # float64 is torch's own
    with torch.inference_mode():
        out = onednn.linear(x.float(), weight.float())
    assert counted and not out.requires_grad


def test_the_block_switches_plain_linears_and_restores_them(counted):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(5, 8)
    before = model(x)
    with onednn.onednn_linears(model) as block:
        assert len(block.switched) == 2
        inside = model(x)
        assert counted
    assert all("forward" not in vars(m) for m in model.modules())
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-5)


def test_a_copy_made_inside_the_block_computes_with_its_own_weights():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with onednn.onednn_linears(model):
        twin = copy.deepcopy(model)
        with torch.no_grad():
            twin[0].weight.zero_()
            twin[0].bias.fill_(1.0)
        assert torch.equal(twin(torch.randn(2, 4)), torch.ones(2, 3))


def test_blas_setting_switches_nothing(monkeypatch):
    monkeypatch.setenv(onednn.BACKEND_ENV, "blas")
    model = torch.nn.Linear(4, 4)
    with onednn.onednn_linears(model) as block:
        assert not block.switched
    monkeypatch.setenv(onednn.BACKEND_ENV, "mkl")
    with pytest.raises(ValueError, match="CARELAB_LINEAR"):
        onednn.enabled()


@pytest.mark.parametrize("fused", ["1", "0"], ids=["fused-lora", "peft-lora"])
def test_lora_training_step_matches_the_blas_step(fused, monkeypatch):
    """A PEFT LoRA model's loss and adapter gradients are torch's (the training path: frozen base, trained adapter),
    with each LoRA layer fused into one product or left to PEFT."""
    peft = pytest.importorskip("peft")
    monkeypatch.setenv(onednn.FUSED_LORA_ENV, fused)
    fused_calls = []
    real = onednn.lora_linear
    monkeypatch.setattr(onednn, "lora_linear", lambda *a: fused_calls.append(a[0].shape) or real(*a))
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["0", "2"], init_lora_weights=False))
    x, target = torch.randn(10, 32), torch.randn(10, 8)

    def step():
        model.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ref_loss, ref_grads = step()
    with onednn.onednn_linears(model) as block:
        # two base layers, each with lora_A and lora_B, and (fused) the two LoRA layers around them
        assert len(block.switched) == (8 if fused == "1" else 6)
        loss, grads = step()
    assert len(fused_calls) == (2 if fused == "1" else 0)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert all(grad.abs().sum() > 0 for grad in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-5)


def test_fused_lora_matches_peft_on_a_batch_of_sequences_with_bias():
    """Value and the input, A and B gradients of one fused layer against PEFT's base + s · B(A x)."""
    torch.manual_seed(1)
    x = torch.randn(2, 9, 24, requires_grad=True)
    weight, bias = torch.randn(40, 24), torch.randn(40)
    lora_a, lora_b = torch.randn(4, 24, requires_grad=True), torch.randn(40, 4, requires_grad=True)
    upstream = torch.randn(2, 9, 40)

    onednn.lora_linear(x, weight, bias, lora_a, lora_b, 0.5).backward(upstream)
    ours = [t.grad.clone() for t in (x, lora_a, lora_b)]
    for t in (x, lora_a, lora_b):
        t.grad = None
    reference = torch.nn.functional.linear(x, weight, bias) + (x @ lora_a.t() @ lora_b.t()) * 0.5
    reference.backward(upstream)
    torch.testing.assert_close(onednn.lora_linear(x, weight, bias, lora_a, lora_b, 0.5), reference,
                               rtol=1e-5, atol=1e-5)
    for got, t in zip(ours, (x, lora_a, lora_b), strict=True):
        torch.testing.assert_close(got, t.grad, rtol=1e-5, atol=1e-5)


def test_lora_layers_the_fused_product_cannot_copy_stay_with_peft(monkeypatch):
    """LoRA dropout, disabled adapters and a trainable base layer keep PEFT's own forward."""
    peft = pytest.importorskip("peft")
    fused_calls = []
    real = onednn.lora_linear
    monkeypatch.setattr(onednn, "lora_linear", lambda *a: fused_calls.append(1) or real(*a))
    x = torch.randn(3, 8)

    dropout = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
                                  peft.LoraConfig(r=2, target_modules=["0"], lora_dropout=0.1))
    plain = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), peft.LoraConfig(r=2, target_modules=["0"]))
    with onednn.onednn_linears(dropout), onednn.onednn_linears(plain):
        dropout(x)
        with plain.disable_adapter():
            plain(x)
        plain.base_model.model[0].base_layer.weight.requires_grad_(True)
        plain(x)
        assert not fused_calls
        plain.base_model.model[0].base_layer.weight.requires_grad_(False)
        plain(x)
        assert len(fused_calls) == 1
    monkeypatch.setenv(onednn.FUSED_LORA_ENV, "yes")
    with pytest.raises(ValueError, match=onednn.FUSED_LORA_ENV):
        onednn.onednn_linears(plain).__enter__()


def test_the_evaluation_engine_decodes_through_onednn_with_the_blas_tokens(counted, monkeypatch):
    from carelab.generation import GenerationSettings, generate_from_ids
    from carelab.models import tiny_random_model

    model, tok = tiny_random_model("llama", seed=3)
    prompts = [tok.encode(text) for text in ("the quick brown fox", "a b c d e f", "hello there, how are you")]
    settings = GenerationSettings(max_new_tokens=12, batch_size=2)
    with torch.inference_mode():
        ours = generate_from_ids(model, tok, prompts, settings)
        assert counted  # the engine switched the model's linears
        assert all("forward" not in vars(m) for m in model.modules())  # and restored them
        monkeypatch.setenv(onednn.BACKEND_ENV, "blas")
        calls = len(counted)
        theirs = generate_from_ids(model, tok, prompts, settings)
        assert len(counted) == calls
    assert ours == theirs
