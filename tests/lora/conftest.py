"""LoRA tests run single-threaded: tiny matrices on a shared 2-core box are faster without thread contention."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_threaded(one_thread) -> None:
    """Every LoRA test under the shared ``one_thread`` fixture (tests/conftest.py)."""
