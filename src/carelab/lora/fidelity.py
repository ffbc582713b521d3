"""Gradient-fidelity experiment: does LoRA-Pro's update track full fine-tuning better than LoRA's?

Why: LoRA-Pro's claim is geometric — its equivalent gradient g̃ = s(B·g_A + g_B·A) is the orthogonal
projection of the full-weight gradient G onto what a rank-r step can express, whereas LoRA's g̃ is a
distorted version of it. This module measures that claim on a small causal LM, per step and per
adapted layer, with the exact G captured by letting autograd compute the (frozen) base weights'
gradients, and puts it beside what users care about: loss curves against full fine-tuning under SGD
and AdamW over an lr grid and several seeds, step time, and optimizer-state bytes. Every adapter variant
of :mod:`carelab.lora.variants` can take part (AdamW), so one table answers which comes closest to full
fine-tuning at what cost; each method's lr is chosen on a dev split and the test split gives the
held-out loss and next-token accuracy.

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

#: every adapter carelab offers (``carelab.lora.variants.ADAPTER_CHOICES``) plus LoRA-Pro's full mode
FIDELITY_METHODS = ("lora", "rslora", "lora+", "dora", "pissa", "lora-ga", "lora-fa", "lora-pro", "lora-pro-full",
                    "full")
#: methods that also run with plain SGD (the others are defined by their AdamW optimizer or need PEFT setup)
SGD_METHODS = ("lora", "rslora", "lora-pro", "full")
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
    n_eval: int = 64  # dev split: picks each method's learning rate
    n_test: int = 64  # held-out split: the reported loss and next-token accuracy
    sub_vocab: int = 48
    data_seed: int = 1234
    threads: int = 1
    dtype: str = "float32"
    #: re-initialise a random model's linear and embedding weights with this std (None: keep). The tiny
    #: models' std 0.02 caps logits at ≈0.6 through the frozen tied head, so no method can lower the loss
    #: much; ≈1/√hidden gives a model whose loss can fall and where low-rank vs full-rank updates differ.
    init_std: float | None = None

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
        if self.init_std is not None and self.init_std <= 0:
            raise ValueError("init_std must be positive")


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


def make_task(cfg: FidelityConfig, tok) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train, dev and test token tensors ``(N, seq_len)`` for the task (deterministic in ``data_seed``)."""
    gen = torch.Generator().manual_seed(cfg.data_seed)
    n = cfg.n_train + cfg.n_eval + cfg.n_test
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
    dev_end = cfg.n_train + cfg.n_eval
    return data[: cfg.n_train], data[cfg.n_train : dev_end], data[dev_end:]


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


def _train_batches(train: torch.Tensor, cfg: FidelityConfig, seed: int):
    """The run's batch order (a generator per seed, so every method of a seed sees the same batches)."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.steps):
        yield train[torch.randint(0, len(train), (cfg.batch_size,), generator=gen)]


def _build(method: str, optimizer: str, lr: float, base: nn.Module, cfg: FidelityConfig, train: torch.Tensor,
           seed: int):
    """Model + optimizer (+ whether gradients get the LoRA-Pro adjustment before a plain SGD step).

    AdamW runs of adapter variants go through :func:`carelab.lora.variants.prepare_adapter` and
    :func:`~carelab.lora.variants.make_optimizer`, the wiring ``carelab care sft --adapter`` uses, so the
    experiment measures exactly what users train with.
    """
    from peft import LoraConfig, get_peft_model

    from carelab.lora.variants import make_optimizer, prepare_adapter

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
    if optimizer == "adamw":
        if method == "lora-pro-full":
            setup = prepare_adapter("lora", model, r=cfg.rank, alpha=cfg.alpha, dropout=0.0,
                                    target_modules=cfg.target_modules, lr=lr)
            opt = LoRAProAdamW(setup.model, lr=lr, weight_decay=0.0, mode="full")
            return setup.model, opt, adjust_before_step
        batches = None
        if method == "lora-ga":  # gradient estimation on the run's own first batches (not training)
            batches = [{"input_ids": ids, "labels": ids} for ids in _train_batches(train, cfg, seed)]
        setup = prepare_adapter(method, model, r=cfg.rank, alpha=cfg.alpha, dropout=0.0,
                                target_modules=cfg.target_modules, lr=lr, train_batches=batches)
        return setup.model, make_optimizer(setup, setup.model, lr=lr, weight_decay=0.0), adjust_before_step
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=cfg.target_modules,
                        use_rslora=(method == "rslora"), bias="none")
    model = get_peft_model(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    adjust_before_step = method == "lora-pro"  # LoRA-Pro with SGD: adjusted gradients, plain SGD step
    return model, opt, adjust_before_step


@torch.no_grad()
def evaluate(model: nn.Module, data: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Mean next-token loss and top-1 next-token accuracy on ``data`` (the held-out task metric)."""
    model.eval()
    total, count, correct, predicted = 0.0, 0, 0, 0
    for i in range(0, len(data), batch_size):
        ids = data[i : i + batch_size]
        out = model(input_ids=ids, labels=ids)
        total += out.loss.item() * len(ids)
        count += len(ids)
        correct += int((out.logits[:, :-1].argmax(-1) == ids[:, 1:]).sum())
        predicted += ids[:, 1:].numel()
    model.train()
    return total / max(count, 1), correct / max(predicted, 1)


def _probe_pairs(model: nn.Module, method: str) -> list:
    """The LoRA pairs whose exact full-weight gradient is captured (none for full FT, DoRA or frozen A)."""
    if method in ("full", "dora"):
        return []
    return [p for p in find_lora_pairs(model) if p.A.requires_grad and p.B.requires_grad]


def run_one(method: str, optimizer: str, lr: float, seed: int, base: nn.Module, train: torch.Tensor,
            dev: torch.Tensor, test: torch.Tensor, cfg: FidelityConfig) -> dict:
    """Train one (method, optimizer, lr, seed) for ``cfg.steps`` steps; return its record."""
    torch.manual_seed(seed)
    model, opt, adjust_first = _build(method, optimizer, lr, base, cfg, train, seed)
    model.train()
    pairs = _probe_pairs(model, method)
    for pair in pairs:  # the probe: autograd also computes dL/dW0 (= dL/dW, dropout is 0); never stepped
        pair.module.get_base_layer().weight.requires_grad_(True)
    losses, opt_ms, fwd_ms = [], [], []
    per_step: list[dict] = []
    per_layer: list[dict] = []
    for step, ids in enumerate(_train_batches(train, cfg, seed)):
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
    finite = math.isfinite(losses[-1])
    dev_loss, _ = evaluate(model, dev, cfg.batch_size) if finite else (float("nan"), float("nan"))
    test_loss, test_acc = evaluate(model, test, cfg.batch_size) if finite else (float("nan"), float("nan"))
    record = {
        "run_id": f"{method}|{optimizer}|{lr:g}|{seed}",
        "method": method, "optimizer": optimizer, "lr": lr, "seed": seed,
        "losses": losses,
        "eval_loss": dev_loss, "test_loss": test_loss, "test_acc": test_acc,
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


#: run first within a seed: the reference every method is compared with, then the question's two methods
_FIRST = ("full", "lora", "lora-pro")


def planned_runs(cfg: FidelityConfig) -> list[tuple[str, str, float, int]]:
    """Every (method, optimizer, lr, seed), seed-major and full FT first, so a grid stopped early still
    compares every method it reached with full fine-tuning on whole seeds."""
    methods = sorted(cfg.methods, key=lambda m: _FIRST.index(m) if m in _FIRST else len(_FIRST))
    runs = []
    for seed in range(cfg.seeds):
        for optimizer in cfg.optimizers:
            lrs = cfg.sgd_lrs if optimizer == "sgd" else cfg.adamw_lrs
            for method in methods:
                if optimizer == "sgd" and method not in SGD_METHODS:
                    continue  # LoRA-Pro full/LoRA+/LoRA-FA are AdamW optimizers; the others are compared under AdamW
                for lr in lrs:
                    runs.append((method, optimizer, lr, seed))
    return runs


@torch.no_grad()
def reinitialise(model: nn.Module, std: float, seed: int) -> None:
    """Draw every linear and embedding weight from N(0, std²) (biases 0, norms untouched), deterministically."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()


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
    if cfg.init_std is not None:
        reinitialise(base, cfg.init_std, cfg.data_seed)
    train, dev, test = make_task(cfg, tok)
    store = JsonlAppender(out / "runs.jsonl", key="run_id")
    todo = [r for r in planned_runs(cfg) if f"{r[0]}|{r[1]}|{r[2]:g}|{r[3]}" not in store]
    if todo:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      disable=not progress) as bar:
            task = bar.add_task("fidelity runs", total=len(todo))
            for method, optimizer, lr, seed in todo:
                bar.update(task, description=f"{method} {optimizer} lr={lr:g} seed={seed}")
                store.write(run_one(method, optimizer, lr, seed, base, train, dev, test, cfg))
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
        tests = [r.get("test_loss", float("nan")) for r in rs]
        accs = [r.get("test_acc", float("nan")) for r in rs]
        fid = [f for r in rs for f in r["fidelity"] if f]
        own_cos = None
        if fid:
            key = "cos_pro" if method.startswith("lora-pro") else "cos_lora"
            own_cos = statistics.fmean(f[key] for f in fid)
        rows.append({
            "method": method, "optimizer": optimizer, "lr": lr, "seeds": len(rs),
            "final_loss": _nanmean(finals), "final_loss_sd": _nansd(finals), "eval_loss": _nanmean(evals),
            "test_loss": _nanmean(tests), "test_acc": _nanmean(accs),
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
    """Per (method, optimizer) the lr with the lowest dev loss: chosen on dev, never on the test split."""
    best: dict[tuple, dict] = {}
    for row in summary:
        key = (row["method"], row["optimizer"])
        if math.isfinite(row["eval_loss"]) and (key not in best or row["eval_loss"] < best[key]["eval_loss"]):
            best[key] = row
    return [best[k] for k in sorted(best, key=lambda k: (k[1], k[0]))]


def _runs_at(records: list[dict], method: str, optimizer: str, lr: float) -> dict[int, dict]:
    return {r["seed"]: r for r in records if (r["method"], r["optimizer"], r["lr"]) == (method, optimizer, lr)}


def closeness_rows(records: list[dict], best: list[dict]) -> list[dict]:
    """Each method at its best (dev-loss) lr against full fine-tuning at *its* best lr, paired by seed.

    A seed fixes the batch order, so the curves of two methods with one seed saw the same batches: the
    per-seed curve distance (mean |loss_method(t) − loss_full(t)| over steps), final-loss gap and
    test-accuracy gap are paired differences, and their 95 % bootstrap intervals resample seeds.
    """
    from carelab.stats import bootstrap_ci, paired_difference_ci

    rows = []
    for full_row in (b for b in best if b["method"] == "full"):
        optimizer = full_row["optimizer"]
        full_runs = _runs_at(records, "full", optimizer, full_row["lr"])
        for row in (b for b in best if b["optimizer"] == optimizer):
            runs = _runs_at(records, row["method"], optimizer, row["lr"])
            seeds = sorted(s for s in runs if s in full_runs and math.isfinite(_final(runs[s]["losses"]))
                           and len(runs[s]["losses"]) == len(full_runs[s]["losses"]))
            if not seeds:
                continue
            dist = [statistics.fmean(abs(a - b) for a, b in zip(runs[s]["losses"], full_runs[s]["losses"],
                                                                    strict=True)) for s in seeds]
            d = bootstrap_ci(dist)
            gap = paired_difference_ci([_final(runs[s]["losses"]) for s in seeds],
                                       [_final(full_runs[s]["losses"]) for s in seeds])
            acc = [runs[s].get("test_acc", float("nan")) for s in seeds]
            acc_full = [full_runs[s].get("test_acc", float("nan")) for s in seeds]
            acc_ci = bootstrap_ci(acc) if all(map(math.isfinite, acc)) else None
            acc_gap = paired_difference_ci(acc, acc_full) if acc_ci is not None else None
            rows.append({
                "method": row["method"], "optimizer": optimizer, "lr": row["lr"], "seeds": len(seeds),
                "curve_dist": d.mean, "curve_dist_lo": d.lo, "curve_dist_hi": d.hi,
                "final_gap": gap.mean, "final_gap_lo": gap.lo, "final_gap_hi": gap.hi,
                "test_loss": row["test_loss"],
                "test_acc": acc_ci.mean if acc_ci else None, "test_acc_lo": acc_ci.lo if acc_ci else None,
                "test_acc_hi": acc_ci.hi if acc_ci else None,
                "acc_gap": acc_gap.mean if acc_gap else None, "acc_gap_lo": acc_gap.lo if acc_gap else None,
                "acc_gap_hi": acc_gap.hi if acc_gap else None,
                "cos_to_full": row["cos_to_full"], "opt_step_ms": row["opt_step_ms"],
                "state_bytes": row["state_bytes"], "trainable": row["trainable"],
            })
    return sorted(rows, key=lambda r: (r["optimizer"], r["method"] != "full", r["curve_dist"]))


def _closeness_markdown(rows: list[dict]) -> str:
    """The "which variant comes closest to full fine-tuning, at what cost" table, intervals inline."""
    from carelab.stats import format_ci

    lines = ["| method | optimizer | best lr (dev loss) | seeds | curve distance to full | final-loss gap | "
             "test loss | test next-token acc | acc − full | cos to G | opt step ms | optimizer state bytes | "
             "trained params |", "|" + "---|" * 13]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['optimizer']} | {r['lr']:g} | {r['seeds']} | "
            f"{format_ci(r['curve_dist'], r['curve_dist_lo'], r['curve_dist_hi'], 3)} | "
            f"{format_ci(r['final_gap'], r['final_gap_lo'], r['final_gap_hi'], 3, signed=True)} | "
            f"{r['test_loss']:.3f} | {format_ci(r['test_acc'], r['test_acc_lo'], r['test_acc_hi'], 3)} | "
            f"{format_ci(r['acc_gap'], r['acc_gap_lo'], r['acc_gap_hi'], 3, signed=True)} | "
            f"{'–' if r['cos_to_full'] is None else format(r['cos_to_full'], '.3f')} | {r['opt_step_ms']:.2f} | "
            f"{r['state_bytes']:,} | {r['trainable']:,} |")
    return "\n".join(lines) + "\n"


def closeness_verdict(rows: list[dict]) -> list[str]:
    """One sentence per optimizer: the closest variant and where LoRA-Pro ranks (by curve distance)."""
    out = []
    for optimizer in sorted({r["optimizer"] for r in rows}):
        ranked = [r for r in rows if r["optimizer"] == optimizer and r["method"] != "full"]
        if not ranked:
            continue
        names = [r["method"] for r in ranked]
        text = (f"{optimizer}: closest to full fine-tuning by curve distance is **{names[0]}** "
                f"({ranked[0]['curve_dist']:.3f}); order: {', '.join(names)}.")
        if "lora-pro" in names:
            pro = ranked[names.index("lora-pro")]
            text += (f" LoRA-Pro ranks {names.index('lora-pro') + 1} of {len(names)} "
                     f"(distance {pro['curve_dist']:.3f} [{pro['curve_dist_lo']:.3f}, {pro['curve_dist_hi']:.3f}]).")
        out.append(text)
    return out


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


def _plot_gap(records: list[dict], close: list[dict], path: Path) -> None:
    """Per-step train-loss difference to full fine-tuning (paired by seed), mean ± sd over seeds, per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from carelab.report import save_figure

    opts = sorted({r["optimizer"] for r in close})
    fig, axes = plt.subplots(1, max(1, len(opts)), figsize=(5.6 * max(1, len(opts)), 3.8), squeeze=False)
    for ax, optimizer in zip(axes[0], opts, strict=False):
        full_lr = next(r["lr"] for r in close if r["optimizer"] == optimizer and r["method"] == "full")
        full_runs = _runs_at(records, "full", optimizer, full_lr)
        for row in close:
            if row["optimizer"] != optimizer or row["method"] == "full":
                continue
            runs = _runs_at(records, row["method"], optimizer, row["lr"])
            seeds = [s for s in runs if s in full_runs and len(runs[s]["losses"]) == len(full_runs[s]["losses"])]
            if not seeds:
                continue
            diffs = [[a - b for a, b in zip(runs[s]["losses"], full_runs[s]["losses"], strict=True)] for s in seeds]
            n = len(diffs[0])
            mean = [statistics.fmean(d[i] for d in diffs) for i in range(n)]
            sd = [statistics.stdev([d[i] for d in diffs]) if len(diffs) > 1 else 0.0 for i in range(n)]
            xs = list(range(1, n + 1))
            line = ax.plot(xs, mean, label=f"{row['method']} (lr {row['lr']:g})", lw=1.2)[0]
            ax.fill_between(xs, [m - v for m, v in zip(mean, sd, strict=True)],
                            [m + v for m, v in zip(mean, sd, strict=True)], color=line.get_color(), alpha=0.12)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(f"{optimizer.upper()}: train loss − full FT's (same seed), mean ± sd", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss difference")
        ax.legend(fontsize=7, ncol=2)
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
    close = closeness_rows(records, best)
    write_csv(out / "closeness.csv", close)
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
    _plot_gap(records, close, out / "gap_to_full.png")
    cols = ["method", "optimizer", "lr", "seeds", "final_loss", "final_loss_sd", "eval_loss", "test_loss", "test_acc",
            "cos_to_full",
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
        "## Which variant comes closest to full fine-tuning, at what cost\n",
        "Each method at its best learning rate by **dev** loss (mean of seeds), against full fine-tuning at its "
        "own best lr. A seed fixes the batch order, so differences are paired by seed; intervals are 95 % "
        "bootstrap over seeds (with few seeds they are rough). `curve distance`: mean over steps of "
        "|train loss − full's train loss|; `final-loss gap`: mean of the last 5 steps minus full's; test loss and "
        "top-1 next-token accuracy on the held-out **test** split (never used for choosing lr).\n",
        _closeness_markdown(close),
        *[f"- {line}" for line in closeness_verdict(close)],
        "\n![gap to full](gap_to_full.png)\n",
        "## Equivalent gradient vs the exact full-weight gradient (per adapted layer and step)\n",
        "`cos_*`: cosine to G; `best_scaled_err_lora` = min_c ‖c·g̃_LoRA − G‖/‖G‖; `err_pro` = ‖g̃_Pro − G‖/‖G‖ "
        "(no rescaling); `pro_le_lora_best`: share of probes where LoRA-Pro's error ≤ LoRA's best-scaled "
        "error. Both g̃ are evaluated at the same points (the named method's trajectory).\n",
        markdown_table(fid, fcols, digits=3),
        "\n![fidelity](fidelity.png)\n",
        "## Best learning rate per method and optimizer (by dev loss; `eval_loss` is the dev split)\n",
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
           "summarise", "fidelity_rows", "closeness_rows", "closeness_verdict", "evaluate", "config_from_dict",
           "load_records"]
