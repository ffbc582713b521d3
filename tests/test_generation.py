"""The two generation engines agree: continuous-batching greedy vs one ``generate`` call per padded batch.

Why: evaluation numbers must not depend on the engine; the continuous engine is only a faster schedule.
"""

from __future__ import annotations

import pytest
import torch

from carelab.generation import GenerationSettings, generate_chat, generate_from_ids


def _prompts(n: int = 11, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 40, (n,), generator=g).tolist()
    return [torch.randint(5, 200, (k,), generator=g).tolist() for k in lengths]


def _both(model, tok, prompts, **kw):
    old = generate_from_ids(model, tok, prompts, GenerationSettings(continuous=False, **kw))
    seen: dict[int, str] = {}
    done: list[int] = []
    new = generate_from_ids(model, tok, prompts, GenerationSettings(**kw),
                            on_result=seen.__setitem__, progress=done.append)
    assert seen == dict(enumerate(new)) and sum(done) == len(prompts)  # every prompt reported exactly once
    return old, new


@pytest.mark.parametrize("batch_size,max_new", [(1, 6), (3, 9), (4, 1), (32, 12)])
def test_continuous_matches_padded_generate(tiny_qwen, batch_size, max_new):
    model, tok = tiny_qwen
    old, new = _both(model, tok, _prompts(), batch_size=batch_size, max_new_tokens=max_new)
    assert new == old


def test_rows_ending_early_leave_the_batch(tiny_qwen):
    """An EOS inside the answers ends rows at different steps; the texts still match ``generate``'s."""
    model, tok = tiny_qwen
    prompts = _prompts(9, seed=1)
    with torch.inference_mode():
        ids = model.generate(input_ids=torch.tensor([prompts[0]]), max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    eos = int(ids[0, len(prompts[0]) + 2])  # a token this model really emits, used as end of sequence
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = eos
    try:
        old, new = _both(model, tok, prompts, batch_size=4, max_new_tokens=14)
    finally:
        model.generation_config.eos_token_id = saved
    assert new == old
    assert len({len(t) for t in new}) > 1  # rows really ended at different lengths


def test_sampling_and_processors_use_the_padded_engine(tiny_qwen):
    from transformers import LogitsProcessorList

    model, tok = tiny_qwen
    prompts = _prompts(5)
    settings = GenerationSettings(max_new_tokens=5, do_sample=True, seed=3, batch_size=2)
    assert generate_from_ids(model, tok, prompts, settings) == generate_from_ids(model, tok, prompts, settings)
    greedy = GenerationSettings(max_new_tokens=5, batch_size=2)
    assert generate_from_ids(model, tok, prompts, greedy, logits_processor=LogitsProcessorList()) == \
        generate_from_ids(model, tok, prompts, greedy)
    assert generate_from_ids(model, tok, [], greedy) == []


def test_generate_chat_keeps_its_api(tiny_qwen):
    model, tok = tiny_qwen
    texts = generate_chat(model, tok, [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "a b"}]],
                          GenerationSettings(max_new_tokens=3))
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_cache_room_regrows(tiny_qwen, monkeypatch):
    """With room for only 2 tokens, the preallocated KV buffers are re-made many times; tokens stay the same."""
    from carelab.generation import _slack_layer_class

    monkeypatch.setattr(_slack_layer_class(), "room", 2)
    model, tok = tiny_qwen
    old, new = _both(model, tok, _prompts(7, seed=2), batch_size=3, max_new_tokens=11)
    assert new == old


def test_shared_prefix_is_prefilled_once(tiny_qwen):
    """Prompts sharing a long prefix (a system prompt) reuse its KV; the tokens match ``generate``'s."""
    from carelab.generation import MIN_SHARED_PREFIX, _shared_prefix

    model, tok = tiny_qwen
    common = _prompts(1, seed=4)[0][:3] * 20  # 60 tokens every prompt starts with
    prompts = [common + p for p in _prompts(6, seed=5)]
    assert len(_shared_prefix(prompts)) >= MIN_SHARED_PREFIX
    old, new = _both(model, tok, prompts, batch_size=4, max_new_tokens=7)
    assert new == old
    assert _shared_prefix([common, common]) == common[:-1]  # every prompt keeps a token of its own
    assert _shared_prefix([common]) == [] and _shared_prefix([[1, 2], [1, 3]]) == []


def test_cache_kept_in_place_matches_generate(monkeypatch):
    """Rows ending at many different steps: finished rows leave and new ones join inside the same KV buffers
    (and the buffers regrow); the tokens still equal ``generate``'s.

    Why a re-initialised model: the tiny random model repeats one token, so its rows all end at once and the
    in-place paths would never run.
    """
    import collections

    from carelab.generation import _slack_layer_class
    from carelab.models import load_model

    model, tok = load_model("tiny-random-qwen2")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)  # large weights: varied tokens, so rows end at different steps
    prompts = _prompts(24, seed=1)
    with torch.inference_mode():
        free = [model.generate(input_ids=torch.tensor([p]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                               pad_token_id=tok.pad_token_id)[0, len(p):].tolist() for p in prompts]
    eos = [t for t, _ in collections.Counter(t for f in free for t in f).most_common(3)]
    monkeypatch.setattr(model.generation_config, "eos_token_id", eos)
    layer = _slack_layer_class()
    monkeypatch.setattr(layer, "room", 4)
    calls: collections.Counter = collections.Counter()
    for name in ("keep_rows", "join_rows", "reset_to"):
        def counted(self, *args, _name=name, _f=getattr(layer, name)):
            calls[_name] += 1
            return _f(self, *args)
        monkeypatch.setattr(layer, name, counted)
    old, new = _both(model, tok, prompts, batch_size=5, max_new_tokens=16)
    assert new == old
    ends = {next((i for i, t in enumerate(f) if t in eos), 16) for f in free}
    assert len(ends) > 5  # rows really ended at many different steps
    assert calls["keep_rows"] and calls["join_rows"] and calls["reset_to"]  # each in-place path ran
