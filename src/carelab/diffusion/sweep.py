"""The repetition sweep: train AR and MDM on U unique tokens for E epochs, identically otherwise.

Every run of the grid (objective × model size × U × epochs) uses the same optimiser (AdamW 0.9/0.95,
ε 1e-8, weight decay 0.1 on matrices, clip 1.0), the same warmup + cosine schedule (lr → lr/10), the
same seed, the same initial weights and the same data order; only ``causal`` and the loss differ.
Each run logs U, epochs, N (non-embedding params), D = U·epochs, C = 6·N·D and train/validation loss
over time. Runs are resumable (a per-run checkpoint) and a finished run (a line in ``results.jsonl``)
is skipped, so a killed sweep costs at most one checkpoint interval. Training goes through
``accelerate`` so the same command uses GPUs (and DDP under ``accelerate launch``) when present.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from carelab.diffusion.corpus import Corpus, CorpusConfig, build_corpus, chunk
from carelab.diffusion.model import GPT, size_config
from carelab.diffusion.objectives import evaluate, evaluate_per_sequence, parse_objective, training_loss
from carelab.runs import JsonlAppender, read_jsonl, save_config, write_jsonl


@dataclass
class SweepConfig:
    """Everything that defines a sweep; saved as ``config.json`` in the output folder."""

    out: str = "runs/diffusion-sweep"
    objectives: list[str] = field(default_factory=lambda: ["ar", "mdm"])
    unique_tokens: list[int] = field(default_factory=lambda: [25_000, 100_000])
    epochs: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    model_sizes: list[str] = field(default_factory=lambda: ["xs", "s"])
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    seq_len: int = 64
    batch_size: int = 16
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.01
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    mask_eps: float = 1e-3
    val_sequences: int = 128
    evals_per_run: int = 8
    eval_t_samples: int = 4  # MDM ELBO samples during training (cheap curve)
    final_t_samples: int = 32  # MDM ELBO samples for the reported final loss (paper: 32)
    log_every: int = 10
    checkpoint_seconds: float = 60.0
    seed: int = 0
    threads: int | None = None
    mixed_precision: str = "no"


@dataclass
class RunSpec:
    """One cell of the grid."""

    objective: str
    size: str
    unique_tokens: int
    epochs: int

    @property
    def run_id(self) -> str:
        return f"{self.objective}-{self.size}-U{self.unique_tokens}-E{self.epochs}"


def grid(cfg: SweepConfig) -> list[RunSpec]:
    """All runs, cheapest first (cost ∝ U·epochs·model), so a partial sweep covers every cell early."""
    for o in cfg.objectives:
        parse_objective(o)  # raises on unknown names
    specs = [
        RunSpec(o, s, u, e)
        for o in cfg.objectives
        for s in cfg.model_sizes
        for u in cfg.unique_tokens
        for e in cfg.epochs
    ]
    sizes = {s: GPT(size_config(s, block_size=cfg.seq_len)).num_params() for s in cfg.model_sizes}
    return sorted(specs, key=lambda r: (r.unique_tokens * r.epochs * sizes[r.size], r.size, r.unique_tokens, r.objective))


def lr_at(step: int, total: int, cfg: SweepConfig) -> float:
    """Linear warmup (``warmup_frac`` of the run, ≥1 step) then cosine from lr to lr·min_lr_ratio."""
    warm = max(1, math.ceil(cfg.warmup_frac * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    prog = min(1.0, (step - warm) / max(1, total - warm))
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * prog))


def make_optimizer(model: GPT, cfg: SweepConfig) -> torch.optim.AdamW:
    """AdamW with decay on matrices/embeddings only (norm gains are not decayed)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps,
    )


def batch_rows(n_rows: int, epochs: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Row indices of batch ``step``: each epoch is a fresh seeded permutation (deterministic, resumable)."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, off = divmod(start + len(out), n_rows)
        if epoch >= epochs:
            break
        perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.extend(perm[off : off + batch_size - len(out)].tolist())
    return torch.tensor(out, dtype=torch.long)


def val_rows(corpus: Corpus, cfg: SweepConfig) -> torch.Tensor:
    """Fixed validation rows spread evenly over the held-out documents."""
    rows = chunk(corpus.val, cfg.seq_len)
    if rows.size(0) > cfg.val_sequences:
        rows = rows[torch.linspace(0, rows.size(0) - 1, cfg.val_sequences).long()]
    return rows


def _console():
    from rich.console import Console

    return Console(stderr=True)


def train_run(spec: RunSpec, corpus: Corpus, cfg: SweepConfig, run_dir: Path, accelerator=None, progress=None,
              task=None) -> dict:
    """Train one run (resuming from its checkpoint) and return its final record."""
    from accelerate import Accelerator

    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = chunk(corpus.unique(spec.unique_tokens), cfg.seq_len)
    vrows = val_rows(corpus, cfg)
    n_rows = rows.size(0)
    total = math.ceil(n_rows * spec.epochs / cfg.batch_size)
    kind, _ = parse_objective(spec.objective)
    mcfg = size_config(spec.size, vocab_size=corpus.tokenizer.vocab_size, block_size=cfg.seq_len,
                       causal=kind != "mdm", target_positions=kind == "ordered")
    torch.manual_seed(cfg.seed)  # same initial weights for AR and MDM
    model = GPT(mcfg)
    opt = make_optimizer(model, cfg)
    step, elapsed = 0, 0.0
    ckpt = run_dir / "checkpoint.pt"
    log_path = run_dir / "log.jsonl"
    log: list[dict] = []
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed"]
        if log_path.exists():
            log = [r for _, r in read_jsonl(log_path, skip_invalid=True) if r["step"] <= step]
    write_jsonl(log_path, log)  # drops entries written after the checkpoint
    logger = JsonlAppender(log_path, key="_none")
    model, opt = acc.prepare(model, opt)
    raw = acc.unwrap_model(model)
    model.train()
    eval_steps = {round(total * k / cfg.evals_per_run) for k in range(1, cfg.evals_per_run + 1)}
    n_params = raw.num_params()
    tokens_per_row = cfg.seq_len
    t_last_ckpt = time.time()
    t0 = time.time() - elapsed
    run_losses: list[float] = []
    if progress is not None and task is not None:
        progress.update(task, description=spec.run_id, completed=step, total=total)

    def save_ckpt() -> None:
        torch.save({"model": raw.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "elapsed": time.time() - t0}, ckpt)

    while step < total:
        idx = batch_rows(n_rows, spec.epochs, cfg.batch_size, step, cfg.seed)
        idx = idx[acc.process_index :: acc.num_processes]
        x = rows[idx].to(acc.device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, cfg)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + step * 31 + acc.process_index)
        with acc.autocast():
            loss = training_loss(spec.objective, model, x, eps=cfg.mask_eps, generator=gen, order_seed=cfg.seed)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        run_losses.append(loss.item())
        if (step % cfg.log_every == 0 or step == total) and acc.is_main_process:
            logger.write({"step": step, "epoch": step * cfg.batch_size / n_rows, "lr": lr_at(step - 1, total, cfg),
                          "train_loss": sum(run_losses[-cfg.log_every:]) / len(run_losses[-cfg.log_every:])})
        if step in eval_steps and step != total and acc.is_main_process:
            vl = evaluate(spec.objective, raw, vrows.to(acc.device), n_t=cfg.eval_t_samples, seed=cfg.seed)
            logger.write({"step": step, "epoch": step * cfg.batch_size / n_rows, "val_loss": vl,
                          "val_t_samples": cfg.eval_t_samples})
        if time.time() - t_last_ckpt > cfg.checkpoint_seconds and acc.is_main_process:
            save_ckpt()
            t_last_ckpt = time.time()
        if progress is not None and task is not None:
            progress.update(task, completed=step)
    wall = time.time() - t0
    per_seq = evaluate_per_sequence(spec.objective, raw, vrows.to(acc.device), n_t=cfg.final_t_samples, seed=cfg.seed)
    val = per_seq.mean().item()
    log_all = [r for _, r in read_jsonl(log_path, skip_invalid=True)]
    train_tail = [r["train_loss"] for r in log_all if "train_loss" in r][-max(1, len(log_all) // 20):]
    if acc.is_main_process:
        logger.write({"step": step, "epoch": float(spec.epochs), "val_loss": val, "val_t_samples": cfg.final_t_samples})
        torch.save({"model": raw.state_dict(), "config": asdict(mcfg)}, run_dir / "model.pt")
        # per-sequence final losses: reports bootstrap over validation sequences without re-evaluating
        (run_dir / "val_per_sequence.json").write_text(json.dumps(per_seq.tolist()))
        if ckpt.exists():
            ckpt.unlink()
    D = spec.unique_tokens * spec.epochs
    return {
        "id": spec.run_id, "objective": spec.objective, "size": spec.size, "unique_tokens": spec.unique_tokens,
        "epochs": spec.epochs, "N": n_params, "N_total": raw.num_params(non_embedding=False), "D": D,
        "C": 6.0 * n_params * D, "tokens_seen": step * cfg.batch_size * tokens_per_row, "steps": step,
        "train_loss": sum(train_tail) / len(train_tail) if train_tail else None, "val_loss": val,
        "best_val_loss": min([r["val_loss"] for r in log_all if "val_loss" in r] + [val]),
        "val_estimator": f"ELBO ({cfg.final_t_samples} stratified t)" if kind == "mdm" else
                         "exact NLL" + (" (left to right)" if kind == "ordered" else ""),
        "tokenizer": corpus.tokenizer.name, "seq_len": cfg.seq_len, "wall_s": wall,
        "tokens_per_s": step * cfg.batch_size * tokens_per_row / max(wall, 1e-9),
    }


def run_sweep(cfg: SweepConfig, show_progress: bool = True) -> list[dict]:
    """Run every unfinished cell of the grid; returns all result records (old and new)."""
    from accelerate import Accelerator
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    corpus = build_corpus(cfg.corpus)
    (out / "corpus.txt").write_text(
        f"tokenizer: {corpus.tokenizer.name}\ntrain tokens available: {corpus.train.numel()}\n"
        f"val tokens: {corpus.val.numel()}\nval docs: {', '.join(corpus.val_docs)}\n"
        f"train docs (in order): {', '.join(corpus.train_docs)}\n"
    )
    results = JsonlAppender(out / "results.jsonl", key="id")
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
    specs = grid(cfg)
    todo = [s for s in specs if s.run_id not in results]
    console = _console()
    console.print(f"sweep: {len(specs)} runs, {len(specs) - len(todo)} done, {len(todo)} to go -> {out}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not show_progress or not acc.is_main_process) as progress:
        overall = progress.add_task("runs", total=len(specs), completed=len(specs) - len(todo))
        task = progress.add_task("run", total=1)
        for spec in todo:
            rec = train_run(spec, corpus, cfg, out / "runs" / spec.run_id, acc, progress, task)
            if acc.is_main_process:
                results.write(rec)
                console.print(f"{rec['id']}: val {rec['val_loss']:.4f} train {rec['train_loss']:.4f} "
                              f"({rec['wall_s']:.0f}s, {rec['tokens_per_s']:.0f} tok/s)", highlight=False)
            progress.advance(overall)
    os.sync()
    return [r for _, r in read_jsonl(out / "results.jsonl", skip_invalid=True)]
