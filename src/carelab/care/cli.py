"""``carelab care …`` commands (ask, sft, grpo, eval, report, reproduce) and the top-level demo/serve."""

from __future__ import annotations

import typer

from carelab.care.data_cli import data_app, serve_command, sft_data_command

app = typer.Typer(no_args_is_help=True)
app.command("sft-data", help="Three-stage SFT data pipeline: reason -> keep correct -> inject evidence -> tag.")(
    sft_data_command
)


def demo_command() -> None:
    """Placeholder until the demo lands."""
    raise typer.Exit(0)
