"""The ``carelab care`` / ``carelab data`` commands (Typer): ``main`` train+ask, ``data``, ``eval``."""
