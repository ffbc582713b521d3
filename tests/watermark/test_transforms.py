"""Transforms: every edit changes every HumanEval solution and keeps it passing; Rename respects scopes."""

from __future__ import annotations

import json
import re

import pytest

from carelab.watermark.humaneval import load_problems
from carelab.watermark.sandbox import Limits, run_many
from carelab.watermark.transforms import TRANSFORMS, NotApplicable, TransformError, apply, apply_steps, parse

DYNAMIC = re.compile(r"\b(eval|exec|locals|vars|globals)\s*\(")


def _bundle(variants: list[tuple[str, str]], test: str, entry: str) -> str:
    """One sandboxed program that runs each variant + the tests in a fresh namespace (fewer processes)."""
    return (
        f"VARIANTS = {json.dumps(variants)}\nTEST = {json.dumps(test)}\n"
        "for name, src in VARIANTS:\n"
        "    ns = {'__name__': '__main__'}\n"
        "    try:\n"
        f"        exec(compile(src + '\\n\\n' + TEST + '\\n\\ncheck({entry})\\n', name, 'exec'), ns)\n"
        "    except AssertionError as exc:\n"
        "        raise AssertionError('variant ' + name + ' failed its tests') from exc\n"
    )


@pytest.mark.timeout(900)  # 164 solutions × 5 edits in the sandbox: ~100 s here, more under load
def test_every_transform_on_every_canonical_solution_changes_and_passes():
    problems = load_problems()
    assert len(problems) == 164
    bundles, not_applicable = [], []
    for i, p in enumerate(problems):
        original = p.prompt + p.canonical_solution
        variants = []
        for name in TRANSFORMS:
            try:
                new = apply(original, name, seed=i, target=p.entry_point, depth=5)
            except NotApplicable:
                not_applicable.append((p.task_id, name))
                continue
            assert new != original, (p.task_id, name)
            variants.append((f"{p.task_id}:{name}", new))
        bundles.append(_bundle(variants, p.test, p.entry_point))
    # Rename refuses only programs whose names may be looked up dynamically (eval/exec/locals...).
    assert not_applicable == [("HumanEval/160", "rename")]  # the documented refusal: its solution calls eval
    for task_id, name in not_applicable:
        prob = next(p for p in problems if p.task_id == task_id)
        assert name == "rename" and DYNAMIC.search(prob.canonical_solution), (task_id, name)
    results = run_many(bundles, Limits(wall_s=60, cpu_s=60, fsize_mb=64), workers=2)
    failures = [(p.task_id, r.status, r.detail) for p, r in zip(problems, results, strict=True) if r.status != "pass"]
    assert not failures, failures


TRICKY = '''
import math

counter = 10
LIMIT = 3


class Box:
    def __init__(self, count):
        self.count = count

    def grow(self, by=1):
        self.count += by
        return self.count


def bump():
    global counter
    counter += 1
    return counter


def make_adder(base):
    total = base

    def add(step, scale=2):
        nonlocal total
        total += step * scale
        return total

    return add


def solve(values, key=None):
    """docstring mentions values and total"""
    result = []
    squares = [x * x for x in values if x > 0]
    pairs = {x: [x for x in range(x)] for x in range(LIMIT)}
    lookup = {"count": len(values)}
    box = Box(count=lookup["count"])
    box.grow(by=2)
    adder = make_adder(base=1)
    adder(3)
    gen = sum(v for v in values)
    fn = lambda value, scale=3: value * scale
    for idx, value in enumerate(values):
        if key is not None and key(value):
            continue
        result.append((idx, fn(value), fn(value=value, scale=1)))
    try:
        math.sqrt(-1)
    except ValueError as err:
        result.append(str(err))
    with open(__file__) if False else _null() as handle:
        result.append(handle)
    shadow = [counter for counter in range(2)]
    return result, squares, pairs, box.count, adder(1), gen, bump(), shadow, counter, sorted(values, key=abs)


class _null:
    def __enter__(self):
        return "ctx"

    def __exit__(self, *exc):
        return False
'''


def _run_solve(code: str):
    ns: dict = {"__name__": "tricky"}
    exec(compile(code, "<tricky>", "exec"), ns)
    return ns["solve"]([3, -1, 2], key=lambda v: v == 2)


@pytest.mark.parametrize("seed", range(12))
def test_rename_keeps_behaviour_on_tricky_scoping(seed):
    expected = _run_solve(TRICKY)
    renamed = apply(TRICKY, "rename", seed=seed, times=6)
    assert renamed != TRICKY
    assert _run_solve(renamed) == expected
    # attributes, keyword-argument names, globals and builtins keep their names
    for kept in ("self.count", "count=", "by=2", "base=1", "value=value", "scale=1", "global counter",
                 "key=abs", "key=None", "math.sqrt", "LIMIT", "enumerate", "Box("):
        assert kept in renamed, kept


def test_rename_is_consistent_and_fresh():
    code = "def f(a):\n    total = 0\n    for item in a:\n        total += item\n    return total\n"
    names_before = set(re.findall(r"[A-Za-z_]\w*", code))
    seen = set()
    for seed in range(8):
        new = apply(code, "rename", seed=seed)
        introduced = set(re.findall(r"[A-Za-z_]\w*", new)) - names_before
        assert len(introduced) == 1  # one variable, one new name, used everywhere
        seen |= introduced
        ns: dict = {}
        exec(new, ns)
        assert ns["f"]([1, 2, 3]) == 6
    assert len(seen) > 1


def test_transforms_act_at_random_locations():
    code = "def f(x):\n" + "".join(f"    x = x + {i}\n" for i in range(8)) + "    return x\n"
    outputs = {apply(code, "wrap_try_catch", seed=s) for s in range(10)}
    assert len(outputs) > 5  # not always the last statement
    positions = {apply(code, "insert_print", seed=s).splitlines().index(
        next(line for line in apply(code, "insert_print", seed=s).splitlines() if "print(" in line))
        for s in range(10)}
    assert len(positions) > 3


def test_target_restricts_edits_to_that_function_and_skips_docstrings():
    code = 'def helper(a):\n    return a\n\n\ndef main(b):\n    """doc"""\n    return helper(b)\n'
    for name in ("add_dead_code", "insert_print", "wrap_try_catch", "rename"):
        for seed in range(5):
            new = apply(code, name, seed=seed, target="main")
            assert new.split("def main")[0] == code.split("def main")[0], name
            body = new.split("def main(")[1].splitlines()
            assert body[1].strip() == '"""doc"""', (name, new)


def test_apply_steps_extends_previous_depth():
    code = "def f(x):\n    y = x + 1\n    return y\n"
    steps = apply_steps(code, "mixed", seed=3, steps=5, target="f")
    assert [n for _, n in steps] == [1, 2, 3, 4, 5]
    assert len({c for c, _ in steps}) == 5
    ns: dict = {}
    exec(steps[-1][0], ns)
    assert ns["f"](1) == 2


def test_invalid_python_and_missing_target_raise():
    with pytest.raises(TransformError, match="not valid Python"):
        apply("def f(:\n  pass\n", "rename")
    with pytest.raises(TransformError):
        parse("x = = 1")
    with pytest.raises(NotApplicable, match="nothing_here"):
        apply("def f():\n    return 1\n", "insert_print", target="nothing_here")
    with pytest.raises(NotApplicable):
        apply("x = 1\n", "add_dead_code")  # no function body anywhere
    with pytest.raises(ValueError, match="unknown transform"):
        apply("def f():\n    return 1\n", "paraphrase")


def test_depth_counts_only_programs_that_received_that_many_edits():
    """A program with nothing left to edit keeps its version; it must not count as surviving d edits."""
    from carelab.watermark.robustness import RobustnessConfig, compute_metrics, edited_at

    stuck = apply_steps("def f():\n    return 1\n", "rename", seed=0, steps=3, target="f")
    assert [n for _, n in stuck] == [0, 0, 0]  # nothing to rename: the program never changes
    cfg = RobustnessConfig(schemes=["kgw"], transforms=["rename"], depths=[1, 2])

    def rec(variant: str, i: int, edits: tuple[int, int], z: tuple[float, float]) -> dict:
        depths = {str(d): {"edits": n, "z": {"kgw": zz}, "changed": 0.2 * n} for d, n, zz in zip((1, 2), edits, z, strict=True)}
        return {"id": f"{variant}:{i}|rename", "gen": f"{variant}:{i}", "variant": variant, "transform": "rename",
                "depths": depths}

    # three watermarked programs take both edits and lose the watermark; one is stuck after one edit, z stays 5
    recs = [rec("kgw", i, (1, 2), (1.0, 0.0)) for i in range(3)] + [rec("kgw", 3, (1, 1), (5.0, 5.0))]
    recs += [rec("plain", i, (1, 2), (0.0, 0.0)) for i in range(4)]
    assert edited_at(recs[3], "2") is None and edited_at(recs[3], "1") is not None
    # the windowed detector (kgw-win) gets rows of its own; these records carry only the plain kgw z
    rows = {r["depth"]: r for r in compute_metrics(cfg, {r["id"]: r for r in recs}, {}, {})
            if r["scheme"] == "kgw" and r["transform"] == "rename"}
    assert (rows[1]["n_pos"], rows[1]["n_fewer_edits"], rows[1]["tpr"]) == (4, 0, 0.25)
    assert (rows[2]["n_pos"], rows[2]["n_neg"], rows[2]["n_fewer_edits"]) == (3, 4, 1)
    assert rows[2]["tpr"] == 0.0 and rows[2]["tokens_changed"] == pytest.approx(0.4)
