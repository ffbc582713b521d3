"""Diffusion tests share tiny models; keep torch to one thread so the suite stays fast on shared CPUs."""

from __future__ import annotations

import pytest
import torch

from carelab.diffusion.model import GPT, GPTConfig


@pytest.fixture(autouse=True)
def _single_threaded(one_thread) -> None:
    """Every diffusion test under the shared ``one_thread`` fixture (tests/conftest.py)."""


@pytest.fixture
def tiny():
    """Factory for a 2-layer model (vocab 32 + [MASK], block 16) with a fixed seed."""

    def make(causal: bool, seed: int = 0, vocab: int = 33, block: int = 16) -> GPT:
        torch.manual_seed(seed)
        cfg = GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=32, causal=causal)
        return GPT(cfg).eval()

    return make
