"""Real QA datasets through 🤗 ``datasets`` into :class:`carelab.care.data.examples.QAExample`.

Why through ``datasets``: the hub stores these sets in its own column layouts (HotpotQA's context and
supporting facts column-wise, DROP one question per row, MS MARCO's passages as a dict of lists), and the
same ``datasets`` objects come from the hub, from ``save_to_disk`` folders and from local JSON/Parquet
files. So one code path — open a ``datasets.Dataset``, normalise each row to the native shape, convert it
with the native-format converters — serves all three, and tests exercise it offline on local copies.

Sources: a short name from :data:`HUB_SOURCES` (``longbench-hotpotqa``, ``hotpotqa``, ``drop``, …), any hub
id (with ``--format``), a ``save_to_disk`` folder, or a local ``.json``/``.jsonl``/``.parquet`` file.
CofCA has no canonical hub copy: give its JSON file (or your own hub id) with format ``cofca``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carelab.care.data import loaders as native
from carelab.care.data.examples import QAExample
from carelab.runs import InputError


@dataclass(frozen=True)
class HubSource:
    """Where a known dataset lives on the hub and which native row shape its rows take."""

    name: str
    format: str
    config: str | None = None
    split: str = "validation"


#: short names for the datasets the CARE paper evaluates and trains on (hub ids as published by their authors
#: or the most used mirror; any other id works with --format)
HUB_SOURCES: dict[str, HubSource] = {
    **{f"longbench-{c}": HubSource("THUDM/LongBench", "longbench", c, "test")
       for c in ("hotpotqa", "2wikimqa", "musique", "multifieldqa_en")},
    "hotpotqa": HubSource("hotpotqa/hotpot_qa", "hotpotqa", "distractor", "validation"),
    "2wiki": HubSource("framolfese/2WikiMultihopQA", "2wiki", None, "validation"),
    "musique": HubSource("dgslibisey/MuSiQue", "musique", None, "validation"),
    "drop": HubSource("ucinlp/drop", "drop", None, "validation"),
    "msmarco": HubSource("microsoft/ms_marco", "msmarco", "v2.1", "validation"),
}
LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def open_dataset(source: str, split: str | None = None, config: str | None = None):
    """The ``datasets.Dataset`` behind ``source``: a ``save_to_disk`` folder, a local data file, or a hub id."""
    import datasets as hf

    path = Path(source)
    if path.is_dir():
        try:
            loaded = hf.load_from_disk(str(path))
        except FileNotFoundError:
            raise InputError(path, "not a folder written by datasets' save_to_disk") from None
        if isinstance(loaded, hf.DatasetDict):
            if split not in loaded:
                raise InputError(path, f"no split {split!r}; it has {', '.join(loaded)}", field="--split")
            return loaded[split]
        return loaded
    if path.suffix.lower() in LOCAL_BUILDERS and path.exists():
        return hf.load_dataset(LOCAL_BUILDERS[path.suffix.lower()], data_files=str(path), split="train")
    try:
        return hf.load_dataset(source, config, split=split) if config else hf.load_dataset(source, split=split)
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        raise InputError(source, f"cannot load from the hub ({type(exc).__name__}: {str(exc).splitlines()[0]})") \
            from None


def _columns(value: Any, *names: str) -> list[tuple]:
    """Rows of a column-wise dict (``{"title": [...], "sent_id": [...]}``) or an already row-wise list."""
    if isinstance(value, dict):
        return list(zip(*(value.get(n) or [] for n in names), strict=False))
    return [tuple(v) if isinstance(v, (list, tuple)) else (v,) for v in (value or [])]


def normalise_row(fmt: str, row: dict[str, Any], index: int) -> dict[str, Any]:
    """One hub row in the native file shape that carelab's converters read (others pass unchanged)."""
    obj = dict(row)
    if fmt in ("hotpotqa", "2wiki"):
        if isinstance(obj.get("context"), dict):
            obj["context"] = [[t, list(s)] for t, s in _columns(obj["context"], "title", "sentences")]
        if isinstance(obj.get("supporting_facts"), dict):
            obj["supporting_facts"] = [[t, int(i)] for t, i in _columns(obj["supporting_facts"], "title", "sent_id")]
        if isinstance(obj.get("evidences"), dict):
            obj["evidences"] = [list(e) for e in _columns(obj["evidences"], "fact", "relation", "entity")]
        if "_id" not in obj and "id" in obj:
            obj["_id"] = obj["id"]
    elif fmt == "drop" and "passage" in obj and "qa_pairs" not in obj:
        spans = (obj.get("answers_spans") or {}).get("spans") or []
        obj = {"passage": obj["passage"], "qa_pairs": [{"question": obj.get("question"), "answer": {"spans": list(spans)},
                                                        "query_id": obj.get("query_id") or str(index)}],
               "_pid": obj.get("section_id") or str(index)}
    return obj


def examples_from_rows(rows: Iterable[dict[str, Any]], fmt: str, where: str,
                       limit: int | None = None) -> list[QAExample]:
    """Convert hub rows with the native converters; a bad row raises ``InputError`` naming the item and field."""
    if fmt == "2wikimqa":
        fmt = "2wiki"
    if fmt not in native.FORMATS:
        raise InputError(where, f"unknown format {fmt!r}; use one of {', '.join(native.FORMATS)}", field="format")
    out: list[QAExample] = []
    for j, raw in enumerate(rows):
        obj = normalise_row(fmt, raw, j)
        row = native._Row(Path(where), f", item {j}", None, obj)
        if fmt == "drop":
            found = native._guarded(row, native._drop_passage, row, str(obj.get("_pid", j)))
        else:
            found = [e for e, _, _ in native._guarded(row, native._convert, fmt, row) if e is not None]
        out.extend(found)
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out


def load(source: str, format: str | None = None, split: str | None = None, config: str | None = None,
         limit: int | None = None) -> list[QAExample]:
    """QAExamples from a short name in :data:`HUB_SOURCES`, a hub id, a ``save_to_disk`` folder or a data file.

    A short name fills in the hub id, config, split and format; explicit arguments override them.
    """
    known = HUB_SOURCES.get(source)
    if known is not None:
        source, format = known.name, format or known.format
        config, split = config or known.config, split or known.split
    if not format:
        raise InputError(source, "give --format (one of the native formats) for a source without a short name",
                         field="--format")
    ds = open_dataset(source, split or "validation", config)
    where = f"{source}[{split or 'validation'}]" if not os.path.exists(source) else source
    return examples_from_rows(ds, format, where, limit)


def load_hub_dataset(name: str, split: str, format: str, *, limit: int | None = None,
                     config: str | None = None) -> list[QAExample]:
    """Load a dataset from the Hugging Face hub (``datasets.load_dataset``) and convert its rows.

    Needs network access for hub ids; :func:`load` (which this calls) also reads ``save_to_disk`` folders
    and local files through the same code path, and knows short names (``longbench-hotpotqa`` …).
    """
    return load(name, format, split, config, limit)
