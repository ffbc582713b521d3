"""Rank awareness for CARE jobs launched as several processes (``torchrun``, ``accelerate launch``).

Why: the trainers are TRL's and already shard their batches, but everything carelab writes itself (configs,
adapters, curves, predictions, SFT records) would otherwise be written once per process, and item-level jobs
(``care eval``, ``care sft-data``) would each do all the work. The rules here:

* one process (no launcher) is the default and costs nothing: no process group, no accelerate state;
* under a launcher, accelerate's ``PartialState`` joins the process group (``cpu=True`` without CUDA, so gloo
  on a CPU machine — accelerate does not pick CPU by itself there);
* items are split with ``PartialState.split_between_processes`` (contiguous shards, the first ranks one more);
  each rank appends its finished records to its own part file (``<dir>/.parts/<stem>.rank<R><suffix>``), and
  the main process merges the parts into the one output file, first record per key winning, so the file has
  no duplicates and a killed multi-process run resumes from its parts like a single-process one.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: folder (beside an output file) that holds the per-rank part files until they are merged
PARTS_DIR = ".parts"


def launched_world_size() -> int:
    """Processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def state():
    """accelerate's ``PartialState`` for a multi-process launch (joined on first use), else ``None``.

    ``cpu=True`` when no CUDA device is visible: without it accelerate would not form a CPU (gloo) group.
    """
    if launched_world_size() == 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    s = state()
    return 0 if s is None else s.process_index


def world_size() -> int:
    """Number of processes in the job (1 without a launcher)."""
    s = state()
    return 1 if s is None else s.num_processes


def is_main() -> bool:
    """True on the process that writes shared files (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op without a launcher)."""
    s = state()
    if s is not None:
        s.wait_for_everyone()


def device() -> str | None:
    """This process's device under a launcher (``cuda:<local rank>`` or ``cpu``); ``None`` = caller's default."""
    s = state()
    return None if s is None else str(s.device)


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on the main process first, then on the others (shared setup written once)."""
    s = state()
    if s is None:
        yield
        return
    with s.main_process_first():
        yield


def shard(items: Sequence[T]) -> list[T]:
    """This process's contiguous share of ``items`` (all of them without a launcher)."""
    s = state()
    if s is None or len(items) == 0:
        return list(items)
    with s.split_between_processes(list(items)) as mine:
        return list(mine)


def gather(obj: Any) -> list[Any]:
    """``obj`` from every process, in rank order (``[obj]`` without a launcher); a collective call."""
    s = state()
    if s is None:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * s.num_processes
    dist.all_gather_object(out, obj)
    return out


def sum_counts(counts: dict[str, Any]) -> dict[str, Any]:
    """``counts`` (numbers, possibly in nested dicts) summed over every process; a collective call.

    Why: each process counts only its share of the items, the summary states the whole job.
    """
    parts = gather(counts)

    def add(a: Any, b: Any) -> Any:
        if isinstance(a, dict) or isinstance(b, dict):
            a, b = a or {}, b or {}
            return {k: add(a.get(k), b.get(k)) for k in dict.fromkeys([*a, *b])}
        return (a or 0) + (b or 0)

    total: Any = parts[0]
    for part in parts[1:]:
        total = add(total, part)
    return total


def part_path(path: str | os.PathLike, rank_index: int | None = None) -> Path:
    """Where a rank appends its records for ``path`` (``path`` itself without a launcher)."""
    p = Path(path)
    if rank_index is None:
        if launched_world_size() == 1:
            return p
        rank_index = rank()
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.parent / PARTS_DIR / f"{stem}.rank{rank_index}{p.suffix}"


def leftover_parts(path: str | os.PathLike) -> list[Path]:
    """Part files of ``path`` from any rank (of this run, or left by a killed one), in rank order."""
    p = Path(path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    folder = p.parent / PARTS_DIR
    if not folder.is_dir():
        return []
    pattern = re.compile(re.escape(stem) + r"\.rank(\d+)" + re.escape(p.suffix))
    found = [(int(m.group(1)), q) for q in folder.iterdir() if (m := pattern.fullmatch(q.name))]
    return [q for _, q in sorted(found)]


def merge_parts(path: str | os.PathLike, key: str = "id") -> int:
    """Append the part files' records to ``path`` (records whose ``key`` is already there are skipped),
    then delete the parts; returns the number of records added. Call on the main process only."""
    from carelab.runs import JsonlAppender, read_jsonl

    parts = leftover_parts(path)
    if not parts:
        return 0
    target = JsonlAppender(path, key=key)
    added = 0
    for part in parts:
        for _, obj in read_jsonl(part, skip_invalid=True):  # a half-written last line of a kill is skipped
            if key in obj and obj[key] not in target:
                target.write(obj)
                added += 1
        part.unlink()
    folder = Path(path).parent / PARTS_DIR
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when empty: other outputs' parts may still be there
    return added


def merge_all(paths: Sequence[str | os.PathLike], key: str = "id") -> None:
    """Every process waits, the main one merges the parts of each of ``paths``, every process waits again.

    Why both barriers: the first makes sure every rank has finished appending; the second that no rank reads
    the merged files (or starts the next stage) before they exist.
    """
    barrier()
    if is_main():
        for path in paths:
            merge_parts(path, key)
    barrier()


class ShardedAppender:
    """A ``JsonlAppender`` for one shared output under a multi-process launch.

    ``in``/``done`` see the merged file plus this rank's part; ``write`` appends to this rank's part. Without
    a launcher it is exactly a ``JsonlAppender`` on ``path``.
    """

    def __init__(self, path: str | os.PathLike, key: str = "id"):
        from carelab.runs import JsonlAppender, read_jsonl

        self.path, self.key = Path(path), key
        self._part = JsonlAppender(part_path(path), key=key)
        self._merged: set[str] = set()
        if self._part.path != self.path and self.path.exists():  # read only: the main process owns this file
            self._merged = {str(obj[key]) for _, obj in read_jsonl(self.path, skip_invalid=True) if key in obj}

    @property
    def done(self) -> set[str]:
        """Keys already written by any finished run or by this rank now."""
        return self._merged | self._part.done

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._merged or item_id in self._part

    def write(self, record: dict) -> None:
        self._part.write(record)
