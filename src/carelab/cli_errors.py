"""The one way a ``carelab`` command reports a user's mistake: ``fail()`` prints one line and exits with status 2.

Every sub-CLI (care, data, serve, lora, watermark, diffusion) calls it, so a bad file, flag or model spec reads
the same everywhere and never shows a traceback.
"""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(message: object, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` on stderr (one line; colour only on a terminal) and end the command with ``code``.

    ``message`` may be an exception (``InputError`` already names file, line and field).
    """
    text = " ".join(str(message).split("\n"))
    typer.echo(typer.style("error:", fg="red", bold=True) + f" {text}", err=True)
    raise typer.Exit(code)
