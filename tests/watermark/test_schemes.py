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
        make_scheme("minhash", V)


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


# ----- one seeding function, one bit per token -----
def _transformers_seed(wm: KGW, window: list[int]) -> int:
    """The seed transformers' processor computes for one window (its own torch arithmetic)."""
    ids = torch.tensor(window[-wm.context_width:])
    if wm.seeding == "lefthash":
        return (wm.hash_key * ids[-1].item()) % (2**64 - 1)
    table = torch.from_numpy(wm.fixed_table)
    a = table[ids % 1_000_003] + 1
    b = table[ids[-1] % 1_000_003] + 1
    return (wm.hash_key * a * b).min().item() % (2**64 - 1)


@pytest.mark.parametrize("seeding,width,key", [("lefthash", 1, 15485863), ("lefthash", 2, 2**62 + 7),
                                               ("selfhash", 1, 15485863), ("selfhash", 4, 15485863)])
def test_vectorised_seeds_equal_transformers_formula(seeding, width, key):
    wm = KGW(V, seeding=seeding, context_width=width, hash_key=key)
    windows = np.random.default_rng(4).integers(0, V, size=(50, width))
    got = wm.seeds(windows)
    assert got.dtype == np.uint64
    assert [int(x) for x in got] == [_transformers_seed(wm, w.tolist()) for w in windows]
    assert wm.seed(windows[3].tolist()) == int(got[3])


@pytest.mark.parametrize("vocab,gamma", [(1000, 0.25), (777, 0.5), (49152, 0.25)])
def test_prefix_membership_equals_torch_randperm(vocab, gamma):
    """The replayed shuffle says exactly which ids are in randperm(V)[:gamma*V], for every id."""
    from carelab.watermark.schemes import _RandpermPrefix

    k = int(vocab * gamma)
    prefix = _RandpermPrefix(vocab, k)
    for seed in [0, 1, 15485863 * 523, 2**63 + 5, 2**64 - 2]:
        g = torch.Generator().manual_seed(seed)
        expected = np.zeros(vocab, dtype=bool)
        expected[torch.randperm(vocab, generator=g)[:k].numpy()] = True
        ids = np.arange(vocab) if vocab < 5000 else np.r_[np.arange(0, vocab, 7), np.arange(k)]
        got = prefix.members(seed, ids.tolist())
        assert all(got[int(t)] == expected[t] for t in ids)
    assert prefix.agrees_with_torch()


def test_detection_reads_bits_and_caches_verdicts(monkeypatch):
    """Detection never draws a permutation; a second call answers from the verdict cache."""
    wm = KGW(V)
    seqs = np.random.default_rng(2).integers(0, V, size=(4, 60)).tolist()
    reference = [d.z for d in KGW(V).detect_batch(seqs)]
    wm._fast_prefix()  # the one-time agreement check draws permutations; after it none may be drawn
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: (_ for _ in ()).throw(AssertionError("drawn")))
    assert [d.z for d in wm.detect_batch(seqs)] == reference
    monkeypatch.setattr(wm, "_answer", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert [d.z for d in wm.detect_batch(seqs)] == reference


def test_selfhash_generation_reads_one_bit_per_candidate(monkeypatch):
    """The selfhash processor never unpacks a vocabulary-sized mask (and still equals transformers)."""
    from transformers.generation.logits_process import WatermarkLogitsProcessor

    g = torch.Generator().manual_seed(1)
    ids, scores = torch.randint(0, V, (2, 5), generator=g), torch.randn(2, V, generator=g)
    ref = WatermarkLogitsProcessor(V, "cpu", seeding_scheme="selfhash", context_width=3)(ids, scores)
    wm = KGW(V, seeding="selfhash", context_width=3)
    wm._fast_prefix()
    monkeypatch.setattr(wm, "_green_mask_for_seed", lambda seed: (_ for _ in ()).throw(AssertionError("mask")))
    torch.testing.assert_close(wm.logits_processor()(ids, scores), ref)


# ----- windowed detection, SWEET, Unigram's official rules -----
def test_max_window_z_equals_brute_force():
    from carelab.watermark.schemes import max_window_z

    flags = np.random.default_rng(5).random(40) < 0.4
    for min_window in (1, 8, 40, 100):
        brute = max(float(z_score(flags[i:i + n].sum(), n, 0.25)) for n in range(min(min_window, 40), 41)
                    for i in range(0, 41 - n))
        assert max_window_z(flags, 0.25, min_window)[0] == pytest.approx(brute)
    det = KGW(V).detect_windowed_batch([list(range(30))], min_window=5)[0]
    assert det.scored >= 5 and det.z >= KGW(V).detect(list(range(30))).z


def test_sweet_scores_and_biases_only_uncertain_positions():
    from carelab.watermark.schemes import SWEET

    wm = SWEET(V, entropy_threshold=1.0)
    seq = np.random.default_rng(6).integers(0, V, 30).tolist()
    ent = np.where(np.arange(30) % 2 == 0, 3.0, 0.1)
    det = wm.detect(seq, entropies=ent)
    flags = KGW(V).green_flags_batch([seq])[0]
    keep = ent[1:] > 1.0
    assert (det.scored, det.green) == (int(keep.sum()), int(flags[keep].sum()))
    with pytest.raises(ValueError, match="entropy"):
        wm.detect(seq)
    peaked = torch.full((1, V), -30.0)
    peaked[0, 5] = 30.0  # entropy ~ 0: left alone
    flat = torch.zeros((1, V))  # entropy log V: biased like KGW
    ids = torch.tensor([[3, 4]])
    proc = wm.logits_processor()
    assert torch.equal(proc(ids, peaked), peaked)
    torch.testing.assert_close(proc(ids, flat), KGW(V, gamma=0.25).logits_processor()(ids, flat))


def test_token_entropies_match_a_direct_forward(tiny_qwen):
    from carelab.watermark.schemes import entropy_of_logits, token_entropies

    model, _ = tiny_qwen
    prefixes, seqs = [[1, 2, 3], [4]], [[5, 6, 7, 8], [9, 10]]
    got = token_entropies(model, prefixes, seqs, batch_size=2)
    for p, s, e in zip(prefixes, seqs, got, strict=True):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([p + s])).logits[0]
        np.testing.assert_allclose(e, entropy_of_logits(logits).numpy()[len(p) - 1: len(p) + len(s) - 1], rtol=1e-4)


def test_unigram_official_defaults_and_dynamic_threshold():
    from scipy.stats import norm

    from carelab.watermark.schemes import UNIGRAM_OFFICIAL, unigram_dynamic_threshold

    assert UNIGRAM_OFFICIAL == {"gamma": 0.5, "delta": 2.0, "z_threshold": 6.0}
    wm = Unigram(V, gamma=0.5, ignore_repeated_ngrams=True, dynamic_threshold=True, alpha=0.01)
    green = np.flatnonzero(wm.green_mask)
    seq = [int(t) for t in green[:12]] * 3 + [int(np.flatnonzero(~wm.green_mask)[0])]
    det = wm.detect(seq)
    tau = np.sqrt(1 - (13 - 1) / (V - 1)) * norm.ppf(0.99)  # the authors' _compute_tau(m, N, alpha)
    assert float(unigram_dynamic_threshold(13, V, 0.01)) == pytest.approx(tau)
    assert (det.scored, det.green) == (13, 12) and det.prediction == (det.z > tau)
    with pytest.raises(ValueError, match="unique-token"):
        Unigram(V, dynamic_threshold=True)
