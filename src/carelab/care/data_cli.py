"""``carelab data …``, ``carelab care sft-data`` and ``carelab serve`` (owned by the CARE data work)."""

from __future__ import annotations

import typer

data_app = typer.Typer(no_args_is_help=True)


def sft_data_command() -> None:
    """Not built yet."""
    raise typer.Exit(1)


def serve_command() -> None:
    """Not built yet."""
    raise typer.Exit(1)
