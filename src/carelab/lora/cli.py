"""`carelab lora` commands: the gradient-fidelity experiment and a list of the adapter variants.

Heavy imports (torch, peft) happen inside the commands so ``carelab --help`` stays instant. User
errors (unknown method, missing task file) become one-line messages and exit code 2.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from carelab.cli_errors import fail

app = typer.Typer(no_args_is_help=True)


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what}: expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip().lower() for x in text.split(",") if x.strip()]


@app.command("fidelity")
def fidelity_command(
    model: str = typer.Option("tiny-random-qwen2", "--model", help="Model spec (tiny-random-qwen2, smollm2-135m-instruct, HF folder)."),
    task: str = typer.Option("bigram", "--task", help="bigram | copy | path to a text file (one example per line)."),
    methods: str = typer.Option("lora,lora-pro,full", "--methods", help="Comma list of lora, rslora, lora+, dora, pissa, lora-ga, lora-fa, lora-pro, lora-pro-full, full "
                         "(lora+, dora, pissa, lora-ga, lora-fa, lora-pro-full run with AdamW only)."),
    optimizers: str = typer.Option("sgd,adamw", "--optimizers", help="Comma list of sgd, adamw."),
    sgd_lrs: str = typer.Option("0.1,0.3,1,3", "--sgd-lrs", help="SGD learning-rate grid."),
    adamw_lrs: str = typer.Option("0.001,0.003,0.01,0.03", "--adamw-lrs", help="AdamW learning-rate grid."),
    seeds: int = typer.Option(3, "--seeds", help="Seeds per (method, optimizer, lr)."),
    steps: int = typer.Option(40, "--steps", help="Training steps per run."),
    batch_size: int = typer.Option(16, "--batch-size"),
    seq_len: int = typer.Option(32, "--seq-len"),
    rank: int = typer.Option(4, "--rank", help="LoRA rank r."),
    alpha: float = typer.Option(8.0, "--alpha", help="LoRA alpha (s = alpha/r, or alpha/sqrt(r) for rslora)."),
    target_modules: str = typer.Option("all-linear", "--target-modules"),
    init_std: float = typer.Option(0.0, "--init-std", help="Re-initialise the (random) model's linear/embedding "
                                   "weights with this std; 0 keeps them (the tiny models' 0.02 caps the logits)."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads (1 is fastest for tiny models on a shared box)."),
    out: Path = typer.Option(Path("runs/lora-fidelity"), "--out", help="Output folder (resumes if it has runs.jsonl)."),
) -> None:
    """Every LoRA variant vs full fine-tuning (lr grid × seeds, dev-chosen lr, test metric) and LoRA-Pro's gradient fidelity."""
    from carelab.lora.fidelity import FidelityConfig, load_records, run_experiment, write_report
    from carelab.runs import InputError

    cfg = FidelityConfig(model=model, task=task, methods=_names(methods), optimizers=_names(optimizers),
                         sgd_lrs=_floats(sgd_lrs, "--sgd-lrs"), adamw_lrs=_floats(adamw_lrs, "--adamw-lrs"),
                         seeds=seeds, steps=steps, batch_size=batch_size, seq_len=seq_len, rank=rank, alpha=alpha,
                         target_modules=target_modules, threads=threads,
                         init_std=init_std or None)
    try:
        cfg.validate()
        run_experiment(cfg, out)
    except (InputError, ValueError) as exc:
        fail(exc)
    except Exception as exc:  # model resolution errors etc.: one line, no traceback
        if type(exc).__name__ == "ModelSpecError":
            fail(exc)
        raise
    records = load_records(cfg, out)
    command = "carelab lora " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("fidelity"):]) \
        if "fidelity" in sys.argv else None
    summary = write_report(records, cfg, out, command=command)
    typer.echo(f"wrote {summary} (+ closeness.csv, summary.csv, best_lr.csv, fidelity.csv, steps.csv, loss_curves.png, "
               "gap_to_full.png, fidelity.png)")


@app.command("variants")
def variants_command() -> None:
    """List the adapter names accepted by `carelab care sft/grpo --adapter`."""
    from carelab.lora.variants import ADAPTER_CHOICES

    notes = {
        "lora": "W0 + (α/r)·B·A, A random, B = 0",
        "rslora": "scale α/√r (stable at high rank)",
        "dora": "magnitude/direction decomposition",
        "pissa": "A, B from the top-r SVD of W0",
        "lora-ga": "A, B aligned with estimated full gradients (needs training batches)",
        "lora+": "lr of B = 16 × lr of A",
        "lora-fa": "A frozen; B gets the best gradient for fixed A",
        "lora-pro": "A, B gradients adjusted toward the full fine-tuning gradient (LoRAProAdamW)",
        "full": "all parameters trained",
    }
    for name in ADAPTER_CHOICES:
        typer.echo(f"{name:10s} {notes[name]}")
