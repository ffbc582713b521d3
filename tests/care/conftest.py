"""CARE test fixtures: the training inputs (SFT, easy and hard GRPO files) and scripted generation."""

from __future__ import annotations

from collections.abc import Callable, Mapping

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


@pytest.fixture
def scripted_generation(monkeypatch) -> Callable[..., None]:
    """Replace batched generation with scripted outputs, so evaluation and report tests know every answer by hand.

    ``scripted_generation(reply, calls=None)``: ``reply`` gives each prompt's output from its decoded text — a
    mapping answers with the value of the first key found in the text ("" when none is), a function is called
    with the text. ``calls``, when given, collects the batch size of every generation call.
    """
    import carelab.generation as gen

    def install(reply: Mapping[str, str] | Callable[[str], str], calls: list[int] | None = None) -> None:
        answers = dict(reply) if isinstance(reply, Mapping) else None

        def answer(text: str) -> str:
            if answers is None:
                return reply(text)
            return next((out for key, out in answers.items() if key in text), "")

        def fake(model, tok, prompts, settings, logits_processor=None, progress=None, on_result=None):
            if calls is not None:
                calls.append(len(prompts))
            return [answer(tok.decode(ids)) for ids in prompts]

        monkeypatch.setattr(gen, "generate_from_ids", fake)

    return install
