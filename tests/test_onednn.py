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


def test_lora_training_step_matches_the_blas_step():
    """A PEFT LoRA model's loss and adapter gradients are torch's (the training path: frozen base, trained adapter)."""
    peft = pytest.importorskip("peft")
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
        assert len(block.switched) == 6  # two base layers, each with lora_A and lora_B
        loss, grads = step()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-5)


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
