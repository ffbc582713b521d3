"""User-facing warnings: one clean line on stderr, still catchable through ``warnings``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from carelab.runs import CarelabWarning, warn


def test_warn_prints_one_line_without_source():
    code = "from carelab.runs import warn\ndef run_eval():\n    warn('3 of 3 prompts [cut]')\nrun_eval()\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert res.stderr == "warning: 3 of 3 prompts [cut]\n"


def test_warn_is_a_real_warning():
    with pytest.warns(CarelabWarning, match="cut"):
        warn("cut")
