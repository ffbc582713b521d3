"""Optimizer step time: LoRA-Pro (efficient, full) vs plain AdamW on one LoRA model, and vs PyPI lora-pro-adamw.

Claims checked (issues 6 and 16): LoRA-Pro efficient ≤ 1.15× AdamW's step time (wall and CPU time, one
thread for both, round-robin in one process; also with ``fused=True`` on both sides), its update equals
the original per-layer closed form fed to torch's AdamW, optimizer-state bytes vs AdamW and vs full
fine-tuning; and ≤ 1.0× the independent `lora-pro-adamw` package's time, with the same update where
their definitions agree (efficient mode: AdamW on the adjusted factor gradients).

The peer is installed only in its own environment (never in carelab's), which sees carelab's
packages through a .pth file::

    python3.11 -m venv /tmp/lorapro-peer
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \\
        > /tmp/lorapro-peer/lib/python3.11/site-packages/_carelab_main.pth
    /tmp/lorapro-peer/bin/pip install --no-deps lora-pro-adamw==0.2.1

    .venv/bin/python benchmarks/lorapro_step.py [--model smollm2-135m-instruct] [--peer-python /tmp/lorapro-peer/bin/python]

Without the peer environment the peer comparison is skipped with a message. Timings are medians of
``--repeats`` optimizer steps on fixed, real gradients (one forward/backward of a random batch).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def build(model_spec: str, rank: int, alpha: float, seed: int = 0):
    """The LoRA model (B drawn non-zero, std 0.05, so every LoRA-Pro branch is active and BᵀB ≫ the peer's fixed 1e-6 jitter) and a batch."""
    from peft import LoraConfig, get_peft_model

    from carelab.models import load_model

    model, tok = load_model(model_spec, trainable=True)
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    gen = torch.Generator().manual_seed(seed)
    return model, tok, gen


def real_grads(model, tok, gen, batch: int, seq: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, len(tok) - 1, (batch, seq), generator=gen)
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def set_grads(model, grads: dict[str, torch.Tensor]) -> None:
    for n, p in model.named_parameters():
        if n in grads:
            p.grad = grads[n].clone()


def time_steps(model, opt, grads, repeats: int, warmup: int = 3) -> float:
    """Median ms of one optimizer step (fresh copies of the same gradients before each step)."""
    return time_interleaved(model, {"x": opt}, grads, repeats, warmup)["x"]


def time_interleaved(model, opts: dict, grads, repeats: int, warmup: int = 3,
                     cpu: dict[str, float] | None = None, models: dict | None = None) -> dict[str, float]:
    """Median ms per optimizer, measured round-robin so load on a shared machine hits all alike.

    ``cpu``, if given, receives the median CPU time (``time.thread_time``, this thread only) per step:
    on a shared machine it is far less affected by other processes than the wall clock. ``models`` maps
    an optimizer's name to its own model where it must not share ``model``.
    """
    times: dict[str, list[float]] = {k: [] for k in opts}
    cpu_times: dict[str, list[float]] = {k: [] for k in opts}
    for i in range(warmup + repeats):
        for name, opt in opts.items():
            set_grads((models or {}).get(name, model), grads)
            c0, t0 = time.thread_time(), time.perf_counter()
            opt.step()
            dt, dc = time.perf_counter() - t0, time.thread_time() - c0
            if i >= warmup:
                times[name].append(dt)
                cpu_times[name].append(dc)
    if cpu is not None:
        cpu.update({k: 1000 * statistics.median(v) for k, v in cpu_times.items()})
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def state_bytes(opt) -> int:
    """Persistent optimizer state: every state tensor, each storage counted once (LoRA-Pro's are views)."""
    seen, total = set(), 0
    for st in opt.state.values():
        for v in st.values():
            if torch.is_tensor(v) and v.dim() > 0:
                key = v.untyped_storage().data_ptr()
                if key not in seen:
                    seen.add(key)
                    total += v.untyped_storage().nbytes()
    return total


def work_bytes(opt) -> int:
    """Reused work buffers of LoRAProAdamW's batched path (not state; freed with the optimizer)."""
    return sum(t.numel() * t.element_size() for buf in getattr(opt, "_buffers", {}).values()
               for t in buf.tensors.values())


def lora_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def update_after(model, opt, grads, steps: int) -> dict[str, torch.Tensor]:
    before = lora_state(model)
    for _ in range(steps):
        set_grads(model, grads)
        opt.step()
    return {n: p.detach() - before[n] for n, p in model.named_parameters() if p.requires_grad}


def rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a)
    den = sum(float(b[k].double().pow(2).sum()) for k in a)
    return (num / den) ** 0.5 if den > 0 else float("nan")


def peer_worker(payload_path: str, out_path: str) -> None:
    """Runs inside the peer environment: time lora-pro-adamw and record its updates."""
    from lora_pro import LoRAProAdamW as PeerAdamW

    cfg = torch.load(payload_path, weights_only=False)
    torch.set_num_threads(cfg["threads"])
    model, _, _ = build(cfg["model"], cfg["rank"], cfg["alpha"])
    model.load_state_dict(cfg["state"], strict=False)
    start = lora_state(model)
    result: dict = {"version": __import__("importlib.metadata").metadata.version("lora-pro-adamw")}
    for mode in ("efficient", "full"):
        kw = dict(lr=cfg["lr"], weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, lorapro_mode=mode)
        if mode == "efficient":
            kw["efficient_solver"] = "eig"
        model.load_state_dict(start, strict=False)
        result[f"{mode}_updates"] = update_after(model, PeerAdamW(model, **kw), cfg["grads"], cfg["compare_steps"])
        model.load_state_dict(start, strict=False)
        result[f"{mode}_ms"] = time_steps(model, PeerAdamW(model, **kw), cfg["grads"], cfg["repeats"])
    # AdamW timed in the peer process too, so the peer ratio does not mix two processes' conditions
    model.load_state_dict(start, strict=False)
    adamw = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"], weight_decay=0.0)
    result["adamw_ms"] = time_steps(model, adamw, cfg["grads"], cfg["repeats"])
    torch.save(result, out_path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--compare-steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--peer-python", default=os.environ.get("LORAPRO_PEER_PYTHON", "/tmp/lorapro-peer/bin/python"))
    ap.add_argument("--peer-worker", nargs=2, metavar=("PAYLOAD", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    args = ap.parse_args()
    if args.peer_worker:
        peer_worker(*args.peer_worker)
        return

    from carelab.lora.lorapro import LoRAProAdamW, find_lora_pairs

    torch.set_num_threads(args.threads)
    model, tok, gen = build(args.model, args.rank, args.alpha)
    grads = real_grads(model, tok, gen, args.batch, args.seq)
    start = lora_state(model)
    params = [p for p in model.parameters() if p.requires_grad]
    n_pairs = len(find_lora_pairs(model))
    print(f"model {args.model}: {n_pairs} LoRA layers, r={args.rank}, {sum(p.numel() for p in params):,} "
          f"trainable parameters, torch threads {args.threads}")

    def fresh(kind: str):
        model.load_state_dict(start, strict=False)
        if kind == "adamw":
            return torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        return LoRAProAdamW(model, lr=args.lr, weight_decay=0.0, mode=kind)

    results: dict = {"model": args.model, "rank": args.rank, "pairs": n_pairs, "threads": args.threads}
    # each optimizer steps the same parameters in turn; all see identical gradients, only time matters here
    kinds = {"adamw": ("adamw", {}), "efficient": ("efficient", {}), "full": ("full", {}),
             "adamw_fused": ("adamw", {"fused": True}), "efficient_fused": ("efficient", {"fused": True})}

    # the two efficient LoRAProAdamW each re-home the LoRA factors into their own stacked storage, so the
    # second one steps its own copy of the model (on one model each would rebuild its stacks every step)
    models = {"efficient_fused": copy.deepcopy(model)}

    def fresh_kind(name: str):
        kind, extra = kinds[name]
        own = models.get(name, model)
        own.load_state_dict(start, strict=False)
        if kind == "adamw":
            return torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, **extra)
        return LoRAProAdamW(own, lr=args.lr, weight_decay=0.0, mode=kind, **extra)

    opts = {name: fresh_kind(name) for name in kinds}
    cpu: dict[str, float] = {}
    for kind, ms in time_interleaved(model, opts, grads, args.repeats, cpu=cpu, models=models).items():
        results[f"{kind}_ms"] = ms
        results[f"{kind}_cpu_ms"] = cpu[kind]
        results[f"{kind}_state_bytes"] = state_bytes(opts[kind])
        results[f"{kind}_work_bytes"] = work_bytes(opts[kind])
    # full fine-tuning's AdamW state: two fp32 moments per weight of the adapted layers / of the whole model
    adapted = sum(p.module.get_base_layer().weight.numel() for p in find_lora_pairs(model))
    results["full_ft_adapted_state_bytes"] = 2 * 4 * adapted
    results["full_ft_model_state_bytes"] = 2 * 4 * sum(p.numel() for n, p in model.named_parameters()
                                                       if "lora_" not in n)
    ours_updates = {kind: update_after(model, fresh(kind), grads, args.compare_steps) for kind in ("efficient", "full")}
    # the batched path against the original per-layer closed form fed to torch's AdamW (same start, same grads)
    from carelab.lora.lorapro import _adjust_gradients_reference

    model.load_state_dict(start, strict=False)
    ref_opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    before = lora_state(model)
    for _ in range(args.compare_steps):
        set_grads(model, grads)
        for pair in find_lora_pairs(model):
            pair.A.grad, pair.B.grad = _adjust_gradients_reference(pair.A, pair.B, pair.A.grad, pair.B.grad,
                                                                   pair.scaling)
        ref_opt.step()
    reference = {n: p.detach() - before[n] for n, p in model.named_parameters() if p.requires_grad}
    results["update_rel_diff_vs_reference"] = rel_diff(ours_updates["efficient"], reference)

    peer_py = Path(args.peer_python)
    if peer_py.exists():
        with tempfile.TemporaryDirectory() as tmp:
            payload, out = Path(tmp) / "payload.pt", Path(tmp) / "peer.pt"
            torch.save({"model": args.model, "rank": args.rank, "alpha": args.alpha, "state": start, "grads": grads,
                        "lr": args.lr, "repeats": args.repeats, "compare_steps": args.compare_steps,
                        "threads": args.threads}, payload)
            proc = subprocess.run([str(peer_py), __file__, "--peer-worker", str(payload), str(out)],
                                  capture_output=True, text=True)
            if proc.returncode != 0 or not out.exists():
                print(f"peer run failed; skipping the peer comparison:\n{proc.stderr[-2000:]}")
            else:
                peer = torch.load(out, weights_only=False)
                results["peer_version"] = peer["version"]
                results["peer_process_adamw_ms"] = peer["adamw_ms"]
                for mode in ("efficient", "full"):
                    results[f"peer_{mode}_ms"] = peer[f"{mode}_ms"]
                    results[f"update_rel_diff_{mode}"] = rel_diff(ours_updates[mode], peer[f"{mode}_updates"])
    else:
        print(f"lora-pro-adamw environment not found at {peer_py}: skipping the peer comparison "
              "(create it as the module docstring shows, or pass --peer-python).")

    a, ac = results["adamw_ms"], results["adamw_cpu_ms"]
    af, afc = results["adamw_fused_ms"], results["adamw_fused_cpu_ms"]
    mb = 1 / 2**20
    rows = [
        ("AdamW (torch, default for-loop)", "adamw", a, ac),
        ("LoRA-Pro efficient (carelab)", "efficient", a, ac),
        ("LoRA-Pro full (carelab)", "full", a, ac),
        ("AdamW (torch, fused=True)", "adamw_fused", af, afc),
        ("LoRA-Pro efficient (carelab, fused=True)", "efficient_fused", af, afc),
    ]
    print(f"\n| optimizer | step ms (median of {args.repeats}) | × AdamW wall | CPU ms | × AdamW CPU | "
          "optimizer state MiB | work buffers MiB |\n|---|---|---|---|---|---|---|")
    for name, key, base, base_cpu in rows:
        print(f"| {name} | {results[key + '_ms']:.2f} | {results[key + '_ms'] / base:.2f} | "
              f"{results[key + '_cpu_ms']:.2f} | {results[key + '_cpu_ms'] / base_cpu:.2f} | "
              f"{results[key + '_state_bytes'] * mb:.1f} | {results[key + '_work_bytes'] * mb:.1f} |")
    if "peer_efficient_ms" in results:
        for mode in ("efficient", "full"):
            print(f"| lora-pro-adamw {results['peer_version']} {mode} (own process) | {results[f'peer_{mode}_ms']:.2f} | "
                  f"{results[f'peer_{mode}_ms'] / results['peer_process_adamw_ms']:.2f} | – | – | – | – |")
    print(f"\nfull fine-tuning AdamW state: {results['full_ft_adapted_state_bytes'] * mb:.1f} MiB for the "
          f"{n_pairs} adapted weight matrices, {results['full_ft_model_state_bytes'] * mb:.1f} MiB for the whole model")
    print(f"efficient vs AdamW: {results['efficient_ms'] / a:.2f}× wall, {results['efficient_cpu_ms'] / ac:.2f}× CPU "
          f"(goal ≤ 1.15×); with fused=True on both: {results['efficient_fused_ms'] / af:.2f}× wall, "
          f"{results['efficient_fused_cpu_ms'] / afc:.2f}× CPU")
    print(f"efficient update after {args.compare_steps} steps vs the per-layer reference closed form + torch AdamW: "
          f"{results['update_rel_diff_vs_reference']:.2e} (relative L2)")
    if "peer_efficient_ms" in results:
        for mode in ("efficient", "full"):
            # normalised by each process's own AdamW time, so machine load in either process cancels
            results[f"ratio_{mode}_vs_peer"] = (results[f"{mode}_ms"] / a) / (
                results[f"peer_{mode}_ms"] / results["peer_process_adamw_ms"])
            print(f"{mode} vs lora-pro-adamw {mode}: {results[f'ratio_{mode}_vs_peer']:.2f}× (goal ≤ 1.0×); "
                  f"update after {args.compare_steps} steps differs by "
                  f"{results[f'update_rel_diff_{mode}']:.2e} (relative L2)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
