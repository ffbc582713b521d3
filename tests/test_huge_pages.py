"""carelab turns PyTorch's transparent-huge-page allocation on by default, and an explicit choice wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = "import carelab, os; print(os.environ[carelab.HUGE_PAGES_ENV])"


def _env_after_import(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    proc = subprocess.run([sys.executable, "-c", _PROBE], env={**base, **env}, capture_output=True, text=True,
                          check=True)
    return proc.stdout.strip()


def test_import_turns_huge_pages_on():
    assert _env_after_import() == "1"


@pytest.mark.parametrize("value", ["0", "1"])
def test_explicit_setting_wins(value):
    assert _env_after_import(THP_MEM_ALLOC_ENABLE=value) == value


def test_set_before_torch_reads_it():
    """The CLI imports carelab (and so sets the variable) before any command imports torch: torch reads it once."""
    code = "import sys, carelab.cli; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
