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


def _varied_model():
    """The tiny model re-initialised with large weights: varied tokens (the plain one repeats one token)."""
    from carelab.models import load_model

    model, tok = load_model("tiny-random-qwen2")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    return model, tok


def _count_checked_tokens(monkeypatch) -> list[int]:
    """Record how many tokens each row is fed per decoding step (1 without drafts)."""
    from carelab.generation import _ContinuousGreedy

    widths: list[int] = []
    forward = _ContinuousGreedy._forward

    def counted(self, input_ids, cache=None, keep=1, **kwargs):
        if cache is not None and "position_ids" in kwargs:
            widths.append(input_ids.shape[1])
        return forward(self, input_ids, cache, keep=keep, **kwargs)

    monkeypatch.setattr(_ContinuousGreedy, "_forward", counted)
    return widths


@pytest.mark.parametrize("varied", [False, True])
def test_drafted_tokens_change_nothing_but_the_step_count(tiny_qwen, monkeypatch, varied):
    """Guesses accepted (the plain tiny model repeats itself) and rejected (the varied one rarely does): the texts
    equal ``generate``'s and the engine's without drafts, in fewer steps where guesses are right."""
    model, tok = _varied_model() if varied else tiny_qwen
    prompts = [p + p[:5] for p in _prompts(10, seed=6)]  # each prompt repeats its start: n-grams to look up
    old = generate_from_ids(model, tok, prompts, GenerationSettings(continuous=False, batch_size=4,
                                                                    max_new_tokens=12))
    widths = _count_checked_tokens(monkeypatch)
    plain = generate_from_ids(model, tok, prompts, GenerationSettings(batch_size=4, max_new_tokens=12,
                                                                      draft_tokens=0))
    plain_steps, widths[:] = len(widths), []
    drafted = generate_from_ids(model, tok, prompts, GenerationSettings(batch_size=4, max_new_tokens=12,
                                                                        draft_tokens=3))
    assert drafted == plain == old
    assert plain_steps and max(widths) > 1  # drafts were checked
    if not varied:
        assert len(widths) < plain_steps  # right guesses saved steps


def test_prefill_after_the_shared_prefix_runs_the_causal_kernel(tiny_qwen, monkeypatch):
    """A prompt's prefill after the cached prefix takes the causal-kernel path inside the engine's attention
    block and gives the logits and cache of transformers' masked SDPA outside it."""
    from carelab import generation

    model, tok = tiny_qwen
    common = torch.randint(5, 200, (40,), generator=torch.Generator().manual_seed(4)).tolist()
    prompts = [common + p for p in _prompts(3, seed=4)]
    engine = generation._ContinuousGreedy(model, tok, prompts, GenerationSettings(), None, None)
    assert len(engine.prefix) >= generation.MIN_SHARED_PREFIX
    calls: list[int] = []
    causal = generation._causal_after_prefix_sdpa
    monkeypatch.setattr(generation, "_causal_after_prefix_sdpa", lambda *a: calls.append(1) or causal(*a))
    with torch.inference_mode():
        masked_logits, masked_cache = engine._prefill(prompts[1])
        assert not calls  # outside the block the model runs transformers' sdpa
        with engine.attention:
            logits, cache = engine._prefill(prompts[1])
    assert len(calls) == model.config.num_hidden_layers
    torch.testing.assert_close(logits, masked_logits, rtol=1e-5, atol=1e-5)
    for layer, masked in zip(cache.layers, masked_cache.layers, strict=True):
        torch.testing.assert_close(layer.keys, masked.keys)
        torch.testing.assert_close(layer.values, masked.values)
    assert model.config._attn_implementation == "sdpa" and not engine.attention.active


def test_packed_grouped_query_attention_equals_sdpa(tiny_qwen):
    """Several query tokens over a cache with masked holes: the packed attention gives ``sdpa``'s logits."""
    from transformers import DynamicCache

    from carelab.generation import _packed_gqa_attention

    model, _ = tiny_qwen
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query: the packed path
    ids = torch.tensor(_prompts(2, seed=7)[0][:12]).repeat(3, 1)
    mask = torch.ones(3, 16, dtype=torch.long)
    mask[0, :4] = 0      # left padding
    mask[1, 6:8] = 0     # a hole left by rejected guesses
    logits = []
    for packed in (False, True):
        with torch.inference_mode():
            cache = DynamicCache()
            model(input_ids=ids, attention_mask=mask[:, :12], cache=cache, use_cache=True)
            positions = mask.cumsum(1)[:, 12:] - 1
            if packed:
                with _packed_gqa_attention(model):
                    out = model(input_ids=ids[:, :4], attention_mask=mask, position_ids=positions, cache=cache)
            else:
                out = model(input_ids=ids[:, :4], attention_mask=mask, position_ids=positions, cache=cache)
        logits.append(out.logits)
    assert model.config._attn_implementation == "sdpa"  # restored after the block
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5)


def test_partly_right_drafts_leave_holes_that_change_nothing(monkeypatch):
    """Drafts whose first guess is right and second wrong: one token kept, the wrong guess's cache column
    masked, later tokens attending across such holes; the texts still equal ``generate``'s.

    Why a scripted drafter: with real n-gram guesses on a random model, steps are either all right or all wrong.
    """
    from carelab.ngram_draft import Drafter

    model, tok = _varied_model()
    prompts = _prompts(8, seed=8)
    settings = dict(batch_size=3, max_new_tokens=10)
    with torch.inference_mode():
        truth = [model.generate(input_ids=torch.tensor([p]), max_new_tokens=10, do_sample=False,
                                pad_token_id=tok.pad_token_id)[0, len(p):].tolist() for p in prompts]
    kept: list[int] = []

    def scripted(self, row):
        i = next(i for i, p in enumerate(prompts) if row.tokens[:len(p)] == p)
        done = len(row.tokens) - len(prompts[i])
        guess = truth[i][done:done + 3]
        return guess[:1] + [(t + 1) % model.config.vocab_size for t in guess[1:]]  # right, then wrong

    from carelab.generation import _Row

    monkeypatch.setattr(Drafter, "draft", scripted)
    add = _Row.add
    monkeypatch.setattr(_Row, "add", lambda self, new, eos, limit: kept.append(len(new)) or add(self, new, eos, limit))
    old = generate_from_ids(model, tok, prompts, GenerationSettings(continuous=False, **settings))
    new = generate_from_ids(model, tok, prompts, GenerationSettings(draft_tokens=3, **settings))
    assert new == old
    assert kept.count(2) > len(prompts)  # most steps kept the right guess plus the model's own next token
