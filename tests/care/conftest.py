"""CARE test fixtures: the training inputs (SFT, easy and hard GRPO files)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", name="data")
def care_training_files(sft_jsonl, tmp_path_factory) -> dict[str, str]:
    """What the tiny SFT/GRPO runs train on (test_train.py, test_grpo_fast.py): ``sft`` (rule-pipeline records),
    ``easy`` (DROP) and ``hard`` (MS MARCO) curriculum files, built once per session since tests only read them."""
    from carelab.care.data import synth

    root = tmp_path_factory.mktemp("care-train")
    easy = synth.write("drop", 10, 0, root / "easy.json", context_words=30)
    hard = synth.write("msmarco", 6, 0, root / "hard.json", context_words=60)
    return {"sft": sft_jsonl(12, context_words=40), "easy": str(easy), "hard": str(hard)}
