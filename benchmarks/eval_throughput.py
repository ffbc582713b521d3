"""CARE evaluation throughput: the old engine (one ``generate`` per padded batch) vs what ``care eval`` uses now.

Why: evaluation time bounds how many items a CPU run can afford, and items bound how tight the bootstrap
intervals are. Same items, same prompts (built exactly as ``care eval`` builds them), greedy decoding;
each setting runs in its own subprocess so its peak RSS is its own. Prints items/s (wall and per CPU
second, the latter robust to a shared machine), the ratio to the old engine, peak RSS, and how many
scored predictions / raw outputs differ from the old engine's (they should not, up to float rounding).
Goal: ≥ 2× items/s.

    python benchmarks/eval_throughput.py                     # 24 items (12 multi-hop + 12 counterfactual)
    python benchmarks/eval_throughput.py --n 12 --method original --configs old,new
    python benchmarks/eval_throughput.py --configs old,new,new-realloc --batch-size 16 --n 48  # + KV in place
    python benchmarks/eval_throughput.py --configs old,new,prefill-only --batch-size 16  # + the prefill bound
    python benchmarks/eval_throughput.py --configs old,new,new-no-draft,prefill-only --batch-size 16 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: name -> (continuous engine, batch size override or None for --batch-size, merge LoRA into the base,
#: one generate call per batch of each file as `care eval` did before, instead of one call per method,
#: draft tokens checked per row and step: None for the engine's default, 0 for none)
CONFIGS = {
    "old": (False, None, False, True, None),           # the eval loop before: generate per padded batch per file
    "new": (True, None, True, False, None),            # what `care eval` does now at the same --batch-size
    "new-unmerged": (True, None, False, False, None),  # attribution: without merging the LoRA
    "new-no-draft": (True, None, True, False, 0),      # attribution: without prompt-lookup drafts
    "new-blas": (True, None, True, False, None),       # attribution: linears by torch's BLAS, not oneDNN
    "new-draft2": (True, None, True, False, 2),        # up to 2 drafted tokens per row and step instead of 4
    "new-draft8": (True, None, True, False, 8),        # up to 8 drafted tokens per row and step instead of 4
    "new-b16": (True, 16, True, False, None),          # more rows in flight (continuous batching makes this cheap)
    "new-b32": (True, 32, True, False, None),          # twice the cpu presets' rows in flight: weights read once per 32
    "old-b32": (False, 32, False, True, None),         # the old loop given the same 32 rows (fairness check for new-b32)
    "new-realloc": (True, None, True, False, 0),       # attribution: KV cache re-allocated, no heap trim (no drafts)
    "prefill-only": (True, None, True, False, None),   # bound: only the engine's prompt prefills, no decoding
}
#: settings that replay the engine's KV handling before commit 5978544 (see ``replay_reallocating_cache``)
REALLOCATING = {"new-realloc"}
#: settings whose linears run on torch's BLAS (``CARELAB_LINEAR=blas``) instead of oneDNN (``carelab.onednn``)
BLAS_LINEARS = {"new-blas"}
#: settings that time the prompts' prefill alone: work every engine must do, so old wall / this wall bounds
#: the ratio any engine can reach on these items (Amdahl) while it computes every prompt token once
PREFILL_ONLY = {"prefill-only"}


def make_data(folder: Path, n: int, seed: int) -> list[str]:
    """Half multi-hop (HotpotQA-shaped, 300 words), half counterfactual (CofCA-shaped, 400 words): cpu-full's test sets."""
    from carelab.care.data import synth

    return [str(synth.write("hotpotqa", n - n // 2, seed, folder / "multihop.json", split="test", context_words=300)),
            str(synth.write("cofca", n // 2, seed, folder / "counterfactual.jsonl", split="test", context_words=400))]


def replay_reallocating_cache() -> None:
    """Make the continuous engine re-allocate its whole KV cache at every finished row and every join, without
    trimming or keeping the heap, as it did before commit 5978544 (in-place cache) and the heap trim after each
    join: the memory and time those changes bought."""
    import torch

    from carelab import generation
    from carelab.generation import _slack_layer_class

    generation.trim_heap = lambda: False
    generation.kept_heap = contextlib.nullcontext

    layer = _slack_layer_class()
    reset_to, stacked = layer.reset_to, layer.stacked.__func__

    def exact_reset_to(self, keys, values, room=None):
        self._kbuf = None  # buffers of exactly the rows held (the views keep the old storage alive until copied)
        reset_to(self, keys, values, room)

    def keep_rows(self, index, drop):
        rows = torch.tensor(index, dtype=torch.long, device=self.keys.device)
        self.reset_to(self.keys.index_select(0, rows)[:, :, drop:], self.values.index_select(0, rows)[:, :, drop:])

    layer.reset_to, layer.keep_rows = exact_reset_to, keep_rows
    layer.can_join = lambda self, new_rows, width: False
    layer.stacked = classmethod(lambda cls, parts, width, rows_capacity=0: stacked(cls, parts, width))


def worker(args: argparse.Namespace) -> None:
    """Run one setting and print a JSON line: timings, peak RSS, raw outputs and scored predictions."""
    import torch

    from carelab import onednn
    from carelab.care import format as care_format
    from carelab.care.eval import baselines
    from carelab.care.eval.harness import load_datasets, score_output
    from carelab.care.shipped import bundled_folder
    from carelab.generation import (
        GenerationSettings,
        _ContinuousGreedy,
        chat_prompt_ids,
        generate_from_ids,
        merge_adapters,
    )
    from carelab.models import context_window, load_model

    continuous, batch, merge, per_file, draft = CONFIGS[args.worker]
    if args.worker in REALLOCATING:
        replay_reallocating_cache()
    if args.worker in BLAS_LINEARS:
        os.environ[onednn.BACKEND_ENV] = "blas"
    torch.manual_seed(0)
    adapter = None if args.method != "care" else (args.adapter or str(bundled_folder()))
    model, tok = load_model(args.model, adapter=adapter, dtype=args.dtype)
    if merge:
        model = merge_adapters(model)
    max_prompt = max(64, context_window(model, tok) - args.max_new_tokens)
    items, files = [], []
    for ds in load_datasets(args.data):
        files.append(len(ds.examples))
        for ex in ds.examples:
            prepared = baselines.build_prompt(args.method, ex)
            ctx, _ = care_format.fit_context(tok, prepared.context, prepared.question, max_prompt,
                                             prepared.system_prompt)
            prepared.context = ctx
            ids = chat_prompt_ids(tok, care_format.build_messages(ctx, prepared.question, prepared.system_prompt))
            items.append((ex, prepared, ids))
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=batch or args.batch_size,
                                  continuous=continuous)
    if draft is not None:
        settings.draft_tokens = draft
    cpu0, wall0 = time.process_time(), time.perf_counter()
    prompts = [it[2] for it in items]
    if args.worker in PREFILL_ONLY:  # the prompts' prefill as the engine runs it (shared prefix once), no decode
        engine = _ContinuousGreedy(model, tok, prompts, settings, None, None)
        with torch.inference_mode(), engine.attention, onednn.onednn_linears(engine.model):
            for ids in prompts:
                engine._prefill(ids)
        raws = [""] * len(items)
    elif per_file:  # the old loop: per file, items sorted by length, one call per batch
        raws, start = [""] * len(items), 0
        for size in files:
            order = sorted(range(start, start + size), key=lambda i: len(prompts[i]))
            for b in range(0, size, settings.batch_size):
                chunk = order[b:b + settings.batch_size]
                for i, text in zip(chunk, generate_from_ids(model, tok, [prompts[i] for i in chunk], settings),
                                   strict=True):
                    raws[i] = text
            start += size
    else:
        raws = generate_from_ids(model, tok, prompts, settings)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    eos = (tok.eos_token,) if tok.eos_token else ()
    preds = [score_output(raw, ex, prep.care_style, prep.context, eos)["prediction"]
             for (ex, prep, _), raw in zip(items, raws, strict=True)]
    out_tokens = sum(len(tok.encode(r, add_special_tokens=False)) for r in raws)
    print(json.dumps({"config": args.worker, "batch": settings.batch_size, "continuous": continuous, "merged": merge,
                      "calls": "per batch per file" if per_file else "one per method",
                      "items": len(items), "wall_s": wall, "cpu_s": cpu, "out_tokens": out_tokens,
                      "prompt_tokens": sum(len(it[2]) for it in items),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "raws": raws, "predictions": preds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=24, help="items (half multi-hop, half counterfactual)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--method", default="care", help="care (bundled CARE adapter), care-prompt or original")
    ap.add_argument("--adapter", default=None, help="adapter for --method care (default: the bundled one)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-new-tokens", type=int, default=224, help="cpu-full's eval setting")
    ap.add_argument("--batch-size", type=int, default=10, help="cpu-full's eval setting")
    ap.add_argument("--configs", default="old,new", help=f"comma-separated, first is the reference: {','.join(CONFIGS)}")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per setting (1: CPU time ≈ wall time)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run the settings round-robin this many times and keep each one's fastest run "
                         "(on a shared machine other jobs' memory traffic slows decoding unevenly)")
    ap.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    ap.add_argument("--data", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        worker(args)
        return

    from carelab.report import markdown_table

    names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    if not names or names[0] in PREFILL_ONLY:
        ap.error("the first config is the reference and must generate: put prefill-only after it")
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp), args.n, args.seed)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        for name in [n for _ in range(max(1, args.repeats)) for n in names]:
            cmd = [sys.executable, __file__, "--worker", name, "--data", *data, "--method", args.method,
                   "--model", args.model, "--dtype", args.dtype, "--max-new-tokens", str(args.max_new_tokens),
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            if args.adapter:
                cmd += ["--adapter", args.adapter]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.exit(f"setting {name} failed:\n{proc.stderr[-3000:]}")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{name}: {run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s CPU", file=sys.stderr)
            if name in best and run["raws"] != best[name]["raws"]:
                print(f"{name}: outputs differ between repeats", file=sys.stderr)
            if name not in best or run["wall_s"] < best[name]["wall_s"]:
                best[name] = run
    results = [best[n] for n in names if n not in PREFILL_ONLY]
    bounds = [best[n] for n in names if n in PREFILL_ONLY]
    ref = results[0]
    rows = []
    for r in results:
        same_pred = sum(a == b for a, b in zip(r["predictions"], ref["predictions"], strict=True))
        same_raw = sum(a == b for a, b in zip(r["raws"], ref["raws"], strict=True))
        rows.append({"setting": r["config"], "engine": "continuous" if r["continuous"] else "generate/batch",
                     "calls": r["calls"], "batch": r["batch"], "LoRA merged": "yes" if r["merged"] else "no", "items": r["items"],
                     "wall s": r["wall_s"], "items/s": r["items"] / r["wall_s"],
                     "ratio (wall)": ref["wall_s"] / r["wall_s"], "items/CPU-s": r["items"] / r["cpu_s"],
                     "ratio (CPU)": ref["cpu_s"] / r["cpu_s"], "peak RSS MB": r["peak_rss_mb"],
                     "same prediction": f"{same_pred}/{r['items']}", "same raw": f"{same_raw}/{r['items']}"})
    print(f"method {args.method}, {args.n} items, max_new_tokens {args.max_new_tokens}, best of {args.repeats}, "
          f"{ref['prompt_tokens'] / ref['items']:.0f} prompt tokens/item, "
          f"{ref['out_tokens'] / ref['items']:.0f} output tokens/item (reference), threads {args.threads}\n")
    print(markdown_table(rows, digits=2))
    for bound in bounds:
        print(f"\nprefill only ({bound['items']} prompts, {bound['prompt_tokens']} tokens, no decoding): "
              f"{bound['wall_s']:.1f} s wall, {bound['cpu_s']:.1f} s CPU, peak RSS {bound['peak_rss_mb']:.0f} MB. "
              f"Bound on the ratio to {ref['config']} if decoding cost nothing: "
              f"{ref['wall_s'] / bound['wall_s']:.2f}x wall, {ref['cpu_s'] / bound['cpu_s']:.2f}x CPU. "
              + "".join(f"{r['config']} spends {bound['wall_s'] / r['wall_s']:.0%} of its wall time in prefill. "
                        for r in results[1:] if r["continuous"]))
    for r in results[1:]:
        for i, (a, b) in enumerate(zip(ref["raws"], r["raws"], strict=True)):
            if a != b:
                k = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
                print(f"{r['config']} item {i}: first difference at character {k}: "
                      f"{a[max(0, k - 40):k + 40]!r} vs {b[max(0, k - 40):k + 40]!r}")


if __name__ == "__main__":
    main()
