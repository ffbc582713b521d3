"""KGW (lefthash/selfhash), SWEET and Unigram watermarks: one object owns the seeding, the processor and the detector.

Why one object: a watermark is only detectable when generator and detector agree on the vocabulary
size, gamma, the key and the seeding scheme. ``logits_processor()`` and ``detect()`` call the same
``KGW.seeds`` (the one seed formula, vectorised) and the same green lists, so they cannot drift apart.

``KGW(seeding="lefthash")`` reproduces transformers' ``WatermarkLogitsProcessor``/``WatermarkDetector``
bit for bit on CPU (same seed formula, same ``torch.randperm`` on a CPU generator, same scored n-grams),
which the tests check. One detail inherited from transformers: ``lefthash`` seeds on the last token
only, whatever ``context_width`` is; ``context_width`` then only delays the first scored token.
Green lists are always drawn on a CPU generator, so they are the same on every device (transformers
draws on the model's device, and CUDA ``randperm`` differs from CPU).

Detection reads one bit per scored token: whether a token is in ``randperm(V)[:γV]`` is decided by the
first γV steps of torch's shuffle, replayed with numpy's identical mt19937 (``_RandpermPrefix``),
so no permutation is drawn; verdicts are cached per seed across calls.

``SWEET`` (Lee et al. 2023) is lefthash KGW applied, and scored, only where the model's next-token
entropy exceeds a threshold (code has many forced tokens). ``Unigram`` follows Zhao et al. (2023): one
fixed green list, seeded by the first four bytes (little-endian) of sha256 of the key as a 64-bit
integer, shuffled with numpy's ``default_rng``. ``detect_windowed_batch`` is lm-watermarking's WinMax:
the largest z over all windows of the green/red sequence (calibrate its threshold on unwatermarked text).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

TABLE_SIZE = 1_000_003  # transformers' selfhash lookup table size
SELFHASH_CANDIDATES = 40  # transformers (and lm-watermarking) score only the top-40 candidates in selfhash
SEED_MODULUS = 2**64 - 1  # transformers reduces every seed modulo this before manual_seed
UNIGRAM_OFFICIAL = {"gamma": 0.5, "delta": 2.0, "z_threshold": 6.0}  # XuandongZhao/Unigram-Watermark defaults


@dataclass(frozen=True)
class Detection:
    """One z-test: ``green`` hits out of ``scored`` tokens; ``prediction`` is ``z > z_threshold``.

    With no scorable token, ``z`` is 0 and ``p_value`` 1 (no evidence either way).
    """

    z: float
    p_value: float
    green: int
    scored: int
    prediction: bool


def z_score(green: float | np.ndarray, scored: float | np.ndarray, gamma: float) -> np.ndarray:
    """z = (G - gamma*T) / sqrt(T*gamma*(1-gamma)); 0 where T == 0."""
    g = np.asarray(green, dtype=np.float64)
    t = np.asarray(scored, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (g - gamma * t) / np.sqrt(t * gamma * (1.0 - gamma))
    return np.where(t > 0, z, 0.0)


def p_value(z: float | np.ndarray) -> np.ndarray:
    """One-sided p-value of a z-score under the standard normal (survival function)."""
    from scipy.stats import norm

    return norm.sf(np.asarray(z, dtype=np.float64))


def _detections(green: np.ndarray, scored: np.ndarray, gamma: float, threshold: float | np.ndarray,
                z: np.ndarray | None = None) -> list[Detection]:
    green, scored = np.asarray(green), np.asarray(scored)
    z = z_score(green, scored, gamma) if z is None else np.asarray(z, dtype=np.float64)
    p = np.where(scored > 0, p_value(z), 1.0)
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), z.shape)
    return [Detection(float(zi), float(pi), int(gi), int(ti), bool(zi > th))
            for zi, pi, gi, ti, th in zip(z, p, green, scored, thr, strict=True)]


def max_window_z(flags: np.ndarray, gamma: float, min_window: int = 1) -> tuple[float, int, int]:
    """(z, green, size) of the window of ``flags`` with the largest z, over every window of at least
    ``min_window`` tokens (the whole sequence when it is shorter). lm-watermarking's WinMax."""
    flags = np.asarray(flags, dtype=np.int64)
    n = len(flags)
    if n == 0:
        return 0.0, 0, 0
    csum = np.concatenate([[0], np.cumsum(flags)])
    best = (-np.inf, 0, 0)
    for size in range(min(max(1, min_window), n), n + 1):
        greens = csum[size:] - csum[:-size]
        k = int(np.argmax(greens))
        z = float(z_score(greens[k], size, gamma))
        if z > best[0]:
            best = (z, int(greens[k]), size)
    return best


def unigram_dynamic_threshold(unique_tokens: int | np.ndarray, vocab_size: int, alpha: float = 0.01) -> np.ndarray:
    """Zhao et al.'s threshold for the unique-token z at false-positive rate ``alpha``:
    ``sqrt(1 - (m - 1)/(N - 1)) * Φ⁻¹(1 - alpha)`` with m distinct tokens out of a vocabulary of N (sampling
    m tokens without replacement shrinks the variance by the finite-population factor)."""
    from scipy.stats import norm

    m = np.asarray(unique_tokens, dtype=np.float64)
    return np.sqrt(np.clip(1.0 - (m - 1.0) / (vocab_size - 1.0), 0.0, None)) * norm.isf(alpha)


def _check_common(vocab_size: int, gamma: float) -> None:
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be in (0, 1), got {gamma}")


class _Scheme:
    """Shared detection plumbing; subclasses say which tokens are scored and which are green."""

    vocab_size: int
    gamma: float
    z_threshold: float
    ignore_repeated_ngrams: bool

    @property
    def greenlist_size(self) -> int:
        return int(self.vocab_size * self.gamma)

    def green_flags_batch(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def detect(self, token_ids: Sequence[int]) -> Detection:
        """z-test on one token sequence (pass only the text to test, e.g. the completion, without a prompt)."""
        return self.detect_batch([token_ids])[0]

    def detect_batch(self, sequences: Sequence[Sequence[int]]) -> list[Detection]:
        """z-tests for many sequences (their green lists are worked out together)."""
        flags = self.green_flags_batch(sequences)
        green = np.array([int(f.sum()) for f in flags], dtype=np.int64)
        scored = np.array([len(f) for f in flags], dtype=np.int64)
        return _detections(green, scored, self.gamma, self.z_threshold)

    def detect_windowed_batch(self, sequences: Sequence[Sequence[int]], min_window: int = 1) -> list[Detection]:
        """WinMax: each sequence's largest window z (windows of >= ``min_window`` scored tokens).

        The max over windows is not a z-test any more (many windows are tried), so ``p_value`` and
        ``prediction`` are only nominal: pick the threshold on unwatermarked text (ROC at a chosen FPR).
        """
        best = [max_window_z(f, self.gamma, min_window) for f in self.green_flags_batch(sequences)]
        return _detections(np.array([b[1] for b in best]), np.array([b[2] for b in best]), self.gamma,
                           self.z_threshold, z=np.array([b[0] for b in best]))

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token id out of range [0, {self.vocab_size}): min {ids.min()}, max {ids.max()}; "
                             "generator and detector must use the same vocab_size (model.config.vocab_size)")


class _RandpermPrefix:
    """Which ids land in the first ``k`` places of ``torch.randperm(n)`` (CPU generator, ``manual_seed(seed)``),
    without drawing the permutation.

    Why: a KGW green list is ``randperm(V)[:γV]`` and detection needs one bit per scored token, while the
    permutation is a V-step shuffle. torch's CPU ``randperm`` (n < 2^32/20) is the forward Fisher–Yates
    shuffle ``swap(r[i], r[i + u_i % (n - i)])`` with ``u`` the raw 32-bit outputs of an mt19937 seeded
    with the seed's low 32 bits, which is numpy's legacy ``RandomState``. Only the first k swaps decide
    the prefix: an id ``t >= k`` is in it iff a swap picked it; an id ``t < k`` is followed through the
    few swaps that move it. Checked against ``torch.randperm`` (tests, and once per process before first
    use — on a mismatch ``KGW`` draws the permutation instead).
    """

    def __init__(self, n: int, k: int):
        self.n, self.k = int(n), int(k)
        self._offset = np.arange(self.k, dtype=np.uint32)
        self._span = (self.n - np.arange(self.k)).astype(np.uint32)
        self._local = threading.local()

    def jumps(self, seed: int) -> np.ndarray:
        """Swap partners ``j_i = i + u_i % (n - i)`` of the first ``k`` shuffle steps (uint32)."""
        rs = getattr(self._local, "rs", None)
        if rs is None:
            rs = self._local.rs = np.random.RandomState(0)
        rs.seed(int(seed) & 0xFFFFFFFF)
        u = rs.randint(0, 2**32, size=self.k, dtype=np.uint32)  # full range: the raw mt19937 outputs
        return self._offset + u % self._span

    def _follow(self, jumps: np.ndarray, t: int) -> bool:
        """Is id ``t < k`` in the prefix? Track its place: step ``i`` moves it when it sits at ``i`` or at ``j_i``."""
        pos, step = t, 0
        while True:
            hi = min(pos, self.k)
            if step < hi and bool((jumps[step:hi] == pos).any()):  # picked by an earlier step: fixed at that step
                return True
            if pos >= self.k:
                return False
            nxt = int(jumps[pos])
            if nxt == pos:  # swapped with itself: fixed
                return True
            step, pos = pos + 1, nxt

    def members(self, seed: int, ids: Sequence[int]) -> dict[int, bool]:
        """``{id: id in randperm(n)[:k]}`` for the given ids."""
        ids = [int(t) for t in ids]
        if self.k == 0:
            return dict.fromkeys(ids, False)
        jumps = self.jumps(seed)
        big = [t for t in ids if t >= self.k]
        if len(big) > 32:  # one scatter beats many scans
            hit = np.zeros(self.n, dtype=bool)
            hit[jumps] = True
            out = {t: bool(hit[t]) for t in big}
        else:
            out = {t: bool((jumps == t).any()) for t in big}
        for t in ids:
            if t < self.k:
                out[t] = self._follow(jumps, t)
        return out

    def agrees_with_torch(self, seeds: Sequence[int] = (0, 15485863 * 7, 2**64 - 2), probes: int = 256) -> bool:
        """Spot-check against ``torch.randperm`` (a future torch could change its shuffle)."""
        import torch

        rng = np.random.default_rng(0)
        for seed in seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(int(seed))
            prefix = set(torch.randperm(self.n, generator=g)[: self.k].tolist())
            ids = np.unique(np.concatenate([rng.integers(0, self.n, probes), rng.integers(0, max(self.k, 1), probes)]))
            if any(v != (t in prefix) for t, v in self.members(seed, ids.tolist()).items()):
                return False
        return True


_PREFIX_CHECKED: dict[tuple[int, int], bool] = {}


def _checked_prefix(n: int, k: int) -> _RandpermPrefix | None:
    """The fast prefix for (n, k) if it agrees with this torch, else None (checked once per process)."""
    prefix = _RandpermPrefix(n, k)
    if n >= 2**32 // 20:  # torch switches to another shuffle for huge n
        return None
    if (n, k) not in _PREFIX_CHECKED:
        _PREFIX_CHECKED[(n, k)] = prefix.agrees_with_torch()
        if not _PREFIX_CHECKED[(n, k)]:
            log.warning("torch.randperm no longer matches the fast green-list check; drawing permutations instead")
    return prefix if _PREFIX_CHECKED[(n, k)] else None


class KGW(_Scheme):
    """Kirchenbauer et al.'s watermark with transformers-compatible ``lefthash`` and ``selfhash`` seeding.

    Args:
        vocab_size: size of the logits row the processor sees (``model.config.vocab_size``).
        gamma: green-list fraction. delta: bias added to green logits.
        hash_key: the secret key (15485863 is the public default; change it in real use).
        seeding: ``lefthash`` (seed = key * previous token) or ``selfhash`` (min-hash over the
            ``context_width`` window that includes the candidate token).
        context_width: tokens in the seeding window.
        z_threshold: detection threshold. ignore_repeated_ngrams: count each scored n-gram once.
        cache_size: seeds whose green lists / green verdicts are kept between calls.
        threads: threads answering a batch's new seeds in ``detect_batch`` (default: up to 4).

    >>> wm = KGW(vocab_size=100)
    >>> len(wm.green_ids([5]))
    25
    >>> wm.detect([1, 2, 3]).scored
    2
    """

    def __init__(self, vocab_size: int, gamma: float = 0.25, delta: float = 2.0, hash_key: int = 15485863,
                 seeding: str = "lefthash", context_width: int = 1, z_threshold: float = 3.0,
                 ignore_repeated_ngrams: bool = False, cache_size: int = 4096, threads: int | None = None):
        _check_common(vocab_size, gamma)
        if seeding not in ("lefthash", "selfhash"):
            raise ValueError(f"seeding must be 'lefthash' or 'selfhash', got {seeding!r}")
        if context_width < 1:
            raise ValueError(f"context_width must be >= 1, got {context_width}")
        self.vocab_size, self.gamma, self.delta = int(vocab_size), float(gamma), float(delta)
        self.hash_key, self.seeding, self.context_width = int(hash_key), seeding, int(context_width)
        self.z_threshold, self.ignore_repeated_ngrams = float(z_threshold), bool(ignore_repeated_ngrams)
        self._masks: OrderedDict[int, np.ndarray] = OrderedDict()  # seed -> packed green mask (generation)
        self._verdicts: OrderedDict[int, dict[int, bool]] = OrderedDict()  # seed -> {token: green?} (detection)
        self._cache_size = int(cache_size)
        self.threads = int(threads) if threads is not None else min(4, os.cpu_count() or 1)
        self._table: np.ndarray | None = None
        self._prefix: _RandpermPrefix | None | bool = False  # False: not built yet

    # ----- seeding (the single source of truth for generator and detector) -----
    @property
    def fixed_table(self) -> np.ndarray:
        """selfhash's random lookup table: ``randperm(1_000_003)`` seeded by the key, as transformers draws it."""
        if self._table is None:
            import torch

            g = torch.Generator(device="cpu")
            g.manual_seed(self.hash_key)
            self._table = torch.randperm(TABLE_SIZE, generator=g).numpy().astype(np.int64)
        return self._table

    def seeds(self, windows: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
        """Generator seeds (uint64) of many seeding windows, one per row — the only seed formula in carelab.

        Each row ends with the newest token (lefthash: the context's last token; selfhash: the candidate);
        only its last ``context_width`` tokens count. lefthash: ``key * last mod 2^64-1`` (exact integers,
        as transformers); selfhash: ``min_w key*(T[w]+1)*(T[candidate]+1)`` in wrapping int64, then mod 2^64-1.
        """
        w = np.asarray(windows, dtype=np.int64)
        if w.ndim == 1:
            w = w[None, :]
        if w.shape[1] == 0:
            raise ValueError("seeding needs at least one token")
        w = w[:, -self.context_width:]
        if self.seeding == "lefthash":
            last = w[:, -1]
            if not last.size:
                return np.zeros(0, dtype=np.uint64)
            if self.hash_key >= 0 and self.hash_key * int(last.max()) < 2**63:  # no overflow, below the modulus
                return (np.int64(self.hash_key) * last).astype(np.uint64)
            return np.array([(self.hash_key * int(x)) % SEED_MODULUS for x in last], dtype=np.uint64)
        t = self.fixed_table
        a = t[w % TABLE_SIZE] + 1
        b = t[w[:, -1] % TABLE_SIZE][:, None] + 1
        with np.errstate(over="ignore"):  # int64 wrap-around, exactly as torch computes it
            m = (np.int64(self.hash_key) * a * b).min(axis=1)
        return m.view(np.uint64) - (m < 0).astype(np.uint64)  # Python's m % (2^64 - 1) for an int64 m

    def seed(self, window: Sequence[int]) -> int:
        """Generator seed of one seeding window (see ``seeds``)."""
        return int(self.seeds([list(window)])[0])

    def _packed_for_seed(self, seed: int) -> np.ndarray:
        """Bit-packed green mask of one seed, drawn as transformers does (LRU-cached)."""
        packed = self._masks.get(seed)
        if packed is not None:
            self._masks.move_to_end(seed)
            return packed
        import torch

        g = torch.Generator(device="cpu")
        g.manual_seed(seed)
        perm = torch.randperm(self.vocab_size, generator=g).numpy()
        mask = np.zeros(self.vocab_size, dtype=bool)
        mask[perm[: self.greenlist_size]] = True
        packed = self._masks[seed] = np.packbits(mask)
        if len(self._masks) > self._cache_size:
            self._masks.popitem(last=False)
        return packed

    def _green_mask_for_seed(self, seed: int) -> np.ndarray:
        return np.unpackbits(self._packed_for_seed(seed), count=self.vocab_size).astype(bool)

    def green_mask(self, window: Sequence[int]) -> np.ndarray:
        """Green mask (bool, vocab-sized) for a seeding window (see ``seeds``)."""
        return self._green_mask_for_seed(self.seed(window))

    def green_ids(self, window: Sequence[int]) -> np.ndarray:
        """Green token ids (sorted) for a seeding window."""
        return np.flatnonzero(self.green_mask(window))

    # ----- one bit per (seed, token) -----
    def _fast_prefix(self) -> _RandpermPrefix | None:
        if self._prefix is False:
            self._prefix = _checked_prefix(self.vocab_size, self.greenlist_size)
        return self._prefix  # type: ignore[return-value]

    def _answer(self, seed: int, tokens: Sequence[int]) -> dict[int, bool]:
        """Green verdicts of ``tokens`` under ``seed`` (pure: safe on worker threads)."""
        prefix = self._fast_prefix()
        if prefix is not None:
            return prefix.members(seed, tokens)
        mask = self._green_mask_for_seed(seed)
        return {int(t): bool(mask[t]) for t in tokens}

    def _remember(self, seed: int, verdicts: dict[int, bool]) -> dict[int, bool]:
        known = self._verdicts.get(seed)
        if known is None:
            known = self._verdicts[seed] = {}
        else:
            self._verdicts.move_to_end(seed)
        known.update(verdicts)
        if len(self._verdicts) > self._cache_size:
            self._verdicts.popitem(last=False)
        return known

    def is_green(self, seeds: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Is ``tokens[i]`` green under ``seeds[i]``? One bit each, the permutation never drawn (see
        ``_RandpermPrefix``); each seed is answered once per call, new seeds on ``threads`` threads."""
        seeds = np.asarray(seeds, dtype=np.uint64)
        tokens = np.asarray(tokens, dtype=np.int64)
        out = np.zeros(len(tokens), dtype=bool)
        if not len(tokens):
            return out
        keys, inverse = np.unique(seeds, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(keys) + 1))
        groups = [order[bounds[k]:bounds[k + 1]] for k in range(len(keys))]
        todo: list[tuple[int, list[int]]] = []
        for key, rows in zip(keys.tolist(), groups, strict=True):
            known = self._verdicts.get(key, {})
            missing = sorted({int(t) for t in tokens[rows].tolist()} - known.keys())
            if missing:
                todo.append((key, missing))
        if self.threads > 1 and len(todo) >= 64:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=self.threads) as pool:
                answers = list(pool.map(lambda job: self._answer(*job), todo))
        else:
            answers = [self._answer(*job) for job in todo]
        fresh = {key: ans for (key, _), ans in zip(todo, answers, strict=True)}
        for key, rows in zip(keys.tolist(), groups, strict=True):
            known = self._remember(key, fresh.get(key, {}))
            out[rows] = [known[t] for t in tokens[rows].tolist()]
        return out

    # ----- generation -----
    def logits_processor(self):
        """A transformers ``LogitsProcessor`` that adds ``delta`` to green logits (use with ``generate``)."""
        return _as_logits_processor(_KGWProcessor(self))

    # ----- detection -----
    def _windows(self, ids: np.ndarray) -> np.ndarray:
        """Seeding windows of every scored position (the scored token is each row's last), as transformers
        forms them: lefthash scores from index ``context_width`` on, selfhash from ``context_width - 1``."""
        n = self.context_width + 1 if self.seeding == "lefthash" else self.context_width
        if len(ids) < n:
            return np.zeros((0, n), dtype=np.int64)
        return np.lib.stride_tricks.sliding_window_view(ids, n)

    def green_flags_batch(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Per sequence, the green flag of each scored token in order (first occurrences of each n-gram only
        with ``ignore_repeated_ngrams``); all sequences' seeds are answered together."""
        grams_per_seq = []
        for seq in sequences:
            ids = np.asarray(list(seq), dtype=np.int64)
            self._check_ids(ids)
            grams = self._windows(ids)
            if self.ignore_repeated_ngrams and len(grams):
                _, first = np.unique(grams, axis=0, return_index=True)
                grams = grams[np.sort(first)]
            grams_per_seq.append(grams)
        sizes = [len(g) for g in grams_per_seq]
        if not sum(sizes):
            return [np.zeros(0, dtype=bool) for _ in sizes]
        stacked = np.concatenate(grams_per_seq, axis=0)
        seed_rows = stacked[:, :-1] if self.seeding == "lefthash" else stacked
        flags = self.is_green(self.seeds(seed_rows), stacked[:, -1])
        return np.split(flags, np.cumsum(sizes)[:-1])


class _KGWProcessor:
    """The processing step of ``KGW`` (wrapped into a ``transformers.LogitsProcessor`` on request)."""

    def __init__(self, scheme: KGW):
        self.scheme = scheme

    def bias(self, input_ids, scores):
        """The green bias (vocab-wide for lefthash, on the top-40 candidates for selfhash), as a tensor."""
        import torch

        s = self.scheme
        ctx = input_ids[:, -s.context_width:].cpu().numpy()
        bias = torch.zeros_like(scores)
        if s.seeding == "lefthash":
            masks = np.stack([s._green_mask_for_seed(int(x)) for x in s.seeds(ctx)])
            bias[:, : s.vocab_size] = torch.from_numpy(masks).to(bias.device, bias.dtype) * s.delta
            return bias
        # selfhash: a top candidate is boosted iff it is green under the seed of the window ending in itself.
        k = min(SELFHASH_CANDIDATES, s.vocab_size)
        top = torch.topk(scores[:, : s.vocab_size], k, dim=-1).indices
        cands = top.cpu().numpy().astype(np.int64)
        prev = ctx[:, 1:] if s.context_width > 1 else ctx[:, :0]
        windows = np.concatenate([np.repeat(prev, k, axis=0), cands.reshape(-1, 1)], axis=1)
        green = s.is_green(s.seeds(windows), cands.reshape(-1)).reshape(cands.shape)
        bias.scatter_(1, top, torch.from_numpy(green).to(bias.device, bias.dtype) * s.delta)
        return bias

    def __call__(self, input_ids, scores):
        s = self.scheme
        if input_ids.shape[-1] < s.context_width:
            return scores
        if scores.shape[-1] < s.vocab_size:
            raise ValueError(f"logits have {scores.shape[-1]} columns but the watermark vocab_size is "
                             f"{s.vocab_size}; build the watermark with model.config.vocab_size")
        return scores + self.bias(input_ids, scores)


def _as_logits_processor(obj):
    """Wrap a callable as a real ``transformers.LogitsProcessor`` subclass instance."""
    from transformers import LogitsProcessor

    class _Wrapped(LogitsProcessor):
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, input_ids, scores):
            return self.inner(input_ids, scores)

    return _Wrapped(obj)


def entropy_of_logits(logits):
    """Shannon entropy (nats) of softmax(logits) along the last axis — SWEET's uncertainty measure."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


class SWEET(KGW):
    """Lee et al.'s SWEET: lefthash KGW whose bias is applied, and whose tokens are scored, only where the
    model's next-token entropy exceeds ``entropy_threshold`` (0.9 nats, the authors' code default).

    Why: in code most tokens are forced (syntax, names already defined); a bias there cannot change the
    token, and scoring them dilutes the z-score. Detection therefore needs the entropies of the scored
    tokens, which only the model can give (``token_entropies``); the generator and the detector must
    see the same context for them to agree.

    >>> wm = SWEET(vocab_size=100)
    >>> wm.detect([1, 2, 3], entropies=[5.0, 0.1, 5.0]).scored
    1
    """

    def __init__(self, vocab_size: int, gamma: float = 0.25, delta: float = 2.0, hash_key: int = 15485863,
                 entropy_threshold: float = 0.9, z_threshold: float = 3.0, cache_size: int = 4096,
                 threads: int | None = None):
        super().__init__(vocab_size, gamma=gamma, delta=delta, hash_key=hash_key, z_threshold=z_threshold,
                         cache_size=cache_size, threads=threads)
        self.entropy_threshold = float(entropy_threshold)

    def logits_processor(self):
        """KGW's processor with the bias kept only on rows whose entropy exceeds the threshold."""
        return _as_logits_processor(_SWEETProcessor(self))

    def detect(self, token_ids: Sequence[int], entropies: Sequence[float] | None = None) -> Detection:  # type: ignore[override]
        return self.detect_batch([token_ids], None if entropies is None else [entropies])[0]

    def high_entropy_flags_batch(self, sequences: Sequence[Sequence[int]],
                                 entropies: Sequence[Sequence[float]] | None) -> list[np.ndarray]:
        """Green flags of the scored tokens whose entropy (of the distribution that produced them) is high."""
        if entropies is None:
            raise ValueError("SWEET detection needs the model's entropy at every token (see token_entropies)")
        flags = self.green_flags_batch(sequences)
        out = []
        for f, seq, ent in zip(flags, sequences, entropies, strict=True):
            ent = np.asarray(ent, dtype=np.float64)
            if len(ent) != len(seq):
                raise ValueError(f"got {len(ent)} entropies for {len(seq)} tokens")
            out.append(f[ent[len(ent) - len(f):] > self.entropy_threshold])
        return out

    def detect_batch(self, sequences: Sequence[Sequence[int]],  # type: ignore[override]
                     entropies: Sequence[Sequence[float]] | None = None) -> list[Detection]:
        flags = self.high_entropy_flags_batch(sequences, entropies)
        return _detections(np.array([int(f.sum()) for f in flags], dtype=np.int64),
                           np.array([len(f) for f in flags], dtype=np.int64), self.gamma, self.z_threshold)

    def detect_windowed_batch(self, sequences, min_window: int = 1, entropies=None) -> list[Detection]:  # type: ignore[override]
        best = [max_window_z(f, self.gamma, min_window) for f in self.high_entropy_flags_batch(sequences, entropies)]
        return _detections(np.array([b[1] for b in best]), np.array([b[2] for b in best]), self.gamma,
                           self.z_threshold, z=np.array([b[0] for b in best]))


class _SWEETProcessor(_KGWProcessor):
    def __call__(self, input_ids, scores):
        s = self.scheme
        if scores.shape[-1] < s.vocab_size:
            raise ValueError(f"logits have {scores.shape[-1]} columns but the watermark vocab_size is {s.vocab_size}")
        uncertain = entropy_of_logits(scores) > s.entropy_threshold  # type: ignore[attr-defined]
        if not bool(uncertain.any()):
            return scores
        return scores + self.bias(input_ids, scores) * uncertain[:, None].to(scores.dtype)


def token_entropies(model, prefixes: Sequence[Sequence[int]], sequences: Sequence[Sequence[int]],
                    batch_size: int = 8) -> list[np.ndarray]:
    """For each sequence, the entropy of the model's next-token distribution at each of its tokens, given
    its prefix (e.g. the prompt) and the tokens before it — what SWEET's generator saw (up to retokenisation)."""
    import torch

    out: list[np.ndarray] = []
    device = next(model.parameters()).device
    pad = 0
    for start in range(0, len(sequences), batch_size):
        rows = [list(p) + list(s) for p, s in zip(prefixes[start:start + batch_size],
                                                 sequences[start:start + batch_size], strict=True)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            ent = entropy_of_logits(logits).cpu().numpy()
        for i, (p, s) in enumerate(zip(prefixes[start:start + batch_size], sequences[start:start + batch_size],
                                       strict=True)):
            n_p, n_s = len(p), len(s)
            # token j of s is predicted at position n_p + j - 1; the first token needs a non-empty prefix
            e = ent[i, max(n_p - 1, 0): n_p + n_s - 1]
            out.append(np.concatenate([np.full(n_s - len(e), np.inf), e]) if len(e) < n_s else e)
    return out


def _unigram_seed(key: int) -> int:
    return int.from_bytes(hashlib.sha256(np.int64(key).tobytes()).digest()[:4], "little")


class Unigram(_Scheme):
    """Zhao et al.'s Unigram watermark: one fixed green list for every position.

    Defaults here (γ = 0.25, δ = 2, z > 3) follow this project's KGW settings; the authors' code uses
    γ = 0.5, δ = 2 and threshold 6.0 (``UNIGRAM_OFFICIAL``). ``ignore_repeated_ngrams`` counts each
    distinct token once (their ``unidetect``); ``dynamic_threshold`` then replaces the fixed threshold by
    their ``unigram_dynamic_threshold`` at false-positive rate ``alpha``.

    >>> wm = Unigram(vocab_size=100)
    >>> int(wm.green_mask.sum())
    25
    """

    def __init__(self, vocab_size: int, gamma: float = 0.25, delta: float = 2.0, key: int = 0,
                 z_threshold: float = 3.0, ignore_repeated_ngrams: bool = False, dynamic_threshold: bool = False,
                 alpha: float = 0.01):
        _check_common(vocab_size, gamma)
        if dynamic_threshold and not ignore_repeated_ngrams:
            raise ValueError("the dynamic threshold is defined for unique-token detection: "
                             "set ignore_repeated_ngrams=True")
        self.vocab_size, self.gamma, self.delta, self.key = int(vocab_size), float(gamma), float(delta), int(key)
        self.z_threshold, self.ignore_repeated_ngrams = float(z_threshold), bool(ignore_repeated_ngrams)
        self.dynamic_threshold, self.alpha = bool(dynamic_threshold), float(alpha)
        self.green_mask = self._make_mask()

    def seed(self) -> int:
        """numpy seed derived from the key: sha256 of its int64 bytes, first four bytes little-endian."""
        return _unigram_seed(self.key)

    def _make_mask(self) -> np.ndarray:
        n_green = self.greenlist_size
        mask = np.array([True] * n_green + [False] * (self.vocab_size - n_green))
        np.random.default_rng(self.seed()).shuffle(mask)
        return mask

    def green_ids(self, window: Sequence[int] = ()) -> np.ndarray:
        """The fixed green ids (the window is ignored; kept for a uniform interface)."""
        return np.flatnonzero(self.green_mask)

    def logits_processor(self):
        """A transformers ``LogitsProcessor`` adding ``delta`` to the fixed green list."""
        return _as_logits_processor(_UnigramProcessor(self))

    def green_flags_batch(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        out = []
        for seq in sequences:
            ids = np.asarray(list(seq), dtype=np.int64)
            self._check_ids(ids)
            if self.ignore_repeated_ngrams and len(ids):
                _, first = np.unique(ids, return_index=True)
                ids = ids[np.sort(first)]
            out.append(self.green_mask[ids])
        return out

    def detect_batch(self, sequences: Sequence[Sequence[int]]) -> list[Detection]:
        flags = self.green_flags_batch(sequences)
        green = np.array([int(f.sum()) for f in flags], dtype=np.int64)
        scored = np.array([len(f) for f in flags], dtype=np.int64)
        threshold = (unigram_dynamic_threshold(scored, self.vocab_size, self.alpha) if self.dynamic_threshold
                     else self.z_threshold)
        return _detections(green, scored, self.gamma, threshold)


class _UnigramProcessor:
    def __init__(self, scheme: Unigram):
        self.scheme = scheme
        self._bias = None

    def __call__(self, input_ids, scores):
        import torch

        s = self.scheme
        if scores.shape[-1] < s.vocab_size:
            raise ValueError(f"logits have {scores.shape[-1]} columns but the watermark vocab_size is {s.vocab_size}")
        if self._bias is None or self._bias.device != scores.device or self._bias.dtype != scores.dtype:
            self._bias = torch.from_numpy(s.green_mask.astype(np.float32) * s.delta).to(scores.device, scores.dtype)
        out = scores.clone()
        out[:, : s.vocab_size] += self._bias
        return out


SCHEME_NAMES = ("kgw", "kgw-selfhash", "sweet", "unigram")


def make_scheme(name: str, vocab_size: int, **opts) -> KGW | Unigram:
    """Build a scheme by name: ``kgw`` (lefthash), ``kgw-selfhash``, ``sweet`` or ``unigram``."""
    name = name.lower()
    if name in ("kgw", "kgw-lefthash", "lefthash"):
        return KGW(vocab_size, **opts)
    if name in ("kgw-selfhash", "selfhash"):
        return KGW(vocab_size, seeding="selfhash", **opts)
    if name == "sweet":
        return SWEET(vocab_size, **opts)
    if name == "unigram":
        return Unigram(vocab_size, **opts)
    raise ValueError(f"unknown watermark scheme {name!r}; use {', '.join(SCHEME_NAMES)}")


__all__ = ["KGW", "SCHEME_NAMES", "SWEET", "UNIGRAM_OFFICIAL", "Detection", "Unigram", "make_scheme", "max_window_z",
           "p_value", "token_entropies", "unigram_dynamic_threshold", "z_score"]
