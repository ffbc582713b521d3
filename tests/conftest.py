"""Shared fixtures: quiet logs, a fixed cache dir reuse, tiny models, one torch thread, CARE SFT data."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

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


@pytest.fixture(scope="session")
def sft_jsonl(tmp_path_factory) -> Callable[..., str]:
    """Factory: ``sft_jsonl(n, seed=0, context_words=30)`` -> path of a CARE ``sft.jsonl`` built once per session.

    Synthetic HotpotQA (no distractors) through the rule SFT-data pipeline: the training tests' input, so they
    share one recipe and the pipeline runs once per size instead of once per test module.
    """
    from carelab.care.data import synth
    from carelab.care.sft.pipeline import SftDataConfig, run_pipeline

    built: dict[tuple[int, int, int], str] = {}

    def make(n: int, seed: int = 0, context_words: int = 30) -> str:
        key = (n, seed, context_words)
        if key not in built:
            root = tmp_path_factory.mktemp(f"sft-hotpotqa-{n}-{seed}-{context_words}")
            hq = synth.write("hotpotqa", n, seed, root / "hq.json", context_words=context_words, distractors=0)
            out = root / "sft.jsonl"
            run_pipeline(SftDataConfig(input=str(hq), format="hotpotqa", out=str(out)), echo=lambda _: None)
            built[key] = str(out)
        return built[key]

    return make
