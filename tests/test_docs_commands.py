"""Every ``carelab …`` line in README.md and docs/*.md code blocks parses with the real CLI; the README chain runs.

Docs drift silently: a renamed option or a ``--method`` spelling the command rejects only shows up when a reader
pastes it. Each line is resolved to its Click command and parsed with ``make_context`` (nothing runs), so unknown
commands/options, missing required options and bad values fail here. Schematic lines (``…`` or ``[optional]``)
are parsed leniently: unknown options still fail. The README's CARE chain is then executed on the tiny model.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from carelab.care.cli.eval import parse_method
from carelab.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"", "bash", "sh", "shell", "console", "text"}
STOP_TOKENS = {"<", ">", ">>", "|", "&&", "||", ";", "2>&1", "&"}
ELLIPSIS = {"…", "..."}
TINY = "tiny-random-qwen2"


@dataclass
class DocCommand:
    """One ``carelab`` invocation found in a doc: where it is, its arguments, whether it is schematic."""

    where: str
    args: list[str]
    schematic: bool
    error: str | None = None  # the line does not even split like a shell would

    def __str__(self) -> str:
        return f"{self.where}: carelab {' '.join(self.args)}"


def _shell_lines(markdown: str) -> list[tuple[int, str]]:
    """Lines of the shell code blocks of a Markdown text, with backslash continuations joined."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    pending, start = "", 0
    for lineno, line in enumerate(markdown.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().lower()
            continue
        if fence is None or fence not in SHELL_FENCES:
            continue
        if not pending:
            start = lineno
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        out.append((start, pending + stripped))
        pending = ""
    return out


#: multi-process launchers in front of ``-m carelab.cli`` (their own options are theirs, not carelab's)
LAUNCHER = re.compile(r"^(\$ )?(\S+=\S*\s+)*(torchrun|accelerate launch|python -m torch\.distributed\.run)\s.*?-m carelab\.cli\s")


def _carelab_args(line: str) -> tuple[list[str], bool] | None:
    """The arguments after ``carelab`` (wrappers like ``nice -n 10`` and launchers like ``torchrun … -m carelab.cli``
    dropped) and whether the line is schematic."""
    launched = LAUNCHER.match(line)
    if launched:
        line = "carelab " + line[launched.end():]
    if not re.match(r"^(\$ )?(\S+=\S*\s+|nice -n \d+\s+|timeout \d+\s+)*(\S*/)?carelab\s", line):
        return None
    tokens = shlex.split(line.removeprefix("$ "), comments=True)
    while tokens and (re.fullmatch(r"\w+=\S*", tokens[0]) or tokens[0] in ("nice", "-n", "timeout", "time")
                      or tokens[0].isdigit()):
        tokens = tokens[1:]
    if not tokens or Path(tokens[0]).name != "carelab":
        return None
    args: list[str] = []
    schematic = False
    for tok in tokens[1:]:
        if tok in STOP_TOKENS:
            break
        if tok.startswith("[") or tok.endswith("]"):
            schematic = True
            tok = tok.strip("[]")
        if tok in ELLIPSIS or "…" in tok:
            schematic = True
        if tok:
            args.append(tok)
    return args, schematic


def doc_commands() -> list[DocCommand]:
    found = []
    for path in DOCS:
        for lineno, line in _shell_lines(path.read_text(encoding="utf-8")):
            where = f"{path.relative_to(ROOT)}:{lineno}"
            try:
                parsed = _carelab_args(line)
            except ValueError as exc:  # e.g. an unbalanced quote
                found.append(DocCommand(where, [line], False, error=f"does not split as a shell line: {exc}"))
                continue
            if parsed is not None:
                found.append(DocCommand(where, *parsed))
    return found


COMMANDS = doc_commands()


class Rejected(Exception):
    """The CLI would refuse this doc line (Typer ships its own Click, so its error classes are not click's)."""


def _resolve(args: list[str]):
    """Walk the sub-command names to the leaf command; returns it, its context, the remaining args, its path."""
    cmd = typer.main.get_command(app)
    ctx = typer.Context(cmd, info_name="carelab")
    path: list[str] = []
    i = 0
    while hasattr(cmd, "get_command"):  # a group
        if i >= len(args) or args[i].startswith("-"):
            raise Rejected(f"`carelab {' '.join(path)}` needs a sub-command")
        sub = cmd.get_command(ctx, args[i])
        if sub is None:
            raise Rejected(f"no command {args[i]!r} under `carelab {' '.join(path)}`")
        path.append(args[i])
        cmd, ctx, i = sub, typer.Context(sub, info_name=args[i], parent=ctx), i + 1
    return cmd, ctx.parent, args[i:], " ".join(path)


def _fill_ellipses(cmd, rest: list[str]) -> list[str]:
    """``…`` after an option that takes a value becomes a dummy value; elsewhere it stands for omitted options."""
    takes_value = {name for p in cmd.params if p.param_type_name == "option" and not p.is_flag for name in p.opts}
    out: list[str] = []
    for tok in rest:
        if tok in ELLIPSIS or "…" in tok:
            if out and out[-1] in takes_value:
                out.append("X")
            continue
        out.append(tok)
    return out


def parse_doc_command(command: DocCommand):
    """Parse like the real CLI without running (``make_context``); raises :class:`Rejected` as the CLI would."""
    if command.error:
        raise Rejected(command.error)
    cmd, parent, rest, name = _resolve(command.args)
    rest = _fill_ellipses(cmd, rest)
    try:
        ctx = cmd.make_context(name.split()[-1], rest, parent=parent, resilient_parsing=command.schematic)
    except Exception as exc:
        if not hasattr(exc, "format_message"):  # Click's usage errors (bad/missing/unknown option) have one
            raise
        raise Rejected(exc.format_message()) from None
    return name, ctx


def test_docs_have_carelab_commands_to_check():
    assert len(COMMANDS) >= 30, [str(c) for c in COMMANDS]  # the extraction itself must keep finding them
    assert any(c.where.startswith("README.md") for c in COMMANDS)
    assert sum(not c.schematic for c in COMMANDS) >= 20


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.where)
def test_doc_command_parses_with_the_real_cli(command: DocCommand):
    try:
        name, ctx = parse_doc_command(command)
    except Rejected as exc:
        pytest.fail(f"{command}\n  rejected by the CLI: {exc}")
    if name == "care eval":
        for spec in ctx.params.get("method") or []:
            parse_method(spec)  # LABEL=METHOD@ADAPTER syntax: an InputError names the bad spec


def _trained_outputs() -> tuple[set[str], set[str]]:
    """``--out`` folders of the documented ``care sft`` and ``care grpo`` runs."""
    outs: dict[str, set[str]] = {"care sft": set(), "care grpo": set()}
    for command in COMMANDS:
        try:
            name, ctx = parse_doc_command(command)
        except Rejected:
            continue
        if name in outs and ctx.params.get("out"):
            outs[name].add(ctx.params["out"].rstrip("/"))
    return outs["care sft"], outs["care grpo"]


def test_documented_adapter_paths_are_folders_training_writes():
    """``care@DIR`` must name an SFT ``--out`` or a GRPO run's ``final-adapter``/``grpo-adapter``/``dev-best-adapter``
    folder."""
    from carelab.care.train.config import DEV_BEST_ADAPTER, FINAL_ADAPTER

    sft_outs, grpo_outs = _trained_outputs()
    assert sft_outs and grpo_outs
    specs = []
    for command in COMMANDS:
        name, ctx = parse_doc_command(command)
        if name == "care eval":
            specs += [(command, s) for s in ctx.params.get("method") or []]
    assert specs
    checked = 0
    for command, spec in specs:
        adapter = parse_method(spec).adapter
        if adapter is None:
            continue
        checked += 1
        folder = adapter.rstrip("/")
        ok = folder in sft_outs or Path(folder).name in (FINAL_ADAPTER, "grpo-adapter", DEV_BEST_ADAPTER)
        assert ok, f"{command}\n  {folder!r} is no folder `care sft`/`care grpo` writes ({FINAL_ADAPTER}/ of a GRPO --out)"
    assert checked


def _readme_chain() -> list[DocCommand]:
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## CARE in five commands", 1)[1]
    block = "```" + section.split("```")[1] + "```\n"
    commands = []
    for lineno, line in _shell_lines(block):
        parsed = _carelab_args(line)
        if parsed:
            commands.append(DocCommand(f"README.md (CARE block, line {lineno})", *parsed))
    return commands


# Extra options (a later value wins in Click) that make each README command cheap on the tiny model.
CHEAP = {
    "data synth": ["--n", "8", "--context-words", "30", "--distractors", "1"],
    "care sft-data": [],
    "care sft": ["--model", TINY, "--max-steps", "1", "--batch-size", "2", "--max-length", "16384", "--report-to", "none"],
    "care grpo": ["--model", TINY, "--max-steps", "1", "--batch-size", "3", "--num-generations", "3",
                  "--max-completion-tokens", "8", "--limit", "6", "--report-to", "none"],
    "care eval": ["--model", TINY, "--limit", "2", "--max-new-tokens", "8", "--batch-size", "2", "--no-report"],
}


@pytest.mark.timeout(900)
def test_readme_care_chain_runs_on_the_tiny_model(tmp_path, monkeypatch):
    """The README's data → SFT data → SFT → GRPO → eval commands, as written plus cheap settings, in order."""
    monkeypatch.chdir(tmp_path)
    chain = _readme_chain()
    names = [parse_doc_command(c)[0] for c in chain]
    for step in ("data synth", "care sft-data", "care sft", "care grpo", "care eval"):
        assert step in names, f"the README's CARE block no longer shows `carelab {step}`"
    ran = 0
    for command, name in zip(chain, names, strict=True):
        if name not in CHEAP or command.schematic:
            continue
        result = CliRunner().invoke(app, command.args + CHEAP[name])
        assert result.exit_code == 0, f"{command}\n{result.output}"
        ran += 1
    assert ran >= 5
    assert (tmp_path / "runs" / "grpo" / "final-adapter" / "adapter_config.json").exists()
    assert list((tmp_path / "runs" / "eval").glob("predictions/*/*.jsonl"))
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)
