"""Detection throughput: carelab's batched KGW detector vs transformers' WatermarkDetector on the same ids.

Claim measured: identical z-scores, and at least 10x the throughput. transformers draws one green list
(a ``torch.randperm`` of the vocabulary) for every scored token (its LRU cache is keyed by tensors, so it
never hits); carelab answers each distinct seed once per batch and reads one bit per token without
drawing the permutation (it replays the first γV steps of torch's shuffle), caching verdicts across
calls. Both sides run in the same process, round robin, so load on a shared machine hits both alike.
Settings timed:

* cold: one batch, fresh detector (no cache from earlier calls);
* stream: the same detector object scores several batches in a row, as a detection service would;
* Unigram: carelab's Unigram detector on the same batches (transformers has none; the ratio is against
  its KGW detector, for scale).

Token ids: by default Zipf-distributed ids over SmolLM2's 49,152-token vocabulary (code is Zipfian);
``--from runs/.../generations.jsonl`` uses real generated code instead (tokenized with SmolLM2).

    python benchmarks/detect.py --sequences 64 --length 200 --batches 4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def zipf_ids(n: int, length: int, vocab: int, seed: int, a: float = 1.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(a, size=(n, length)) - 1
    perm = np.random.default_rng(12345).permutation(vocab)  # fixed rank -> id map across batches
    return perm[np.clip(ranks, 0, vocab - 1)]


def ids_from_generations(path: str, length: int, vocab: int) -> list[np.ndarray]:
    from carelab.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                ids = tok(json.loads(line)["raw"], add_special_tokens=False)["input_ids"][:length]
                if len(ids) == length:
                    rows.append(np.asarray(ids))
    if not rows:
        raise SystemExit(f"{path}: no generation with {length} tokens")
    return [np.stack(rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=64, help="sequences per batch")
    ap.add_argument("--length", type=int, default=200, help="tokens per sequence")
    ap.add_argument("--batches", type=int, default=4, help="batches in the stream setting")
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--seeding", default="lefthash", choices=["lefthash", "selfhash"])
    ap.add_argument("--from", dest="from_path", default=None, help="generations.jsonl to take real ids from")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (both detectors)")
    ap.add_argument("--draw-threads", type=int, default=1, help="carelab's threads for new seeds")
    ap.add_argument("--repeats", type=int, default=3, help="round-robin repeats (ratios per repeat, median shown)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import scipy.stats  # noqa: F401 - one-time import cost is not detection throughput
    from transformers import LlamaConfig, WatermarkDetector, WatermarkingConfig

    from carelab.watermark.schemes import KGW, Unigram

    if args.from_path:
        batches = ids_from_generations(args.from_path, args.length, args.vocab)
    else:
        batches = [zipf_ids(args.sequences, args.length, args.vocab, seed=b) for b in range(args.batches)]
    # bos outside the ids' range so transformers does not strip a first token
    cfg = LlamaConfig(vocab_size=args.vocab, bos_token_id=args.vocab - 1, hidden_size=8, num_hidden_layers=1,
                      num_attention_heads=1, intermediate_size=8)
    for b in batches:
        b[b == args.vocab - 1] = 0
    wc = WatermarkingConfig(greenlist_ratio=0.25, bias=2.0, hashing_key=15485863, seeding_scheme=args.seeding)
    hf = WatermarkDetector(cfg, "cpu", wc)

    def ours() -> KGW:
        return KGW(args.vocab, seeding=args.seeding, threads=args.draw_threads)

    # one-time process warm-up (imports, allocator, the fast path's agreement check) on unrelated ids
    warm = zipf_ids(2, 20, args.vocab, seed=999)
    warm[warm == args.vocab - 1] = 0
    hf(torch.tensor(warm), return_dict=True)
    ours().detect_batch(warm.tolist())

    cold, stream, uni = [], [], []
    hf_z = our_z = None
    for _ in range(args.repeats):  # round robin: contention on a shared machine hits both sides alike
        t_hf = []
        hf_z = []
        for b in batches:
            t0 = time.perf_counter()
            hf_z.append(hf(torch.tensor(b), return_dict=True).z_score)
            t_hf.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        first = ours().detect_batch(batches[0].tolist())
        t_cold = time.perf_counter() - t0
        assert np.allclose([d.z for d in first], hf_z[0], atol=1e-9)
        detector = ours()
        t0 = time.perf_counter()
        our_z = [[d.z for d in detector.detect_batch(b.tolist())] for b in batches]
        t_stream = time.perf_counter() - t0
        unigram = Unigram(args.vocab)  # its one green list is drawn once, at construction
        t0 = time.perf_counter()
        for b in batches:
            unigram.detect_batch(b.tolist())
        t_uni = time.perf_counter() - t0
        cold.append((t_hf[0], t_cold))
        stream.append((sum(t_hf), t_stream))
        uni.append((sum(t_hf), t_uni))

    max_diff = max(float(np.max(np.abs(np.asarray(o) - h))) for o, h in zip(our_z, hf_z, strict=True))
    tokens = sum(b.size for b in batches)
    n0 = batches[0].size
    print(f"ids: {'real generations' if args.from_path else 'Zipf'}; {len(batches)} batch(es) of "
          f"{batches[0].shape[0]} x {args.length} tokens; vocab {args.vocab}; seeding {args.seeding}; "
          f"{args.repeats} round-robin repeats, median shown")
    print("| setting | transformers s | carelab s | tokens/s transformers | tokens/s carelab | ratio (median) | "
          "ratio (min) |")
    print("|---|---|---|---|---|---|---|")
    for label, pairs, n in [("KGW cold, one batch", cold, n0), (f"KGW stream, {len(batches)} batches", stream, tokens),
                            (f"Unigram, {len(batches)} batches (vs transformers' KGW)", uni, tokens)]:
        ratios = [h / o for h, o in pairs]
        h, o = float(np.median([p[0] for p in pairs])), float(np.median([p[1] for p in pairs]))
        print(f"| {label} | {h:.2f} | {o:.3f} | {n / h:.0f} | {n / o:.0f} | {np.median(ratios):.1f}x | "
              f"{min(ratios):.1f}x |")
    print(f"max |z difference| = {max_diff:.2e} (identical z-scores: {max_diff < 1e-9})")


if __name__ == "__main__":
    main()
