"""Shared fixtures: quiet logs, a fixed cache dir reuse, tiny models, one torch thread."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_qwen():
    """A tiny random Qwen2 model and tokenizer (no downloads)."""
    from carelab.models import load_model

    return load_model("tiny-random-qwen2")


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct (converted once, then cached)."""
    from carelab.models import load_model

    return load_model("smollm2-135m-instruct")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread for the test, restored after: tiny tensors on a shared 2-core box run faster alone.

    Folders whose tests want it everywhere request it from an autouse fixture in their own conftest.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
