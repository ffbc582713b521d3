"""The backbone: one flag separates AR from MDM, and attention respects it."""

from __future__ import annotations

import pytest
import torch

from carelab.diffusion.model import GPT, size_config


def test_causal_model_ignores_future_tokens_bidirectional_does_not(tiny):
    x = torch.randint(0, 32, (2, 16))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 32  # change only the future
    ar, mdm = tiny(causal=True), tiny(causal=False)
    with torch.no_grad():
        a1, a2 = ar(x), ar(y)
        m1, m2 = mdm(x), mdm(y)
    torch.testing.assert_close(a1[:, :10], a2[:, :10])
    assert not torch.allclose(a1[:, 10:], a2[:, 10:])
    assert (m1[:, :10, :-1] - m2[:, :10, :-1]).abs().max() > 1e-4  # last column is the -inf [MASK] logit


def test_ar_and_mdm_share_architecture_and_init(tiny):
    ar, mdm = tiny(causal=True), tiny(causal=False)
    assert ar.num_params() == mdm.num_params()
    for (n1, p1), (n2, p2) in zip(ar.state_dict().items(), mdm.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    assert ar.lm_head.weight is ar.wte.weight  # tied
    assert all(m.bias is None for m in ar.modules() if isinstance(m, torch.nn.Linear))


def test_mask_id_is_never_predicted_and_non_embedding_count(tiny):
    m = tiny(causal=False)
    logits = m(torch.full((1, 8), m.mask_id))
    assert torch.isinf(logits[..., m.mask_id]).all() and torch.isfinite(logits[..., : m.mask_id]).all()
    assert m.num_params(non_embedding=False) - m.num_params() == m.config.vocab_size * m.config.n_embd


def test_size_specs():
    assert size_config("d64l2h2").n_layer == 2
    with pytest.raises(ValueError, match="unknown model size"):
        size_config("huge")
    with pytest.raises(ValueError, match="block_size"):
        GPT(size_config("xxs", block_size=4))(torch.zeros(1, 5, dtype=torch.long))
