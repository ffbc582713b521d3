"""KGW (lefthash/selfhash) and Unigram watermarks: one object owns the seeding, the processor and the detector.

Why one object: a watermark is only detectable when generator and detector agree on the vocabulary
size, gamma, the key and the seeding scheme. Both ``logits_processor()`` and ``detect()`` call the
same ``green_ids``/seed functions, so they cannot drift apart.

``KGW(seeding="lefthash")`` reproduces transformers' ``WatermarkLogitsProcessor``/``WatermarkDetector``
bit for bit on CPU (same seed formula, same ``torch.randperm`` on a CPU generator, same scored n-grams),
which the tests check. One detail inherited from transformers: ``lefthash`` seeds on the last token
only, whatever ``context_width`` is; ``context_width`` then only delays the first scored token.
Green lists are always drawn on a CPU generator, so they are the same on every device (transformers
draws on the model's device, and CUDA ``randperm`` differs from CPU).

``Unigram`` follows Zhao et al. (2023): one fixed green list, seeded by the first four bytes
(little-endian) of sha256 of the key as a 64-bit integer, shuffled with numpy's ``default_rng``.

Detection is vectorised: ``detect_batch`` draws each needed green list once per batch (and keeps an
LRU cache across calls), then counts hits with array operations.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TABLE_SIZE = 1_000_003  # transformers' selfhash lookup table size
SELFHASH_CANDIDATES = 40  # transformers (and lm-watermarking) score only the top-40 candidates in selfhash


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


def _detections(green: np.ndarray, scored: np.ndarray, gamma: float, threshold: float) -> list[Detection]:
    z = z_score(green, scored, gamma)
    p = np.where(scored > 0, p_value(z), 1.0)
    return [Detection(float(zi), float(pi), int(gi), int(ti), bool(zi > threshold))
            for zi, pi, gi, ti in zip(z, p, green, scored, strict=True)]


def _check_common(vocab_size: int, gamma: float) -> None:
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be in (0, 1), got {gamma}")


class _Scheme:
    """Shared detection plumbing; subclasses define which tokens are scored and which are green."""

    vocab_size: int
    gamma: float
    z_threshold: float
    ignore_repeated_ngrams: bool

    @property
    def greenlist_size(self) -> int:
        return int(self.vocab_size * self.gamma)

    def detect(self, token_ids: Sequence[int]) -> Detection:
        """z-test on one token sequence (pass only the text to test, e.g. the completion, without a prompt)."""
        return self.detect_batch([token_ids])[0]

    def detect_batch(self, sequences: Sequence[Sequence[int]]) -> list[Detection]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token id out of range [0, {self.vocab_size}): min {ids.min()}, max {ids.max()}; "
                             "generator and detector must use the same vocab_size (model.config.vocab_size)")


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
        cache_size: green lists kept between calls (bit-packed; each costs a ``torch.randperm``).
        threads: threads drawing a batch's missing green lists in ``detect_batch`` (default: up to 4).

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
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()  # seed -> packed mask
        self._cache_size = int(cache_size)
        self.threads = int(threads) if threads is not None else min(4, os.cpu_count() or 1)
        self._table: np.ndarray | None = None

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

    def seed(self, window: Sequence[int]) -> int:
        """Generator seed for a window of token ids.

        lefthash: ``window`` is the context and only its last token counts. selfhash: ``window`` ends with
        the candidate token; seed = min over the window of key*(T[w]+1)*(T[candidate]+1) in int64.
        """
        window = list(window)[-self.context_width:]
        if not window:
            raise ValueError("seeding needs at least one token")
        if self.seeding == "lefthash":
            s = self.hash_key * int(window[-1])
        else:
            t = self.fixed_table
            a = t[np.asarray(window, dtype=np.int64) % TABLE_SIZE] + 1
            b = t[int(window[-1]) % TABLE_SIZE] + 1
            with np.errstate(over="ignore"):  # int64 wrap-around, exactly as torch computes it
                s = int((np.int64(self.hash_key) * a * b).min())
        return s % (2**64 - 1)

    def _packed_for_seed(self, seed: int) -> np.ndarray:
        """Bit-packed green mask for one seed (LRU-cached; 1/8 of a byte per vocabulary entry)."""
        packed = self._cache.get(seed)
        if packed is not None:
            self._cache.move_to_end(seed)
            return packed
        import torch

        g = torch.Generator(device="cpu")
        g.manual_seed(seed)
        perm = torch.randperm(self.vocab_size, generator=g).numpy()
        mask = np.zeros(self.vocab_size, dtype=bool)
        mask[perm[: self.greenlist_size]] = True
        packed = np.packbits(mask)
        self._cache[seed] = packed
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return packed

    def _prefetch(self, seeds: list[int]) -> None:
        """Draw the missing green lists of a batch on ``threads`` threads (``torch.randperm`` releases the GIL)."""
        missing = [s for s in seeds if s not in self._cache]
        if self.threads <= 1 or len(missing) < 64:
            return
        from concurrent.futures import ThreadPoolExecutor

        import torch

        def draw(seed: int) -> tuple[int, np.ndarray]:
            g = torch.Generator(device="cpu")
            g.manual_seed(seed)
            perm = torch.randperm(self.vocab_size, generator=g).numpy()
            mask = np.zeros(self.vocab_size, dtype=bool)
            mask[perm[: self.greenlist_size]] = True
            return seed, np.packbits(mask)

        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for seed, packed in pool.map(draw, missing[: self._cache_size]):
                self._cache[seed] = packed
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _green_mask_for_seed(self, seed: int) -> np.ndarray:
        return np.unpackbits(self._packed_for_seed(seed), count=self.vocab_size).astype(bool)

    def _is_green(self, seed: int, targets: np.ndarray) -> np.ndarray:
        packed = self._packed_for_seed(seed)
        return ((packed[targets >> 3] >> (7 - (targets & 7))) & 1).astype(bool)

    def green_mask(self, window: Sequence[int]) -> np.ndarray:
        """Green mask (bool, vocab-sized) for a seeding window (see ``seed``)."""
        return self._green_mask_for_seed(self.seed(window))

    def green_ids(self, window: Sequence[int]) -> np.ndarray:
        """Green token ids (sorted) for a seeding window."""
        return np.flatnonzero(self.green_mask(window))

    # ----- generation -----
    def logits_processor(self):
        """A transformers ``LogitsProcessor`` that adds ``delta`` to green logits (use with ``generate``)."""
        return _as_logits_processor(_KGWProcessor(self))

    # ----- detection -----
    def _windows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(seeding windows, targets) for every scored position, as transformers' detector forms them."""
        w = self.context_width
        if self.seeding == "lefthash":
            n = w + 1  # n-gram = context + target; the first scored token is at index w
            if len(ids) < n:
                return np.zeros((0, n), dtype=np.int64), np.zeros(0, dtype=np.int64)
            grams = np.lib.stride_tricks.sliding_window_view(ids, n)
            return grams, grams[:, -1]
        n = w  # selfhash window includes the target itself
        if len(ids) < n:
            return np.zeros((0, n), dtype=np.int64), np.zeros(0, dtype=np.int64)
        grams = np.lib.stride_tricks.sliding_window_view(ids, n)
        return grams, grams[:, -1]

    def _seeds(self, grams: np.ndarray) -> np.ndarray:
        """Vectorised ``seed`` for many n-grams (uint64 semantics preserved via Python ints where needed)."""
        if self.seeding == "lefthash":
            return np.array([(self.hash_key * int(p)) % (2**64 - 1) for p in grams[:, -2]], dtype=object)
        t = self.fixed_table
        a = t[grams % TABLE_SIZE] + 1
        b = t[grams[:, -1] % TABLE_SIZE][:, None] + 1
        with np.errstate(over="ignore"):
            m = (np.int64(self.hash_key) * a * b).min(axis=1)
        return np.array([int(x) % (2**64 - 1) for x in m], dtype=object)

    def detect_batch(self, sequences: Sequence[Sequence[int]]) -> list[Detection]:
        """z-tests for many sequences; each distinct green list is drawn once for the whole batch."""
        per_seq: list[tuple[np.ndarray, np.ndarray]] = []
        all_grams = []
        for seq in sequences:
            ids = np.asarray(list(seq), dtype=np.int64)
            self._check_ids(ids)
            grams, _ = self._windows(ids)
            if self.ignore_repeated_ngrams and len(grams):
                grams = np.unique(grams, axis=0)
            per_seq.append(grams)
            all_grams.append(grams)
        green = np.zeros(len(per_seq), dtype=np.int64)
        scored = np.array([len(g) for g in per_seq], dtype=np.int64)
        if scored.sum() == 0:
            return _detections(green, scored, self.gamma, self.z_threshold)
        stacked = np.concatenate(all_grams, axis=0)
        owner = np.repeat(np.arange(len(per_seq)), scored)
        seeds = self._seeds(stacked)
        targets = stacked[:, -1]
        # Group positions by seed: one green list per distinct seed.
        keys, inverse = np.unique(seeds.astype(np.uint64), return_inverse=True)
        self._prefetch([int(k) for k in keys])
        hits = np.zeros(len(stacked), dtype=bool)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(keys) + 1))
        for k, key in enumerate(keys):
            rows = order[bounds[k]:bounds[k + 1]]
            hits[rows] = self._is_green(int(key), targets[rows])
        np.add.at(green, owner, hits.astype(np.int64))
        return _detections(green, scored, self.gamma, self.z_threshold)


class _KGWProcessor:
    """The processing step of ``KGW`` (wrapped into a ``transformers.LogitsProcessor`` on request)."""

    def __init__(self, scheme: KGW):
        self.scheme = scheme

    def __call__(self, input_ids, scores):
        import torch

        s = self.scheme
        if input_ids.shape[-1] < s.context_width:
            return scores
        if scores.shape[-1] < s.vocab_size:
            raise ValueError(f"logits have {scores.shape[-1]} columns but the watermark vocab_size is "
                             f"{s.vocab_size}; build the watermark with model.config.vocab_size")
        out = scores.clone()
        ctx = input_ids[:, -max(s.context_width, 1):].cpu().tolist()
        if s.seeding == "lefthash":
            masks = np.stack([s.green_mask(row) for row in ctx])
            bias = torch.from_numpy(masks).to(out.device, out.dtype) * s.delta
            out[:, : s.vocab_size] += bias
            return out
        # selfhash: a top candidate is boosted iff it lies in the green list seeded by a window ending in itself.
        k = min(SELFHASH_CANDIDATES, s.vocab_size)
        top = torch.topk(scores[:, : s.vocab_size], k, dim=-1).indices.cpu().tolist()
        for b, row in enumerate(ctx):
            prev = row[-(s.context_width - 1):] if s.context_width > 1 else []
            for cand in top[b]:
                if s.green_mask(prev + [cand])[cand]:
                    out[b, cand] += s.delta
        return out


def _as_logits_processor(obj):
    """Wrap a callable as a real ``transformers.LogitsProcessor`` subclass instance."""
    from transformers import LogitsProcessor

    class _Wrapped(LogitsProcessor):
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, input_ids, scores):
            return self.inner(input_ids, scores)

    return _Wrapped(obj)


def _unigram_seed(key: int) -> int:
    return int.from_bytes(hashlib.sha256(np.int64(key).tobytes()).digest()[:4], "little")


class Unigram(_Scheme):
    """Zhao et al.'s Unigram watermark: one fixed green list for every position.

    ``ignore_repeated_ngrams`` counts each distinct token once (their unique-token detector).

    >>> wm = Unigram(vocab_size=100)
    >>> int(wm.green_mask.sum())
    25
    """

    def __init__(self, vocab_size: int, gamma: float = 0.25, delta: float = 2.0, key: int = 0,
                 z_threshold: float = 3.0, ignore_repeated_ngrams: bool = False):
        _check_common(vocab_size, gamma)
        self.vocab_size, self.gamma, self.delta, self.key = int(vocab_size), float(gamma), float(delta), int(key)
        self.z_threshold, self.ignore_repeated_ngrams = float(z_threshold), bool(ignore_repeated_ngrams)
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

    def detect_batch(self, sequences: Sequence[Sequence[int]]) -> list[Detection]:
        green, scored = [], []
        for seq in sequences:
            ids = np.asarray(list(seq), dtype=np.int64)
            self._check_ids(ids)
            if self.ignore_repeated_ngrams:
                ids = np.unique(ids)
            green.append(int(self.green_mask[ids].sum()))
            scored.append(len(ids))
        return _detections(np.array(green), np.array(scored), self.gamma, self.z_threshold)


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


def make_scheme(name: str, vocab_size: int, **opts) -> KGW | Unigram:
    """Build a scheme by name: ``kgw`` (lefthash), ``kgw-selfhash`` or ``unigram``."""
    name = name.lower()
    if name in ("kgw", "kgw-lefthash", "lefthash"):
        return KGW(vocab_size, **opts)
    if name in ("kgw-selfhash", "selfhash"):
        return KGW(vocab_size, seeding="selfhash", **opts)
    if name == "unigram":
        return Unigram(vocab_size, **opts)
    raise ValueError(f"unknown watermark scheme {name!r}; use kgw, kgw-selfhash or unigram")


__all__ = ["KGW", "Detection", "Unigram", "make_scheme", "p_value", "z_score"]
