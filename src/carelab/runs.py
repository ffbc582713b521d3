"""Run-directory helpers shared by every long job: config beside outputs, append-only JSONL, resume.

Every long job writes its effective config next to its results and appends each finished item at
once, so a killed run loses nothing and a rerun skips what is done.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """A user-supplied file is malformed; the message names the file, line and field."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None, field: str | None = None):
        where = f"{path}"
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.field = str(path), line, field


class CarelabWarning(UserWarning):
    """A warning meant for the user: shown as one clean line, still visible to ``warnings`` filters and tests."""


def warn(message: str) -> None:
    """Warn the user with one line on stderr, without the source line Python's warning display adds.

    It still goes through ``warnings`` (category :class:`CarelabWarning`), so ``-W error``, filters,
    ``catch_warnings(record=True)`` and ``pytest.warns`` keep working; only the text of a CarelabWarning changes.
    """
    import warnings

    if not getattr(warnings.formatwarning, "carelab_one_line", False):
        format_before = warnings.formatwarning

        def one_line(msg, category, filename, lineno, line=None) -> str:  # formatwarning's signature
            if not issubclass(category, CarelabWarning):
                return format_before(msg, category, filename, lineno, line)
            from rich.console import Console
            from rich.markup import escape

            console = Console(stderr=True, soft_wrap=True)
            with console.capture() as text:
                console.print(f"[bold yellow]warning:[/] {escape(str(msg))}", highlight=False)
            return text.get()

        one_line.carelab_one_line = True
        warnings.formatwarning = one_line
    warnings.warn(message, CarelabWarning, stacklevel=2)


def to_jsonable(obj: Any) -> Any:
    """Turn dataclasses/paths/tuples into plain JSON values (configs and records are saved this way)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_config(config: Any, out_dir: str | os.PathLike, name: str = "config.json") -> Path:
    """Write the effective config beside the outputs so every result says how it was made."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(to_jsonable(config), indent=2, sort_keys=True) + "\n")
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance(), indent=2) + "\n")
    return path


#: written beside every saved config: which code and libraries made the outputs (kept out of the config
#: itself, so resuming with the same settings is not refused because the code moved on)
PROVENANCE_FILE = "provenance.json"


def provenance() -> dict[str, Any]:
    """The git commit of the carelab source (and whether it had uncommitted changes), library versions, command."""
    import subprocess
    import sys
    from importlib import metadata

    info: dict[str, Any] = {"argv": sys.argv, "python": sys.version.split()[0]}
    for dist in ("carelab", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    source = Path(__file__).resolve().parents[2]
    try:
        run = {"cwd": source, "capture_output": True, "text": True, "timeout": 10}
        commit = subprocess.run(["git", "rev-parse", "HEAD"], check=True, **run).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], check=True,
                                    **run).stdout.strip())
        info.update(git_commit=commit, git_dirty=dirty)
    except (OSError, subprocess.SubprocessError):
        info.update(git_commit=None, git_dirty=None)  # an installed wheel: the version above names the code
    return info


def saved_settings(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON config saved beside earlier outputs (None when there is none yet)."""
    p = Path(path)
    if not p.exists():
        return None
    settings = read_json(p)
    if not isinstance(settings, dict):
        raise InputError(p, "a saved config must be a JSON object; delete it or use a new output folder")
    return settings


def check_same_settings(path: str | os.PathLike, old: Any, new: Any, keys: Iterable[str] | None = None, *,
                        what: str = "this run folder",
                        hint: str = "pass a new --out or delete the folder to start over") -> None:
    """Refuse to resume outputs made with other settings: ``old`` (the saved config) and ``new`` must agree.

    Why: resumed work reuses what is on disk, so a changed setting would silently mix two experiments.
    Compared are ``keys`` (default: all) present in both, as JSON values (a tuple equals its saved list).
    """
    if not old:
        return
    old_d, new_d = json.loads(json.dumps(to_jsonable(old))), json.loads(json.dumps(to_jsonable(new)))
    names = sorted(set(old_d) | set(new_d)) if keys is None else list(keys)
    diff = [k for k in names if k in old_d and k in new_d and old_d[k] != new_d[k]]
    if diff:
        def short(v: Any) -> str:
            text = repr(v)
            return text if len(text) <= 60 else text[:57] + "..."

        changes = "; ".join(f"{k}={short(old_d[k])}, now {short(new_d[k])}" for k in diff)
        raise InputError(path, f"{what} was made with other settings ({', '.join(diff)} differ: {changes}); {hint}",
                         field=diff[0])


#: Deepest JSON nesting accepted from user files. Real datasets nest a handful of levels; anything deeper is
#: refused at read time so no later recursive step (copying, saving, ``json.dumps``) can hit Python's limit.
MAX_JSON_DEPTH = 100


def check_file(path: str | os.PathLike) -> Path:
    """The path of an existing regular file; a missing path is ``FileNotFoundError``, anything else InputError."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(p, "is a directory, expected a file")
    return p


def _decode(data: bytes, path: Path, first_line: int = 1) -> str:
    """UTF-8 text of ``data``; an undecodable byte names the file, its line and the byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InputError(path, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at column {col}; "
                               "re-save the file as UTF-8)", line=line) from None


def read_bytes_file(path: str | os.PathLike) -> bytes:
    """The raw bytes of a user file; a directory or unreadable file is an :class:`InputError`."""
    p = check_file(path)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise InputError(p, exc.strerror or str(exc)) from None


def read_text_file(path: str | os.PathLike) -> str:
    """The UTF-8 text of a user file: the one place where "not a file" and "not UTF-8" become InputError."""
    p = Path(path)
    return _decode(read_bytes_file(p), p)


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def _too_deep(text: str, path: Path, line: int | None) -> InputError:
    """The error for over-deep JSON, naming the line where the nesting first passes the limit."""
    depth, offset = 0, 0
    for m in _JSON_TOKEN.finditer(text):
        tok = m.group()
        if tok in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                offset = m.start()
                break
        elif tok in "]}":
            depth -= 1
    at = text.count("\n", 0, offset) + (1 if line is None else line)
    return InputError(path, f"JSON nested more than {MAX_JSON_DEPTH} levels deep", line=at)


def _is_too_deep(obj: Any) -> bool:
    """Whether JSON is nested deeper than :data:`MAX_JSON_DEPTH` (iterative, so the check cannot recurse)."""
    stack = [(obj, 1)]
    while stack:
        cur, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        children = cur.values() if isinstance(cur, dict) else cur
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


# A \uD800-\uDBFF escape not followed by a low one, or a \uDC00-\uDFFF escape not preceded by a high one.
_LONE_SURROGATE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
                             r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _has_lone_surrogate(obj: Any) -> bool:
    """Whether any string (key or value) holds a lone surrogate, which no UTF-8 output can carry."""
    stack = [obj]
    while stack:
        cur = stack.pop()
        items = list(cur.items()) if isinstance(cur, dict) else [(None, v) for v in cur]
        for key, val in items:
            for s in (key, val):
                if isinstance(s, str):
                    try:
                        s.encode("utf-8")
                    except UnicodeEncodeError:
                        return True
            if isinstance(val, (dict, list)):
                stack.append(val)
    return False


def parse_json(text: str, path: str | os.PathLike, line: int | None = None) -> Any:
    """Parse JSON read from ``path`` (``line``: where a JSONL record starts); every failure is an InputError."""
    p = Path(path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        at = exc.lineno if line is None else line + exc.lineno - 1
        raise InputError(p, f"invalid JSON ({exc.msg}, column {exc.colno})", line=at) from None
    except RecursionError:
        raise _too_deep(text, p, line) from None
    if isinstance(obj, (dict, list)) and _is_too_deep(obj):
        raise _too_deep(text, p, line)
    lone = _LONE_SURROGATE.search(text)
    if lone and (_has_lone_surrogate(obj) if isinstance(obj, (dict, list)) else isinstance(obj, str)):
        at = text.count("\n", 0, lone.start()) + (1 if line is None else line)
        raise InputError(p, f"the escape {lone.group()} is half a UTF-16 surrogate pair, not text", line=at)
    return obj


def read_json(path: str | os.PathLike) -> Any:
    """Read a whole JSON file (UTF-8, bounded nesting); errors name the file and line."""
    p = Path(path)
    return parse_json(read_text_file(p), p)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, value or InputError)`` for each non-empty line, so callers choose to skip or raise.

    Lines are decoded one by one: an undecodable byte spoils only its own line, never the good rows.
    """
    p = check_file(path)
    try:
        fh = p.open("rb")
    except OSError as exc:
        raise InputError(p, exc.strerror or str(exc)) from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                yield lineno, parse_json(_decode(raw, p, lineno).strip(), p, lineno)
            except InputError as exc:
                yield lineno, exc


def read_jsonl(path: str | os.PathLike, *, skip_invalid: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-empty line; a bad line names the file and line.

    With ``skip_invalid`` bad lines (invalid JSON or UTF-8, not an object, a truncated last line left by a
    killed run) are skipped instead.
    """
    p = Path(path)
    for lineno, obj in iter_jsonl(p):
        if isinstance(obj, InputError):
            if skip_invalid:
                continue
            raise obj
        if not isinstance(obj, dict):
            if skip_invalid:
                continue
            raise InputError(p, "expected a JSON object", line=lineno)
        yield lineno, obj


class JsonlAppender:
    """Append-only JSONL writer that flushes every record, the basis of resumable jobs."""

    def __init__(self, path: str | os.PathLike, key: str = "id"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.done: set[str] = set()
        if self.path.exists():
            self._repair_tail()
            for _, obj in read_jsonl(self.path, skip_invalid=True):
                if key in obj:
                    self.done.add(str(obj[key]))

    def _repair_tail(self) -> None:
        """Drop a half-written last line left by a kill, so appends start on a clean line."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n")
            self.path.write_bytes(data[: cut + 1] if cut >= 0 else b"")

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self.done

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(to_jsonable(record), ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if self.key in record:
            self.done.add(str(record[self.key]))

    def write_many(self, records: Iterable[dict]) -> None:
        for r in records:
            self.write(r)


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write a whole JSONL file atomically (temp file + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(to_jsonable(r), ensure_ascii=False) + "\n")
    tmp.replace(p)
    return p
