"""Run-directory helpers shared by every long job: config beside outputs, append-only JSONL, resume.

Every long job writes its effective config next to its results and appends each finished item at
once, so a killed run loses nothing and a rerun skips what is done.
"""

from __future__ import annotations

import dataclasses
import json
import os
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
    return path


def read_jsonl(path: str | os.PathLike, *, skip_invalid: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-empty line; bad JSON names the file and line.

    A truncated last line (a run killed mid-write) is tolerated when ``skip_invalid`` is set.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    with p.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            raw = raw.strip()
            if not raw:
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                if skip_invalid:
                    continue
                raise InputError(p, f"invalid JSON ({exc.msg})", line=lineno) from None
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
