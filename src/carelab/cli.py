"""The ``carelab`` command line: one Typer app with a sub-app per system.

Heavy libraries (torch, transformers) are imported inside commands so ``carelab --help`` stays instant.
"""

from __future__ import annotations

import logging

import typer

from carelab.care.cli.data import data_app, serve_command
from carelab.care.cli.main import app as care_app
from carelab.care.cli.main import demo_command
from carelab.diffusion.cli import app as diffusion_app
from carelab.lora.cli import app as lora_app
from carelab.watermark.cli import app as watermark_app

app = typer.Typer(
    name="carelab",
    help="CARE native retrieval-augmented reasoning, LoRA-Pro, code-watermark robustness, diffusion vs AR LMs.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(care_app, name="care", help="CARE: train/evaluate LLMs that quote their context while reasoning.")
app.add_typer(lora_app, name="lora", help="LoRA variants and the LoRA-Pro optimizer; gradient-fidelity experiment.")
app.add_typer(watermark_app, name="watermark", help="KGW/Unigram code watermarks vs semantics-preserving edits.")
app.add_typer(diffusion_app, name="diffusion", help="Masked-diffusion vs autoregressive LMs under data constraints.")
app.add_typer(data_app, name="data", help="Datasets: synthetic offline worlds and native-format conversion.")
app.command("serve", help="OpenAI-compatible chat server for any model spec (+adapter), on 127.0.0.1.")(serve_command)
app.command("demo", help="The embedded model answers bundled CARE questions; prints rewards and a summary.")(
    demo_command
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logs.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":  # pragma: no cover
    app()
