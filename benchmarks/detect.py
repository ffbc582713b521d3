"""Detection throughput: carelab's batched KGW detector vs transformers' WatermarkDetector on the same ids.

Claim measured: identical z-scores, and at least 10x the throughput. transformers draws one green list
(a ``torch.randperm`` of the vocabulary) for every distinct n-gram of every sequence (its LRU cache is
keyed by tensors, so it never hits); carelab draws one per distinct seed for the whole batch and keeps
them in a bit-packed LRU cache across calls. Two settings are timed:

* cold: one batch, fresh detector (no cache from earlier calls);
* stream: the same detector object scores several batches in a row, as a detection service would.

Token ids: by default Zipf-distributed ids over SmolLM2's 49,152-token vocabulary (code is Zipfian);
``--from runs/.../generations.jsonl`` uses real generated code instead (tokenized with SmolLM2).

    python benchmarks/detect.py --sequences 64 --length 200 --batches 4
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
    ap.add_argument("--draw-threads", type=int, default=None, help="carelab's green-list threads (default <= 4)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import scipy.stats  # noqa: F401 - one-time import cost is not detection throughput
    from transformers import LlamaConfig, WatermarkDetector, WatermarkingConfig

    from carelab.watermark.schemes import KGW

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

    # one-time process warm-up (imports, allocator, thread pool) on unrelated ids, for both detectors
    warm = zipf_ids(2, 20, args.vocab, seed=999)
    warm[warm == args.vocab - 1] = 0
    hf(torch.tensor(warm), return_dict=True)
    KGW(args.vocab, seeding=args.seeding, threads=args.draw_threads).detect_batch(warm.tolist())

    t0 = time.perf_counter()
    hf_z = [hf(torch.tensor(b), return_dict=True).z_score for b in batches]
    t_hf = time.perf_counter() - t0

    ours = KGW(args.vocab, seeding=args.seeding, threads=args.draw_threads)
    t0 = time.perf_counter()
    cold = ours.detect_batch(batches[0].tolist())
    t_cold = time.perf_counter() - t0
    t_hf_first = None
    if len(batches) > 1:
        t0 = time.perf_counter()
        hf(torch.tensor(batches[0]), return_dict=True)
        t_hf_first = time.perf_counter() - t0
    ours_stream = KGW(args.vocab, seeding=args.seeding, threads=args.draw_threads)
    t0 = time.perf_counter()
    our_z = [[d.z for d in ours_stream.detect_batch(b.tolist())] for b in batches]
    t_stream = time.perf_counter() - t0

    max_diff = max(float(np.max(np.abs(np.asarray(o) - h))) for o, h in zip(our_z, hf_z, strict=True))
    assert np.allclose([d.z for d in cold], hf_z[0], atol=1e-9)
    tokens = sum(b.size for b in batches)
    first = t_hf_first if t_hf_first is not None else t_hf
    print(f"ids: {'real generations' if args.from_path else 'Zipf'}; {len(batches)} batch(es) of "
          f"{batches[0].shape[0]} x {args.length} tokens; vocab {args.vocab}; seeding {args.seeding}")
    print("| setting | transformers s | carelab s | tokens/s transformers | tokens/s carelab | ratio |")
    print("|---|---|---|---|---|---|")
    n0 = batches[0].size
    print(f"| cold, one batch | {first:.2f} | {t_cold:.2f} | {n0 / first:.0f} | {n0 / t_cold:.0f} | "
          f"{first / t_cold:.1f}x |")
    print(f"| stream, {len(batches)} batches | {t_hf:.2f} | {t_stream:.2f} | {tokens / t_hf:.0f} | "
          f"{tokens / t_stream:.0f} | {t_hf / t_stream:.1f}x |")
    print(f"max |z difference| = {max_diff:.2e} (identical z-scores: {max_diff < 1e-9})")
    print(f"ratio (stream) = {t_hf / t_stream:.1f}x; ratio (cold) = {first / t_cold:.1f}x")


if __name__ == "__main__":
    main()
