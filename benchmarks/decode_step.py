"""Cost of one decoding step of the continuous engine when each row is fed several tokens (drafts to check).

Why: drafted tokens pay off only while checking them costs less than the steps they save. This times one step
over a preallocated KV cache (the engine's own layers) for 1, 3, 5, … tokens per row, with transformers' SDPA
(which copies every row's keys and values per query head when a row has more than one query token) and with
the engine's packed grouped-query SDPA, and prints the cost per fed token. Compare with the tokens kept per step
that `carelab care eval` reaches (docs/care-eval.md) to see which draft length is worth it.

    python benchmarks/decode_step.py                               # 10 rows x 1000 cached tokens, 2 threads
    python benchmarks/decode_step.py --rows 16 --tokens 1,2,3 --threads 1
"""

from __future__ import annotations

import argparse
import time


def step_ms(model, layers_kv, rows: int, context: int, fed: int, repeats: int) -> float:
    """Fastest of ``repeats`` timings (ms) of one forward of ``fed`` tokens per row over ``context`` cached tokens."""
    import torch
    from transformers import DynamicCache

    from carelab.generation import _slack_layer_class

    best = float("inf")
    for _ in range(repeats):
        cache = DynamicCache()
        cache.layers = [_slack_layer_class().stacked([(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))],
                                                     context, rows) for k, v in layers_kv]
        mask = torch.ones(rows, context + fed, dtype=torch.long)
        mask[: rows // 2, : context // 10] = 0  # some rows left-padded, as in a real batch
        positions = mask[:, :context].sum(1, keepdim=True) + torch.arange(fed)
        ids = torch.randint(0, model.config.vocab_size, (rows, fed))
        start = time.perf_counter()
        model(input_ids=ids, cache=cache, attention_mask=mask, position_ids=positions, use_cache=True,
              logits_to_keep=fed)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=10, help="rows in flight")
    ap.add_argument("--context", type=int, default=1000, help="cached tokens per row (a cpu-full prompt is ~830)")
    ap.add_argument("--tokens", default="1,3,5,9", help="tokens fed per row and step (1 + drafts), comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from carelab.generation import _packed_gqa_attention
    from carelab.models import load_model
    from carelab.report import markdown_table

    torch.set_num_threads(args.threads)
    model, _ = load_model(args.model)
    rows = []
    with torch.inference_mode():
        out = model(input_ids=torch.randint(0, model.config.vocab_size, (1, args.context)), use_cache=True,
                    logits_to_keep=1)
        layers_kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        for fed in (int(t) for t in args.tokens.split(",")):
            copied = step_ms(model, layers_kv, args.rows, args.context, fed, args.repeats)
            with _packed_gqa_attention(model):
                packed = step_ms(model, layers_kv, args.rows, args.context, fed, args.repeats)
            rows.append({"tokens per row": fed, "ms, KV copied per head (transformers)": copied,
                         "ms, packed heads (engine)": packed, "packed: ms per fed token": packed / fed,
                         "speed-up": copied / packed})
    print(f"{args.model}, {args.rows} rows x {args.context} cached tokens, {args.threads} threads, "
          f"best of {args.repeats}\n")
    print(markdown_table(rows, digits=1))


if __name__ == "__main__":
    main()
