"""The layers docs/architecture.md draws hold in the code: base < core < services < systems < care < cli, and no
import loop.

Why: the picture is read from the imports once; without a check a new import (even one inside a function) can
quietly make it false. Every ``carelab`` import is read with ``ast``, function-level ones included. An exception
would have to be named in ``KNOWN``/``KNOWN_LOOPS`` and listed in the docs; today there are none.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
BASE = {"memory", "ngram_draft", "onednn"}
CORE = {"runs", "models", "generation", "options", "cli_errors", "stats", "report"}
SERVICES = {"streaming", "presets", "distributed", "vllm_support"}
SYSTEMS = {"lora", "watermark", "diffusion"}
#: (importer, imported) pairs allowed to run against the layers, as docs/architecture.md would list them: none.
KNOWN: set[tuple[str, str]] = set()
KNOWN_LOOPS: list[set[str]] = []


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str:
    """The longest prefix of a dotted name that is a carelab module (``pkg.func`` -> ``pkg``)."""
    while name not in modules:
        name = name.rsplit(".", 1)[0]
    return name


def import_graph() -> dict[str, set[str]]:
    """carelab module -> the carelab modules it imports anywhere in its body."""
    files = {_module(p): p for p in (SRC / "carelab").rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names |= {f"{node.module}.{a.name}" for a in node.names}
        graph[mod] = {_resolve(n, modules) for n in names if n.split(".")[0] == "carelab"} - {mod, "carelab"}
    return graph


def _top(mod: str) -> str:
    return mod.split(".")[1] if mod.count(".") else ""


def test_each_layer_imports_only_the_layers_below():
    core = BASE | CORE
    below = {**{m: set() for m in BASE}, **{m: BASE for m in CORE}, **{m: core | SERVICES for m in SERVICES},
             **{m: core | {m} for m in SYSTEMS}, "care": core | SERVICES | {"lora", "care"}}
    wrong = {(a, b) for a, targets in import_graph().items() if _top(a) in below
             for b in targets if _top(b) not in below[_top(a)]}
    assert wrong == KNOWN, f"new: {sorted(wrong - KNOWN)}; fixed (delete from KNOWN and the docs): {sorted(KNOWN - wrong)}"


def test_no_import_loops_but_the_known_ones():
    graph = import_graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    reachable = {m: reach(m) for m in graph}
    loops = {frozenset({a} | {b for b in reachable[a] if a in reachable[b]}) for a in graph if a in reachable[a]}
    assert loops == {frozenset(k) for k in KNOWN_LOOPS}, sorted(map(sorted, loops))
