"""Gradient-fidelity experiment: does LoRA-Pro's update track full fine-tuning better than LoRA's?

Why: LoRA-Pro's claim is geometric — its equivalent gradient g̃ = s(B·g_A + g_B·A) is the orthogonal
projection of the full-weight gradient G onto what a rank-r step can express, whereas LoRA's g̃ is a
distorted version of it. This module measures that claim on a small causal LM, per step and per
adapted layer, with the exact G captured by letting autograd compute the (frozen) base weights'
gradients, and puts it beside what users care about: loss curves against full fine-tuning under SGD
and AdamW over an lr grid and several seeds, step time, and optimizer-state bytes.

Each finished run is appended to ``runs.jsonl`` at once, so an interrupted experiment resumes where it
stopped; ``config.json``, CSV tables, PNG plots and ``summary.md`` are (re)written from all runs.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from carelab.lora.lorapro import (
    LoRAProAdamW,
    adjust_gradients,
    adjust_model_gradients,
    equivalent_gradient,
    find_lora_pairs,
)
from carelab.lora.variants import resolve_target_modules
from carelab.runs import InputError, JsonlAppender, read_jsonl, save_config

FIDELITY_METHODS = ("lora", "rslora", "lora-pro", "lora-pro-full", "full")
OPTIMIZERS = ("sgd", "adamw")
TASKS = ("bigram", "copy")


@dataclass
class FidelityConfig:
    """One gradient-fidelity experiment (saved as ``config.json`` beside its results)."""

    model: str = "tiny-random-qwen2"
    task: str = "bigram"  # bigram | copy | path to a .txt file (one example per line)
    methods: list[str] = field(default_factory=lambda: ["lora", "lora-pro", "full"])
    optimizers: list[str] = field(default_factory=lambda: ["sgd", "adamw"])
    sgd_lrs: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0])
    adamw_lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2])
    seeds: int = 3
    steps: int = 40
    batch_size: int = 16
    seq_len: int = 32
    rank: int = 4
    alpha: float = 8.0
    target_modules: str = "all-linear"
    n_train: int = 512
    n_eval: int = 64
    sub_vocab: int = 48
    data_seed: int = 1234
    threads: int = 1
    dtype: str = "float32"

    def validate(self) -> None:
        for m in self.methods:
            if m not in FIDELITY_METHODS:
                raise ValueError(f"unknown method {m!r} for the fidelity experiment; choose from {FIDELITY_METHODS}")
        for o in self.optimizers:
            if o not in OPTIMIZERS:
                raise ValueError(f"unknown optimizer {o!r}; choose from {OPTIMIZERS}")
        if self.task not in TASKS and not Path(self.task).is_file():
            raise ValueError(f"task {self.task!r} is neither one of {TASKS} nor an existing text file")
        if self.steps < 1 or self.seeds < 1 or self.batch_size < 1 or self.seq_len < 4 or self.rank < 1:
            raise ValueError("steps, seeds, batch size and rank must be ≥ 1 and seq_len ≥ 4")
        if any(lr <= 0 for lr in self.sgd_lrs + self.adamw_lrs):
            raise ValueError("learning rates must be positive")


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def _token_pool(tok, size: int, gen: torch.Generator) -> torch.Tensor:
    special = set(tok.all_special_ids)
    ids = [i for i in range(len(tok)) if i not in special]
    if len(ids) < size:
        size = len(ids)
    perm = torch.randperm(len(ids), generator=gen)[:size]
    return torch.tensor(ids)[perm]


def make_task(cfg: FidelityConfig, tok) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and eval token tensors ``(N, seq_len)`` for the task (deterministic in ``data_seed``)."""
    gen = torch.Generator().manual_seed(cfg.data_seed)
    n = cfg.n_train + cfg.n_eval
    L = cfg.seq_len
    if cfg.task == "bigram":
        # a sparse random Markov chain over a sub-vocabulary: each token has 3 likely successors
        pool = _token_pool(tok, cfg.sub_vocab, gen)
        k = len(pool)
        succ = torch.randint(0, k, (k, 3), generator=gen)
        probs = torch.tensor([0.6, 0.3, 0.1])
        seq = torch.empty(n, L, dtype=torch.long)
        state = torch.randint(0, k, (n,), generator=gen)
        for t in range(L):
            seq[:, t] = state
            choice = torch.multinomial(probs.expand(n, 3), 1, generator=gen).squeeze(1)
            state = succ[state, choice]
        data = pool[seq]
    elif cfg.task == "copy":
        pool = _token_pool(tok, cfg.sub_vocab, gen)
        half = (L - 1) // 2
        first = pool[torch.randint(0, len(pool), (n, half), generator=gen)]
        sep = torch.full((n, 1), tok.eos_token_id if tok.eos_token_id is not None else int(pool[0]))
        data = torch.cat([first, sep, first], dim=1)
        if data.shape[1] < L:
            data = torch.cat([data, first[:, : L - data.shape[1]]], dim=1)
    else:
        path = Path(cfg.task)
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise InputError(path, "no non-empty lines to train on")
        stream: list[int] = []
        for line in lines:
            stream.extend(tok(line, add_special_tokens=False)["input_ids"])
            if tok.eos_token_id is not None:
                stream.append(tok.eos_token_id)
        if len(stream) < 2 * L:
            raise InputError(path, f"only {len(stream)} tokens; need at least {2 * L} for seq_len {L}")
        chunks = torch.tensor(stream[: len(stream) // L * L]).view(-1, L)
        idx = torch.randint(0, len(chunks), (n,), generator=gen)
        data = chunks[idx]
    return data[: cfg.n_train], data[cfg.n_train :]


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = (torch.linalg.norm(a) * torch.linalg.norm(b)).item()
    return float((a * b).sum().item() / denom) if denom > 0 else 0.0


def layer_fidelity(pair, full_grad: torch.Tensor) -> dict[str, float]:
    """Cosine and errors of LoRA's and LoRA-Pro's equivalent gradients against the full gradient G."""
    G = full_grad.double()
    gnorm = torch.linalg.norm(G).item() or 1.0
    A, B, gA, gB, s = pair.A, pair.B, pair.A.grad, pair.B.grad, pair.scaling
    lora = equivalent_gradient(A, B, gA, gB, s).double()
    na, nb = adjust_gradients(A, B, gA, gB, s)
    pro = equivalent_gradient(A, B, na, nb, s).double()
    cos_l, cos_p = _cos(lora, G), _cos(pro, G)
    return {
        "cos_lora": cos_l,
        "best_err_lora": math.sqrt(max(0.0, 1.0 - cos_l * cos_l)),  # min_c ||c·g̃ − G|| / ||G||
        "rel_err_lora": torch.linalg.norm(lora - G).item() / gnorm,
        "cos_pro": cos_p,
        "err_pro": torch.linalg.norm(pro - G).item() / gnorm,
    }


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    total = 0
    for st in opt.state.values():
        for v in st.values():
            if torch.is_tensor(v) and v.dim() > 0:
                total += v.numel() * v.element_size()
    return total


def _build(method: str, optimizer: str, lr: float, base: nn.Module, cfg: FidelityConfig):
    """Model + optimizer (+ whether gradients get the LoRA-Pro adjustment before a plain SGD step)."""
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(base)
    adjust_before_step = False
    if method == "full":
        # full-rank training of exactly the layers LoRA adapts (embeddings, norms, head stay frozen), so
        # the comparison isolates low-rank vs full-rank updates of the same weights
        targets = set(resolve_target_modules(model, cfg.target_modules))
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and module is not head and name.rsplit(".", 1)[-1] in targets:
                module.weight.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        return model, opt, adjust_before_step
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=cfg.target_modules,
                        use_rslora=(method == "rslora"), bias="none")
    model = get_peft_model(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    if method in ("lora", "rslora"):
        opt = torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    elif optimizer == "sgd":  # LoRA-Pro with SGD: adjusted gradients, plain SGD step
        opt = torch.optim.SGD(params, lr=lr)
        adjust_before_step = True
    else:
        opt = LoRAProAdamW(model, lr=lr, weight_decay=0.0, mode="full" if method == "lora-pro-full" else "efficient")
    return model, opt, adjust_before_step


@torch.no_grad()
def _eval_loss(model: nn.Module, data: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        ids = data[i : i + batch_size]
        total += model(input_ids=ids, labels=ids).loss.item() * len(ids)
        count += len(ids)
    model.train()
    return total / max(count, 1)


def run_one(method: str, optimizer: str, lr: float, seed: int, base: nn.Module, train: torch.Tensor,
            evald: torch.Tensor, cfg: FidelityConfig) -> dict:
    """Train one (method, optimizer, lr, seed) for ``cfg.steps`` steps; return its record."""
    torch.manual_seed(seed)
    model, opt, adjust_first = _build(method, optimizer, lr, base, cfg)
    model.train()
    pairs = find_lora_pairs(model) if method != "full" else []
    for pair in pairs:  # the probe: autograd also computes dL/dW0 (= dL/dW, dropout is 0); never stepped
        pair.module.get_base_layer().weight.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    losses, opt_ms, fwd_ms = [], [], []
    per_step: list[dict] = []
    per_layer: list[dict] = []
    for step in range(cfg.steps):
        idx = torch.randint(0, len(train), (cfg.batch_size,), generator=gen)
        ids = train[idx]
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        t1 = time.perf_counter()
        if pairs:
            rows = []
            for pair in pairs:
                base_w = pair.module.get_base_layer().weight
                if pair.A.grad is None or base_w.grad is None:
                    continue
                row = layer_fidelity(pair, base_w.grad)
                rows.append(row)
                per_layer.append({"step": step, "layer": pair.name, **row})
                base_w.grad = None
            per_step.append({k: statistics.fmean(r[k] for r in rows) for k in rows[0]} if rows else {})
        t2 = time.perf_counter()
        if adjust_first:
            adjust_model_gradients(pairs)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        losses.append(float(loss.item()))
        fwd_ms.append(1000 * (t1 - t0))
        opt_ms.append(1000 * (t3 - t2))
        if not math.isfinite(losses[-1]):
            break
    record = {
        "run_id": f"{method}|{optimizer}|{lr:g}|{seed}",
        "method": method, "optimizer": optimizer, "lr": lr, "seed": seed,
        "losses": losses,
        "eval_loss": _eval_loss(model, evald, cfg.batch_size) if math.isfinite(losses[-1]) else float("nan"),
        "opt_step_ms": statistics.median(opt_ms), "fwd_bwd_ms": statistics.median(fwd_ms),
        "state_bytes": _state_bytes(opt),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad and not _is_probe(p, pairs)),
        "fidelity": per_step,
        "per_layer": per_layer,
    }
    return record


def _is_probe(p: torch.Tensor, pairs) -> bool:
    return any(p is pair.module.get_base_layer().weight for pair in pairs)


# --------------------------------------------------------------------------------------------------
# Whole experiment + report
# --------------------------------------------------------------------------------------------------


def planned_runs(cfg: FidelityConfig) -> list[tuple[str, str, float, int]]:
    runs = []
    for optimizer in cfg.optimizers:
        lrs = cfg.sgd_lrs if optimizer == "sgd" else cfg.adamw_lrs
        for method in cfg.methods:
            if method == "lora-pro-full" and optimizer == "sgd":
                continue  # the full mode is an Adam-on-g̃ optimizer; under SGD it equals lora-pro
            for lr in lrs:
                for seed in range(cfg.seeds):
                    runs.append((method, optimizer, lr, seed))
    return runs


def run_experiment(cfg: FidelityConfig, out: str | os.PathLike, *, progress: bool = True) -> Path:
    """Run (or resume) the experiment into ``out`` and write the report; returns ``summary.md``'s path."""
    from carelab.models import load_model

    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    torch.set_num_threads(max(1, cfg.threads))
    base, tok = load_model(cfg.model, dtype=cfg.dtype, trainable=True)
    for p in base.parameters():
        p.requires_grad_(False)
    train, evald = make_task(cfg, tok)
    store = JsonlAppender(out / "runs.jsonl", key="run_id")
    todo = [r for r in planned_runs(cfg) if f"{r[0]}|{r[1]}|{r[2]:g}|{r[3]}" not in store]
    if todo:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      disable=not progress) as bar:
            task = bar.add_task("fidelity runs", total=len(todo))
            for method, optimizer, lr, seed in todo:
                bar.update(task, description=f"{method} {optimizer} lr={lr:g} seed={seed}")
                store.write(run_one(method, optimizer, lr, seed, base, train, evald, cfg))
                bar.advance(task)
    return write_report(load_records(cfg, out), cfg, out)


def load_records(cfg: FidelityConfig, out: str | os.PathLike) -> list[dict]:
    """The finished runs of ``out`` that belong to ``cfg``'s plan (a changed grid ignores stale runs)."""
    planned = {f"{m}|{o}|{lr:g}|{s}" for m, o, lr, s in planned_runs(cfg)}
    path = Path(out) / "runs.jsonl"
    if not path.exists():
        return []
    return [r for _, r in read_jsonl(path, skip_invalid=True) if r.get("run_id") in planned]


def _final(losses: list[float], k: int = 5) -> float:
    tail = losses[-k:]
    return statistics.fmean(tail) if tail and all(math.isfinite(x) for x in tail) else float("nan")


def summarise(records: list[dict]) -> list[dict]:
    """One row per (method, optimizer, lr): means over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["optimizer"], r["lr"]), []).append(r)
    rows = []
    for (method, optimizer, lr), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        finals = [_final(r["losses"]) for r in rs]
        evals = [r["eval_loss"] for r in rs]
        fid = [f for r in rs for f in r["fidelity"] if f]
        own_cos = None
        if fid:
            key = "cos_pro" if method.startswith("lora-pro") else "cos_lora"
            own_cos = statistics.fmean(f[key] for f in fid)
        rows.append({
            "method": method, "optimizer": optimizer, "lr": lr, "seeds": len(rs),
            "final_loss": _nanmean(finals), "final_loss_sd": _nansd(finals), "eval_loss": _nanmean(evals),
            "cos_to_full": own_cos,
            "opt_step_ms": statistics.median(r["opt_step_ms"] for r in rs),
            "state_bytes": rs[0]["state_bytes"], "trainable": rs[0]["trainable"],
        })
    return rows


def _nanmean(xs):
    xs = [x for x in xs if math.isfinite(x)]
    return statistics.fmean(xs) if xs else float("nan")


def _nansd(xs):
    xs = [x for x in xs if math.isfinite(x)]
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def best_lr_rows(summary: list[dict]) -> list[dict]:
    best: dict[tuple, dict] = {}
    for row in summary:
        key = (row["method"], row["optimizer"])
        if math.isfinite(row["eval_loss"]) and (key not in best or row["eval_loss"] < best[key]["eval_loss"]):
            best[key] = row
    return [best[k] for k in sorted(best, key=lambda k: (k[1], k[0]))]


def fidelity_rows(records: list[dict]) -> list[dict]:
    """Per LoRA-type method: LoRA vs LoRA-Pro equivalent gradients at that method's own trajectory points."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        if r["method"] != "full":
            groups.setdefault(r["method"], []).extend(r["per_layer"])
    rows = []
    for method, items in sorted(groups.items()):
        if not items:
            continue
        wins = sum(1 for it in items if it["err_pro"] <= it["best_err_lora"] + 1e-6)
        rows.append({
            "trajectory": method, "probes": len(items),
            "cos_lora": statistics.fmean(it["cos_lora"] for it in items),
            "cos_pro": statistics.fmean(it["cos_pro"] for it in items),
            "best_scaled_err_lora": statistics.fmean(it["best_err_lora"] for it in items),
            "unscaled_err_lora": statistics.median(it["rel_err_lora"] for it in items),
            "err_pro": statistics.fmean(it["err_pro"] for it in items),
            "pro_le_lora_best": wins / len(items),
        })
    return rows


def _plot_losses(records: list[dict], best: list[dict], cfg: FidelityConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from carelab.report import save_figure

    opts = [o for o in cfg.optimizers if any(b["optimizer"] == o for b in best)]
    fig, axes = plt.subplots(1, max(1, len(opts)), figsize=(5.2 * max(1, len(opts)), 3.8), squeeze=False)
    for ax, optimizer in zip(axes[0], opts, strict=False):
        for row in best:
            if row["optimizer"] != optimizer:
                continue
            runs = [r for r in records if (r["method"], r["optimizer"], r["lr"]) ==
                    (row["method"], optimizer, row["lr"])]
            n = min(len(r["losses"]) for r in runs)
            mean = [statistics.fmean(r["losses"][i] for r in runs) for i in range(n)]
            sd = [statistics.stdev([r["losses"][i] for r in runs]) if len(runs) > 1 else 0.0 for i in range(n)]
            xs = list(range(1, n + 1))
            line = ax.plot(xs, mean, label=f"{row['method']} (lr {row['lr']:g})")[0]
            ax.fill_between(xs, [m - s for m, s in zip(mean, sd, strict=True)],
                            [m + s for m, s in zip(mean, sd, strict=True)], color=line.get_color(), alpha=0.15)
        ax.set_title(f"{optimizer.upper()}: train loss at best lr (mean ± sd over seeds)", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
    save_figure(fig, path)


def _plot_fidelity(records: list[dict], path: Path) -> None:
    from carelab.report import new_figure, save_figure

    fig, ax = new_figure(6.4, 3.8)
    for method in sorted({r["method"] for r in records if r["method"] != "full"}):
        runs = [r for r in records if r["method"] == method and r["fidelity"]]
        if not runs:
            continue
        n = min(len(r["fidelity"]) for r in runs)
        for key, style in (("cos_lora", "--"), ("cos_pro", "-")):
            ys = [statistics.fmean(r["fidelity"][i][key] for r in runs if r["fidelity"][i]) for i in range(n)]
            label = f"{'LoRA g̃' if key == 'cos_lora' else 'LoRA-Pro g̃'} on {method} runs"
            ax.plot(range(1, n + 1), ys, style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("cos(g̃, full gradient), mean over layers/runs")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def write_report(records: list[dict], cfg: FidelityConfig, out: Path, command: str | None = None) -> Path:
    """CSV tables, PNG plots and ``summary.md`` from run records."""
    from carelab.report import markdown_table, write_csv

    summary = summarise(records)
    best = best_lr_rows(summary)
    fid = fidelity_rows(records)
    write_csv(out / "summary.csv", summary)
    write_csv(out / "best_lr.csv", best)
    write_csv(out / "fidelity.csv", fid)
    step_rows = []
    for r in records:
        for i, loss in enumerate(r["losses"]):
            row = {"method": r["method"], "optimizer": r["optimizer"], "lr": r["lr"], "seed": r["seed"],
                   "step": i + 1, "loss": loss}
            if i < len(r["fidelity"]) and r["fidelity"][i]:
                row.update(r["fidelity"][i])
            step_rows.append(row)
    write_csv(out / "steps.csv", step_rows)
    _plot_losses(records, best, cfg, out / "loss_curves.png")
    _plot_fidelity(records, out / "fidelity.png")
    cols = ["method", "optimizer", "lr", "seeds", "final_loss", "final_loss_sd", "eval_loss", "cos_to_full",
            "opt_step_ms", "state_bytes", "trainable"]
    fcols = ["trajectory", "probes", "cos_lora", "cos_pro", "best_scaled_err_lora", "unscaled_err_lora", "err_pro",
             "pro_le_lora_best"]
    md = [
        "# LoRA vs LoRA-Pro vs full fine-tuning: gradient fidelity\n",
        f"Model `{cfg.model}`, task `{cfg.task}`, rank {cfg.rank}, alpha {cfg.alpha:g}, {cfg.steps} steps, "
        f"batch {cfg.batch_size}×{cfg.seq_len} tokens, {cfg.seeds} seeds.\n",
    ]
    if command:
        md.append(f"Command: `{command}`\n")
    md += [
        "## Equivalent gradient vs the exact full-weight gradient (per adapted layer and step)\n",
        "`cos_*`: cosine to G; `best_scaled_err_lora` = min_c ‖c·g̃_LoRA − G‖/‖G‖; `err_pro` = ‖g̃_Pro − G‖/‖G‖ "
        "(no rescaling); `pro_le_lora_best`: share of probes where LoRA-Pro's error ≤ LoRA's best-scaled "
        "error. Both g̃ are evaluated at the same points (the named method's trajectory).\n",
        markdown_table(fid, fcols, digits=3),
        "\n![fidelity](fidelity.png)\n",
        "## Best learning rate per method and optimizer (by held-out loss)\n",
        markdown_table(best, cols, digits=3),
        "\n![loss curves](loss_curves.png)\n",
        "## All runs (means over seeds)\n",
        markdown_table(summary, cols, digits=3),
        "\n`opt_step_ms`: median optimizer step (incl. LoRA-Pro adjustment); `state_bytes`: optimizer state; "
        "`trainable`: trained parameters.\n",
    ]
    path = out / "summary.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path


def config_from_dict(d: dict) -> FidelityConfig:
    return FidelityConfig(**{k: v for k, v in d.items() if k in FidelityConfig.__dataclass_fields__})


__all__ = ["FidelityConfig", "run_experiment", "write_report", "make_task", "layer_fidelity", "planned_runs",
           "summarise", "fidelity_rows", "config_from_dict", "load_records"]
