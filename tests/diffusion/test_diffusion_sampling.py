"""Every sampler returns complete sequences with the prompt kept."""

from __future__ import annotations

import pytest
import torch

from carelab.diffusion.sampling import sample_ar, sample_llada, sample_mdlm

PROMPT = torch.tensor([3, 4, 5])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("steps", [1, 4, 13])
def test_mdlm_fills_every_mask(temperature, steps, tiny):
    m = tiny(causal=False)
    out = sample_mdlm(m, PROMPT, 12, steps=steps, batch=2, temperature=temperature,
                      generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 15) and not (out == m.mask_id).any()
    assert torch.equal(out[:, :3], PROMPT.expand(2, -1))


@pytest.mark.parametrize("block_length,steps", [(12, 12), (4, 6), (6, 2)])
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_llada_fills_every_mask(block_length, steps, remasking, temperature, tiny):
    m = tiny(causal=False)
    out = sample_llada(m, PROMPT, 12, steps=steps, block_length=block_length, batch=2, temperature=temperature,
                       remasking=remasking, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 15) and not (out == m.mask_id).any()
    assert torch.equal(out[:, :3], PROMPT.expand(2, -1))


def test_llada_low_confidence_commits_most_confident_first(tiny):
    m = tiny(causal=False)
    with torch.no_grad():
        x = torch.cat([PROMPT, torch.full((8,), m.mask_id)])[None]
        probs = torch.softmax(m(x).double(), -1).max(-1).values[0, 3:]
    out = sample_llada(m, PROMPT, 8, steps=8)  # one token per step; the first commit is the argmax confidence
    first = int(probs.argmax())
    assert out[0, 3 + first] == m(x)[0, 3 + first].argmax()


def test_ar_sampler_and_guards(tiny):
    ar, mdm = tiny(causal=True), tiny(causal=False)
    out = sample_ar(ar, PROMPT, 10, batch=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 13) and not (out == ar.mask_id).any()
    with pytest.raises(ValueError):
        sample_ar(mdm, PROMPT, 4)
    with pytest.raises(ValueError):
        sample_mdlm(ar, PROMPT, 4)
    with pytest.raises(ValueError, match="block_size"):
        sample_llada(mdm, PROMPT, 16)
    with pytest.raises(ValueError, match="multiple"):
        sample_llada(mdm, PROMPT, 12, steps=5, block_length=4)
