"""Every ``python benchmarks/….py …`` line in README.md and docs/*.md parses with that script's own options, and the
variants it names exist.

Why: each measured table in the docs names the command that produced it; a renamed option or variant would leave
the number with no way to re-run it. The script's ``main`` is called with the doc's arguments and stopped right
after its argument parser accepted them, so nothing is measured here.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"python (benchmarks/\w+\.py)([^`\n|#]*)")
#: option -> the script's dict of names that option takes (comma-separated)
NAMED_CHOICES = {"variants": "VARIANTS", "configs": "CONFIGS"}


def _doc_commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for doc in DOCS:
        text = doc.read_text().replace("\\\n", " ")  # shell line continuations
        for match in COMMAND.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{doc.relative_to(ROOT)}:{line}", match.group(1), shlex.split(match.group(2))))
    return found


COMMANDS = _doc_commands()


class _Parsed(Exception):
    """Raised by the patched parser: the arguments were accepted; stop before the benchmark runs."""

    def __init__(self, namespace: argparse.Namespace):
        super().__init__()
        self.namespace = namespace


def _load(script: str):
    path = ROOT / script
    sys.path.insert(0, str(path.parent))  # the scripts import their sibling helpers
    try:
        spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def test_the_docs_name_benchmark_commands():
    assert len(COMMANDS) >= 10, COMMANDS  # the regex still finds them


@pytest.mark.parametrize(("where", "script", "args"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_documented_benchmark_command_parses(where, script, args, monkeypatch):
    assert (ROOT / script).is_file(), f"{where}: {script} does not exist"
    module = _load(script)
    real_parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        raise _Parsed(real_parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed) as parsed:
        module.main()
    for option, table in NAMED_CHOICES.items():
        chosen = getattr(parsed.value.namespace, option, None)
        if chosen and hasattr(module, table):
            unknown = set(chosen.split(",")) - set(getattr(module, table))
            assert not unknown, f"{where}: {script} has no {option} {sorted(unknown)}"
