"""Training throughput of the shared backbone for both objectives, as a share of measured matmul peak.

Why: the sweep's cost model is C = 6·N·D; this script checks how close the training loop gets to the
machine's own dense-matmul rate (goal ≥ 40 %), so compute numbers translate into wall-clock honestly.
Peak = best of several large square matmuls (same dtype, same threads, same device) measured right
before each objective. Achieved FLOP/s = tokens/s × model.flops_per_token(T) (6·matmul params +
12·L·d·T attention, forward + backward). Prints a Markdown table.

    python benchmarks/train_throughput.py                      # CPU, default sizes
    python benchmarks/train_throughput.py --sizes l,xl --batch 32 --seq-len 256   # GPU: bf16 autocast
"""

from __future__ import annotations

import argparse
import time

import torch

from carelab.diffusion.model import GPT, size_config
from carelab.diffusion.objectives import training_loss
from carelab.report import markdown_table


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best FLOP/s of an n×n @ n×n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t))
    return best


def train_rate(objective: str, size: str, batch: int, seq_len: int, steps: int, device: torch.device,
               dtype: torch.dtype) -> tuple[float, GPT]:
    """Median tokens/s of full training steps (forward, backward, clip, AdamW)."""
    torch.manual_seed(0)
    model = GPT(size_config(size, vocab_size=257, block_size=seq_len, causal=objective == "ar")).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    x = torch.randint(0, 256, (batch, seq_len + 1), device=device)
    times = []
    for i in range(steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = training_loss(objective, model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - t)
    times.sort()
    return batch * seq_len / times[len(times) // 2], model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="s,m,l")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--peak-n", type=int, default=0, help="matmul size for the peak (default 1024 CPU, 8192 GPU)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak_n = args.peak_n or (8192 if device.type == "cuda" else 1024)
    rows = []
    for size in args.sizes.split(","):
        for obj in ("ar", "mdm"):
            peak = matmul_peak(device, dtype, peak_n)
            tps, model = train_rate(obj, size, args.batch, args.seq_len, args.steps, device, dtype)
            achieved = tps * model.flops_per_token(args.seq_len)
            rows.append({"objective": obj, "size": size, "N (non-emb)": model.num_params(), "batch×T":
                         f"{args.batch}×{args.seq_len}", "tokens/s": round(tps), "GFLOP/s": achieved / 1e9,
                         "matmul peak GFLOP/s": peak / 1e9, "share of peak": f"{100 * achieved / peak:.0f} %"})
            print(rows[-1], flush=True)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{where}, {dtype}, peak from {peak_n}×{peak_n} matmul\n")
    print(markdown_table(rows, digits=1))


if __name__ == "__main__":
    main()
