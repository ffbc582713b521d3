"""fp32 linear layers on this CPU: torch's BLAS (``F.linear``) against oneDNN (``carelab.onednn``), in one run.

Why: every forward and backward of the CARE stages is mostly these products, so the faster library sets the pace
of training and evaluation alike. Shapes are SmolLM2-135M's (hidden 576, MLP 1536, k/v 192, vocabulary 49,152)
at the token counts the engine and the trainer feed: decoding rows (1–80), prompts (~800), SFT batches (2,048).
Prints GFLOP/s of each library (fastest of ``--repeats`` after a warm-up call), their ratio, and the largest
difference of each from a float64 product (both are fp32; only the order of additions differs).

    python benchmarks/linear_backend.py
    python benchmarks/linear_backend.py --tokens 16,800 --threads 1
"""

from __future__ import annotations

import argparse
import time

#: (input features, output features) of SmolLM2-135M's linear layers: q/o, k/v, gate/up, down, LM head
SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)]


def fastest_s(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN builds its kernel for a new shape on first use
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="1,16,80,800,2048", help="rows of the input (tokens), comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from carelab import onednn
    from carelab.report import markdown_table

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with torch.inference_mode():
        for m in (int(t) for t in args.tokens.split(",")):
            for k, n in SHAPES:
                x, w = torch.randn(m, k), torch.randn(n, k) / k**0.5
                exact = F.linear(x.double(), w.double())
                flop = 2 * m * k * n
                blas = fastest_s(lambda x=x, w=w: F.linear(x, w), args.repeats)
                dnn = fastest_s(lambda x=x, w=w: onednn._onednn(x, w, None), args.repeats)
                rows.append({"tokens": m, "in → out": f"{k} → {n}", "BLAS GFLOP/s": flop / blas / 1e9,
                             "oneDNN GFLOP/s": flop / dnn / 1e9, "oneDNN × BLAS": blas / dnn,
                             "BLAS max error": f"{float((F.linear(x, w).double() - exact).abs().max()):.1e}",
                             "oneDNN max error": f"{float((onednn._onednn(x, w, None).double() - exact).abs().max()):.1e}"})
    print(f"{torch.__config__.parallel_info().splitlines()[0]}; {args.threads} threads, fastest of {args.repeats}\n")
    print(markdown_table(rows, digits=2))


if __name__ == "__main__":
    main()
