"""Semantics-preserving code edits (the attacks of "Is the Watermarking of LLM-Generated Code Robust?").

Why libcst: edits must keep comments and formatting and act on real syntax, not on text. Every edit
chooses a random *valid* location (unlike the public code, which always edits the last statement),
and ``rename`` renames one variable consistently with scope analysis (the public code draws a new
name for every occurrence, which breaks programs). New identifiers come from a built-in word list
and never collide with any identifier, attribute, builtin or keyword already in the program, so
they cannot shadow anything.

``apply(code, name, seed, **opts)``: ``name`` is one of ``TRANSFORMS``. Options:
    target: only edit inside this top-level function (the scored completion lives there).
    depth: for ``mixed``, the number d of random edits (default 5); ``times`` repeats any other edit.
    params: let ``rename`` rename function parameters (default True; keyword-argument names used
        anywhere in the program are never renamed, but external keyword callers would break).
Invalid Python raises ``TransformError``; a program with no valid location raises
``NotApplicable`` (a ``TransformError``), never a silent pass-through.
"""

from __future__ import annotations

import builtins
import keyword
import random
from collections.abc import Callable, Sequence

import libcst as cst
from libcst.metadata import ComprehensionScope, FunctionScope, MetadataWrapper, ScopeProvider

TRANSFORMS = ("add_dead_code", "rename", "insert_print", "wrap_try_catch", "mixed")
BASE_TRANSFORMS = TRANSFORMS[:-1]

_WORDS = (
    "alpha", "amber", "anchor", "apple", "arrow", "atlas", "badge", "basin", "beacon", "birch", "blossom",
    "breeze", "bridge", "cable", "canyon", "carbon", "cedar", "cipher", "cliff", "cloud", "comet", "copper",
    "coral", "crane", "crystal", "delta", "dune", "ember", "falcon", "fern", "fjord", "flint", "garnet",
    "glacier", "granite", "harbor", "hazel", "heron", "island", "ivory", "jasper", "kernel", "lagoon",
    "lantern", "ledger", "maple", "marble", "meadow", "meteor", "nectar", "nimbus", "oasis", "onyx", "orbit",
    "otter", "pebble", "pepper", "pixel", "prism", "quartz", "raven", "reef", "ripple", "river", "saffron",
    "sierra", "signal", "spruce", "summit", "tangle", "thistle", "timber", "topaz", "tundra", "velvet",
    "willow", "zenith",
)
_FORBIDDEN_DYNAMIC = {"locals", "vars", "eval", "exec", "globals", "__dict__"}


class TransformError(ValueError):
    """The input is not valid Python (or a transform produced invalid code: a bug worth reporting)."""


class NotApplicable(TransformError):
    """The program has no location where this edit is valid (e.g. nothing to rename)."""


# ----------------------------------------------------------------------------- helpers
def parse(code: str) -> cst.Module:
    """Parse with libcst, turning any syntax problem into ``TransformError`` (checked by ``compile`` too)."""
    try:
        compile(code, "<program>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        raise TransformError(f"not valid Python: {exc}") from None
    try:
        return cst.parse_module(code)
    except cst.ParserSyntaxError as exc:
        raise TransformError(f"libcst cannot parse the program: {exc}") from None


class _Identifiers(cst.CSTVisitor):
    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_Name(self, node: cst.Name) -> None:
        self.names.add(node.value)


def _taken(module: cst.Module) -> set[str]:
    v = _Identifiers()
    module.visit(v)
    return v.names | set(dir(builtins)) | set(keyword.kwlist) | set(getattr(keyword, "softkwlist", []))


class _Fresh:
    """Draws identifiers that do not occur anywhere in the program (so nothing is shadowed)."""

    def __init__(self, module: cst.Module, rng: random.Random):
        self.taken = _taken(module)
        self.rng = rng

    def __call__(self) -> str:
        for attempt in range(1000):
            name = f"{self.rng.choice(_WORDS)}_{self.rng.choice(_WORDS)}"
            if attempt > 50:
                name += str(self.rng.randrange(10_000))
            if name not in self.taken:
                self.taken.add(name)
                return name
        raise RuntimeError("could not draw a fresh identifier")  # pragma: no cover


def _is_docstring(stmt: cst.CSTNode) -> bool:
    return (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1
            and isinstance(stmt.body[0], cst.Expr)
            and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString)))


class _Blocks(cst.CSTVisitor):
    """Indented blocks whose nearest enclosing def/class is a function (optionally inside ``target``)."""

    def __init__(self, target: str | None, target_node: cst.FunctionDef | None = None):
        self.target = target
        self.target_node = target_node
        self.blocks: list[tuple[cst.IndentedBlock, bool]] = []  # (block, is a function body)
        self._stack: list[cst.CSTNode] = []
        self._in_target = 0
        self._depth = 0

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        hit = node is self.target_node
        self._in_target += hit
        self._stack.append(node)
        self._depth += 1
        if isinstance(node.body, cst.IndentedBlock) and self._ok():
            self.blocks.append((node.body, True))

    def leave_FunctionDef(self, node: cst.FunctionDef) -> None:
        self._stack.pop()
        self._depth -= 1
        if node is self.target_node:
            self._in_target -= 1

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self._stack.append(node)
        self._depth += 1

    def leave_ClassDef(self, node: cst.ClassDef) -> None:
        self._stack.pop()
        self._depth -= 1

    def _ok(self) -> bool:
        in_func = bool(self._stack) and isinstance(self._stack[-1], cst.FunctionDef)
        return in_func and (self.target is None or self._in_target > 0)

    def visit_IndentedBlock(self, node: cst.IndentedBlock) -> None:
        if self._stack and not any(node is b for b, _ in self.blocks) and self._ok():
            self.blocks.append((node, False))


def _blocks(module: cst.Module, target: str | None) -> list[tuple[cst.IndentedBlock, bool]]:
    node = _last_def(module, target) if target is not None else None
    v = _Blocks(target, node)
    module.visit(v)
    return v.blocks


def _last_def(module: cst.Module, name: str) -> cst.FunctionDef:
    """The top-level definition of ``name`` that is in force (the last one), or ``NotApplicable``."""
    found = None
    for s in module.body:
        if isinstance(s, cst.FunctionDef) and s.name.value == name:
            found = s
    if found is None:
        raise NotApplicable(f"no top-level function named {name!r}")
    return found


class _ReplaceBlock(cst.CSTTransformer):
    def __init__(self, block: cst.IndentedBlock, body: Sequence[cst.BaseStatement]):
        self.block, self.body = block, list(body)

    def leave_IndentedBlock(self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock):
        if original_node is self.block:
            return updated_node.with_changes(body=self.body)
        return updated_node


def _first_editable(block: cst.IndentedBlock, is_func_body: bool) -> int:
    return 1 if is_func_body and block.body and _is_docstring(block.body[0]) else 0


def _pick_block(module: cst.Module, rng: random.Random, target: str | None,
                need_statement: bool = False) -> tuple[cst.IndentedBlock, int]:
    blocks = _blocks(module, target)
    choices = []
    for block, is_func in blocks:
        start = _first_editable(block, is_func)
        if need_statement and len(block.body) <= start:
            continue
        choices.append((block, start))
    if not choices:
        raise NotApplicable("no function body to edit" + (f" in {target!r}" if target else ""))
    return rng.choice(choices)


def _stmt(src: str) -> cst.BaseStatement:
    return cst.parse_statement(src)


def _literal(rng: random.Random) -> str:
    return rng.choice([str(rng.randrange(1000)), repr(rng.choice(_WORDS)), f"{rng.randrange(100)}.{rng.randrange(10)}",
                       "None", "True", "[]"])


# ----------------------------------------------------------------------------- the edits
def add_dead_code(module: cst.Module, rng: random.Random, target: str | None = None) -> cst.Module:
    """Insert a statement that never changes behaviour (an unused assignment or an unreachable branch)."""
    block, start = _pick_block(module, rng, target)
    fresh = _Fresh(module, rng)
    v, w = fresh(), fresh()
    c1, c2 = _literal(rng), _literal(rng)
    template = rng.randrange(4)
    if template == 0:  # the paper's pattern
        new = [_stmt(f"{v} = {c1}\n"), _stmt(f"if {v} != {v}:\n    {w} = {c2}\n")]
    elif template == 1:
        new = [_stmt(f"if False:\n    {v} = {c1}\n")]
    elif template == 2:
        new = [_stmt(f"for {v} in range(0):\n    {w} = {c1}\n")]
    else:
        new = [_stmt(f"{v} = {c1}\n")]
    pos = rng.randint(start, len(block.body))
    body = list(block.body[:pos]) + new + list(block.body[pos:])
    return module.visit(_ReplaceBlock(block, body))


def insert_print(module: cst.Module, rng: random.Random, target: str | None = None) -> cst.Module:
    """Insert ``print(<constant>)`` at a random position of a random function block."""
    block, start = _pick_block(module, rng, target)
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
    new = _stmt(f"print({words!r})\n")
    pos = rng.randint(start, len(block.body))
    body = list(block.body[:pos]) + [new] + list(block.body[pos:])
    return module.visit(_ReplaceBlock(block, body))


_EXCEPTIONS = ("Exception", "BaseException", "ValueError", "(TypeError, ValueError)", "ArithmeticError",
               "LookupError")


def wrap_try_catch(module: cst.Module, rng: random.Random, target: str | None = None) -> cst.Module:
    """Wrap a random statement in ``try: ... except <E>: raise`` (the handler re-raises: same behaviour)."""
    blocks = []
    for block, is_func in _blocks(module, target):
        start = _first_editable(block, is_func)
        for i in range(start, len(block.body)):
            s = block.body[i]
            if isinstance(s, cst.SimpleStatementLine) and any(
                    isinstance(x, (cst.Global, cst.Nonlocal)) for x in s.body):
                continue
            blocks.append((block, i))
    if not blocks:
        raise NotApplicable("no statement to wrap" + (f" in {target!r}" if target else ""))
    block, i = rng.choice(blocks)
    stmt = block.body[i]
    fresh = _Fresh(module, rng)
    exc = rng.choice(_EXCEPTIONS)
    if rng.random() < 0.5:
        v = fresh()
        handler_src = f"try:\n    pass\nexcept {exc} as {v}:\n    raise {v}\n"
    else:
        handler_src = f"try:\n    pass\nexcept {exc}:\n    raise\n"
    template = _stmt(handler_src)
    assert isinstance(template, cst.Try)
    inner = stmt.with_changes(leading_lines=[])
    wrapped = template.with_changes(body=cst.IndentedBlock(body=[inner]), leading_lines=stmt.leading_lines)
    body = list(block.body[:i]) + [wrapped] + list(block.body[i + 1:])
    return module.visit(_ReplaceBlock(block, body))


class _Renamer(cst.CSTTransformer):
    def __init__(self, names: set[int], funcs: set[int], new: str):
        self.names, self.funcs, self.new = names, funcs, new

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name):
        return updated_node.with_changes(value=self.new) if id(original_node) in self.names else updated_node

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef):
        if id(original_node) in self.funcs:
            return updated_node.with_changes(name=updated_node.name.with_changes(value=self.new))
        return updated_node


class _Facts(cst.CSTVisitor):
    """Names that make renaming unsafe: global/nonlocal declarations, keyword-argument names, dynamic access."""

    def __init__(self) -> None:
        self.declared: set[str] = set()
        self.keywords: set[str] = set()
        self.dynamic = False
        self.walrus: set[str] = set()

    def visit_Global(self, node: cst.Global) -> None:
        self.declared.update(n.name.value for n in node.names)

    def visit_Nonlocal(self, node: cst.Nonlocal) -> None:
        self.declared.update(n.name.value for n in node.names)

    def visit_Arg(self, node: cst.Arg) -> None:
        if node.keyword is not None:
            self.keywords.add(node.keyword.value)

    def visit_Name(self, node: cst.Name) -> None:
        if node.value in _FORBIDDEN_DYNAMIC:
            self.dynamic = True

    def visit_NamedExpr(self, node: cst.NamedExpr) -> None:
        if isinstance(node.target, cst.Name):
            self.walrus.add(node.target.value)


def rename_candidates(module: cst.Module, target: str | None = None,
                      params: bool = True) -> tuple[cst.Module, list[tuple[str, set[int], set[int]]]]:
    """Variables that can be renamed safely: (name, ids of its Name nodes, ids of its FunctionDef nodes).

    Returned node ids refer to the returned module (the metadata wrapper's copy).
    """
    wrapper = MetadataWrapper(module)
    mod = wrapper.module
    facts = _Facts()
    mod.visit(facts)
    if facts.dynamic:
        return mod, []
    scopes = wrapper.resolve(ScopeProvider)
    target_node = _last_def(mod, target) if target is not None else None
    all_scopes = {s for s in scopes.values() if s is not None}
    accesses_by_ref: dict[int, list] = {}
    for sc in all_scopes:
        for acc in sc.accesses:
            for ref in acc.referents:
                accesses_by_ref.setdefault(id(ref), []).append(acc)
    out = []
    for sc in all_scopes:
        if not isinstance(sc, (FunctionScope, ComprehensionScope)):
            continue
        if target_node is not None and not _inside(sc, target_node):
            continue
        groups: dict[str, list] = {}
        for a in sc.assignments:
            if getattr(a, "scope", None) is sc and hasattr(a, "node"):
                groups.setdefault(a.name, []).append(a)
        for name, assigns in groups.items():
            if (name in facts.declared or name in facts.walrus or name.startswith("__")
                    or name in ("self", "cls") or (name in facts.keywords)):
                continue
            name_ids: set[int] = set()
            func_ids: set[int] = set()
            ok = True
            for a in assigns:
                node = a.node
                if isinstance(node, cst.Name):
                    name_ids.add(id(node))
                elif isinstance(node, cst.Param) and params:
                    name_ids.add(id(node.name))
                elif isinstance(node, cst.FunctionDef):
                    func_ids.add(id(node))
                else:  # imports, classes, params when disabled: leave the whole variable alone
                    ok = False
                    break
                for acc in accesses_by_ref.get(id(a), []):
                    if not isinstance(acc.node, cst.Name) or any(r not in assigns for r in acc.referents):
                        ok = False
                        break
                    name_ids.add(id(acc.node))
                if not ok:
                    break
            if ok and (name_ids or func_ids):
                out.append((name, name_ids, func_ids))
    out.sort(key=lambda t: (t[0], min(t[1] | t[2])))
    return mod, out


def _inside(scope, func: cst.FunctionDef) -> bool:
    s = scope
    while s is not None:
        if getattr(s, "node", None) is func:
            return True
        parent = getattr(s, "parent", None)
        if parent is s:
            break
        s = parent
    return False


def rename(module: cst.Module, rng: random.Random, target: str | None = None, params: bool = True) -> cst.Module:
    """Rename one random variable (all its uses, scope-aware) to a fresh name that shadows nothing."""
    mod, cands = rename_candidates(module, target, params)
    if not cands:
        raise NotApplicable("no variable can be renamed safely" + (f" in {target!r}" if target else ""))
    name, name_ids, func_ids = rng.choice(cands)
    new = _Fresh(mod, rng)()
    return mod.visit(_Renamer(name_ids, func_ids, new))


_EDITS: dict[str, Callable[..., cst.Module]] = {
    "add_dead_code": add_dead_code,
    "rename": rename,
    "insert_print": insert_print,
    "wrap_try_catch": wrap_try_catch,
}


def apply(code: str, name: str, seed: int = 0, *, target: str | None = None, depth: int = 5, times: int = 1,
          params: bool = True) -> str:
    """Apply the edit ``name`` (see ``TRANSFORMS``) to ``code`` and return the new program.

    ``mixed`` applies ``depth`` edits drawn at random from the four base edits (an edit with no valid
    location is replaced by another draw). Other edits are applied ``times`` times.

    >>> print(apply("def f(x):\\n    return x\\n", "wrap_try_catch", seed=1))  # doctest: +ELLIPSIS
    def f(x):
        try:
            return x
        except ...
    """
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; choose from {', '.join(TRANSFORMS)}")
    module = parse(code)
    rng = random.Random(seed)
    if name == "mixed":
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        done = 0
        failures = 0
        while done < depth:
            edit = rng.choice(BASE_TRANSFORMS)
            try:
                module = _run(edit, module, rng, target, params)
                done += 1
            except NotApplicable:
                failures += 1
                if failures > 20 * depth:
                    raise
    else:
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        for _ in range(times):
            module = _run(name, module, rng, target, params)
    out = module.code
    try:
        compile(out, "<transformed>", "exec", dont_inherit=True)
    except SyntaxError as exc:  # pragma: no cover - a bug in an edit
        raise TransformError(f"internal error: {name} produced invalid code ({exc})") from None
    return out


def apply_steps(code: str, name: str, seed: int = 0, steps: int = 5, *, target: str | None = None,
                params: bool = True) -> list[tuple[str, int]]:
    """Progressive edits for a depth sweep: element ``d-1`` is the program after ``d`` edits.

    Each element is ``(program, edits actually made)``; when no valid location is left (``NotApplicable``)
    later depths repeat the last program with the same count. For ``mixed`` each step draws one of the four
    base edits. Depth d therefore always extends depth d-1, so detection can only be compared fairly.
    """
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; choose from {', '.join(TRANSFORMS)}")
    module = parse(code)
    out: list[tuple[str, int]] = []
    made = 0
    stuck = False
    for step in range(steps):
        rng = random.Random(f"{seed}:{name}:{step}")
        if not stuck:
            edits = list(BASE_TRANSFORMS) if name == "mixed" else [name]
            rng.shuffle(edits)
            if name == "mixed":  # one uniform draw first, the rest only as fallbacks
                first = rng.choice(BASE_TRANSFORMS)
                edits = [first] + [e for e in edits if e != first]
            for edit in edits:
                try:
                    module = _run(edit, module, rng, target, params)
                    made += 1
                    break
                except NotApplicable:
                    continue
            else:
                stuck = True
        out.append((module.code, made))
    return out


def _run(edit: str, module: cst.Module, rng: random.Random, target: str | None, params: bool) -> cst.Module:
    if edit == "rename":
        return rename(module, rng, target, params)
    return _EDITS[edit](module, rng, target)


__all__ = ["BASE_TRANSFORMS", "NotApplicable", "TRANSFORMS", "TransformError", "apply", "apply_steps", "parse"]
