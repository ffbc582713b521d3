"""Watermark schemes: agreement with transformers, z-test maths, detection of a tiny model's output."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from scipy.stats import norm

from carelab.watermark.schemes import KGW, Unigram, make_scheme, z_score

V = 1000


def _transformers_detector(seeding: str, width: int, ignore: bool, vocab: int = V):
    from transformers import LlamaConfig, WatermarkDetector, WatermarkingConfig

    cfg = LlamaConfig(vocab_size=vocab, bos_token_id=vocab - 1,  # never at the start of our sequences
                       hidden_size=8, num_hidden_layers=1,
                      num_attention_heads=1, intermediate_size=8)
    wc = WatermarkingConfig(greenlist_ratio=0.25, bias=2.0, hashing_key=15485863, seeding_scheme=seeding,
                            context_width=width)
    return WatermarkDetector(cfg, "cpu", wc, ignore_repeated_ngrams=ignore)


@pytest.mark.parametrize("seeding,width", [("lefthash", 1), ("lefthash", 3), ("selfhash", 1), ("selfhash", 4)])
@pytest.mark.parametrize("ignore", [False, True])
def test_z_scores_equal_transformers_detector(seeding, width, ignore):
    rng = np.random.default_rng(7)
    # a small id range makes repeated n-grams (and so the ignore-repeats path) actually occur
    seqs = rng.integers(0, 60, size=(5, 50))
    ref = _transformers_detector(seeding, width, ignore)(torch.tensor(seqs), return_dict=True)
    ours = KGW(V, seeding=seeding, context_width=width, ignore_repeated_ngrams=ignore).detect_batch(seqs.tolist())
    np.testing.assert_allclose([d.z for d in ours], ref.z_score, rtol=0, atol=1e-12)
    np.testing.assert_array_equal([d.green for d in ours], ref.num_green_tokens)
    np.testing.assert_array_equal([d.scored for d in ours], ref.num_tokens_scored)
    np.testing.assert_allclose([d.p_value for d in ours], ref.p_value, atol=1e-12)
    np.testing.assert_array_equal([d.prediction for d in ours], ref.z_score > 3.0)


def test_lefthash_green_lists_equal_transformers():
    from transformers.generation.logits_process import WatermarkLogitsProcessor

    proc = WatermarkLogitsProcessor(V, "cpu")
    ours = KGW(V)
    for prev in [0, 1, 17, 523, V - 1]:
        ref = sorted(proc._get_greenlist_ids(torch.tensor([5, prev])).tolist())
        assert ours.green_ids([prev]).tolist() == ref
        assert len(ref) == int(0.25 * V)


@pytest.mark.parametrize("seeding", ["lefthash", "selfhash"])
def test_logits_processor_equals_transformers(seeding):
    from transformers.generation.logits_process import WatermarkLogitsProcessor

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (3, 6), generator=g)
    scores = torch.randn(3, V, generator=g)
    ref = WatermarkLogitsProcessor(V, "cpu", seeding_scheme=seeding, context_width=2)(ids, scores)
    ours = KGW(V, seeding=seeding, context_width=2).logits_processor()(ids, scores)
    torch.testing.assert_close(ours, ref)
    assert (ours - scores).abs().sum() > 0  # something was boosted


def test_batch_detection_equals_single():
    rng = np.random.default_rng(1)
    wm = KGW(V)
    seqs = [rng.integers(0, V, size=n).tolist() for n in (1, 2, 30, 77)]
    assert wm.detect_batch(seqs) == [wm.detect(s) for s in seqs]


def test_z_maths_on_planted_counts_kgw():
    """Build sequences with a planted number of green tokens; the detector must count exactly those."""
    wm = KGW(V)
    rng = np.random.default_rng(3)
    for planted, total in [(0, 40), (10, 40), (25, 40), (40, 40)]:
        flags = [True] * planted + [False] * (total - planted)
        rng.shuffle(flags)
        seq = [int(rng.integers(V))]
        for green in flags:
            mask = wm.green_mask([seq[-1]])
            pool = np.flatnonzero(mask if green else ~mask)
            seq.append(int(rng.choice(pool)))
        det = wm.detect(seq)
        assert (det.green, det.scored) == (planted, total)
        expected = (planted - 0.25 * total) / np.sqrt(total * 0.25 * 0.75)
        assert det.z == pytest.approx(expected)
        assert det.p_value == pytest.approx(norm.sf(expected))
        assert det.prediction == (expected > 3.0)


def test_z_maths_on_planted_counts_unigram_and_unique():
    wm = Unigram(V, key=5)
    green = np.flatnonzero(wm.green_mask)
    red = np.flatnonzero(~wm.green_mask)
    seq = [int(green[0])] * 6 + [int(green[1])] * 2 + [int(red[0])] * 4
    det = wm.detect(seq)
    assert (det.green, det.scored) == (8, 12)
    assert det.z == pytest.approx(float(z_score(8, 12, 0.25)))
    uniq = Unigram(V, key=5, ignore_repeated_ngrams=True).detect(seq)
    assert (uniq.green, uniq.scored) == (2, 3)
    assert Unigram(V).detect([]).scored == 0 and Unigram(V).detect([]).p_value == 1.0


def test_ignore_repeated_ngrams_counts_each_bigram_once():
    seq = [4, 9] * 20
    plain, uniq = KGW(V).detect(seq), KGW(V, ignore_repeated_ngrams=True).detect(seq)
    assert plain.scored == 39 and uniq.scored == 2


def test_unigram_follows_zhao_construction():
    key = 11
    seed = int.from_bytes(hashlib.sha256(np.int64(key).tobytes()).digest()[:4], "little")
    n = int(0.25 * V)
    mask = np.array([True] * n + [False] * (V - n))
    np.random.default_rng(seed).shuffle(mask)
    wm = Unigram(V, key=key)
    np.testing.assert_array_equal(wm.green_mask, mask)
    assert wm.seed() == seed
    assert not np.array_equal(Unigram(V, key=12).green_mask, mask)


def test_bad_settings_and_vocab_mismatch():
    with pytest.raises(ValueError, match="gamma"):
        KGW(V, gamma=1.5)
    with pytest.raises(ValueError, match="seeding"):
        KGW(V, seeding="minhash")
    with pytest.raises(ValueError, match="vocab_size"):
        KGW(V).detect([V + 3, 1])
    with pytest.raises(ValueError, match="vocab_size"):
        Unigram(V).logits_processor()(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, V - 1))
    with pytest.raises(ValueError, match="unknown watermark"):
        make_scheme("sweet", V)


@pytest.mark.parametrize("scheme", ["kgw", "unigram"])
def test_tiny_model_watermark_detected_plain_not(tiny_qwen, scheme):
    """Statistical check with fixed seeds: watermarked samples score high, plain samples do not."""
    from transformers import LogitsProcessorList

    from carelab.generation import GenerationSettings, generate_from_ids

    model, tok = tiny_qwen
    # A random model's text decodes to many U+FFFD characters that re-encode into long runs of the same
    # token; counting each n-gram once keeps those runs from dominating the plain texts' z-scores.
    wm = make_scheme(scheme, model.config.vocab_size, ignore_repeated_ngrams=True)
    prompts = [tok(f"def f{i}(x):", add_special_tokens=False)["input_ids"] for i in range(6)]
    settings = GenerationSettings(max_new_tokens=48, do_sample=True, temperature=1.0, batch_size=6, seed=0)

    def ids_of(texts):
        return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]

    marked = generate_from_ids(model, tok, prompts, settings, LogitsProcessorList([wm.logits_processor()]))
    plain = generate_from_ids(model, tok, prompts, settings)
    z_marked = [d.z for d in wm.detect_batch(ids_of(marked))]
    z_plain = [d.z for d in wm.detect_batch(ids_of(plain))]
    assert min(z_marked) > 3.0, z_marked
    assert max(z_plain) < 3.0, z_plain
    assert np.mean(z_marked) - np.mean(z_plain) > 3.0
