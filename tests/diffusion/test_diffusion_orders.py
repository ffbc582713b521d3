"""Ordered AR (``ar-k<k>``): every order is a proper factorisation, k = 1 is plain AR, orders are nested."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from carelab.diffusion.model import GPT, GPTConfig
from carelab.diffusion.objectives import (
    ar_loss,
    ar_nll,
    ordered_ar_loss,
    parse_objective,
    token_orders,
    training_loss,
)


def _ordered(seed: int = 0, vocab: int = 33, block: int = 16) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=32, causal=True,
                         target_positions=True)).eval()


def test_orders_are_nested_permutations_with_left_to_right_first():
    o4, o16 = token_orders(4, 9, 0), token_orders(16, 9, 0)
    assert torch.equal(o4[0], torch.arange(9)) and torch.equal(o16[:4], o4)
    assert all(sorted(r.tolist()) == list(range(9)) for r in o16)
    assert len({tuple(r.tolist()) for r in o16}) == 16 and not torch.equal(token_orders(4, 9, 1), o4)
    assert parse_objective("ar-k16") == ("ordered", 16) and parse_objective("mdm") == ("mdm", 0)
    with pytest.raises(ValueError, match="unknown objective"):
        parse_objective("ar-k0")


def test_identity_order_with_zero_target_embedding_is_the_plain_ar_model(tiny):
    ar, ordered = tiny(causal=True), _ordered()
    for name, p in ar.state_dict().items():  # same seed -> same initial weights except the new table
        assert torch.equal(p, ordered.state_dict()[name]), name
    with torch.no_grad():
        ordered.wtp.weight.zero_()
    x = torch.randint(0, 32, (3, 17))
    identity = token_orders(1, 17)
    torch.testing.assert_close(ordered_ar_loss(ordered, x, identity), ar_loss(ar, x))
    torch.testing.assert_close(ar_nll(ordered, x), ar_nll(ar, x))
    assert ordered.num_params() == ar.num_params()  # N excludes token and target-position embeddings


def test_each_order_is_a_normalised_factorisation():
    """Summing p(x_σ(1..T) | x_σ(0)) over every completion gives 1, for the identity and a shuffled order."""
    vocab, length = 3, 4
    model = _ordered(seed=1, vocab=vocab + 1, block=length)
    for order in (torch.arange(length), torch.tensor([2, 0, 3, 1])):
        first = 1
        seqs = []
        for rest in itertools.product(range(vocab), repeat=length - 1):
            x = torch.empty(length, dtype=torch.long)
            x[order[0]] = first
            x[order[1:]] = torch.tensor(rest)
            seqs.append(x)
        x = torch.stack(seqs)
        xp = x[:, order]
        perm = order.expand(x.size(0), -1)
        with torch.no_grad():
            logp = model(xp[:, :-1], positions=perm[:, :-1], target_positions=perm[:, 1:]).log_softmax(-1)
        total = logp.gather(-1, xp[:, 1:, None]).squeeze(-1).sum(-1).exp().sum()
        assert total.item() == pytest.approx(1.0, abs=1e-5)


def test_ordered_prediction_ignores_later_tokens_and_uses_the_target_position():
    model = _ordered()
    order = token_orders(4, 17, 0)[2]
    x = torch.randint(0, 32, (2, 17))
    y = x.clone()
    y[:, order[10:]] = (y[:, order[10:]] + 1) % 32  # change only tokens later in this order
    perm = order.expand(2, -1)
    with torch.no_grad():
        a = model(x[:, order][:, :-1], positions=perm[:, :-1], target_positions=perm[:, 1:])
        b = model(y[:, order][:, :-1], positions=perm[:, :-1], target_positions=perm[:, 1:])
        c = model(x[:, order][:, :-1], positions=perm[:, :-1], target_positions=perm[:, 1:].flip(-1))
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:]) and not torch.allclose(a, c)


def test_training_loss_dispatch_draws_orders_from_the_generator():
    model = _ordered()
    x = torch.randint(0, 32, (8, 17))
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    one = training_loss("ar-k4", model, x, generator=g())
    assert torch.equal(one, training_loss("ar-k4", model, x, generator=g()))
    assert not torch.equal(one, training_loss("ar-k16", model, x, generator=g(), order_seed=3))


def test_orders_cli_trains_the_grid_and_reports_paired_intervals(tmp_path):
    from typer.testing import CliRunner

    from carelab.cli import app

    for i in range(3):
        (tmp_path / f"doc{i}.txt").write_text(("To be, or not to be, that is the question.\n" * 60).replace("be", f"b{i}"))
    out = tmp_path / "orders"
    args = ["diffusion", "orders", "--out", str(out), "--orders", "1,2", "--references", "ar,mdm",
            "--unique-tokens", "2000", "--epochs", "1,2", "--model-sizes", "xxs", "--corpus", str(tmp_path / "*.txt"),
            "--val-docs", "doc2", "--seq-len", "16", "--batch-size", "8", "--val-sequences", "6", "--threads", "1",
            "--bootstrap", "100", "--no-progress"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {x["objective"] for x in results} == {"ar-k1", "ar-k2", "ar", "mdm"} and len(results) == 8
    assert json.loads((out / "config.json").read_text())["objectives"] == ["ar-k1", "ar-k2", "ar", "mdm"]
    per_seq = {x["id"]: x["losses"] for x in map(json.loads, (out / "val_per_sequence.jsonl").read_text().splitlines())}
    for rec in results:  # the per-sequence losses the sweep saved average to its own validation loss
        assert sum(per_seq[rec["id"]]) / 6 == pytest.approx(rec["val_loss"], rel=1e-5)
        assert json.loads((out / "runs" / rec["id"] / "val_per_sequence.json").read_text()) == per_seq[rec["id"]]
    report = (out / "orders-report" / "report.md").read_text()
    assert "AR, 2 orders − AR, 1 order" in report and "turn-up" in report
    assert "| AR, 2 orders at E=2 − AR, 1 order at E=1 | xxs | 2,000 | " in report  # same left-to-right exposure
    assert (out / "orders-report" / "orders_val_loss.png").stat().st_size > 0
    r2 = CliRunner().invoke(app, args)  # resumes: nothing retrained
    assert r2.exit_code == 0 and len((out / "results.jsonl").read_text().splitlines()) == 8
    (out / "val_per_sequence.jsonl").unlink()  # runs of older sweeps have no saved losses: they are recomputed
    (out / "runs" / "mdm-xxs-U2000-E2" / "val_per_sequence.json").unlink()
    quick = CliRunner().invoke(app, [*args, "--no-train", "--no-mdm-intervals"])  # MDM means only, no re-evaluation
    assert quick.exit_code == 0 and "(no CI)" in (out / "orders-report" / "report.md").read_text()
    assert "mdm-xxs-U2000-E2" not in (out / "val_per_sequence.jsonl").read_text()
    r3 = CliRunner().invoke(app, [*args, "--orders", "1,2,3", "--no-train"])  # reports what finished, trains nothing
    assert r3.exit_code == 0 and len((out / "results.jsonl").read_text().splitlines()) == 8
    narrow = CliRunner().invoke(app, [*args, "--epochs", "2", "--no-train"])  # the last --epochs wins
    assert narrow.exit_code == 0, narrow.output  # the report covers the named grid only: E=1 runs stay out
    assert "| E=1 |" not in (out / "orders-report" / "report.md").read_text()
    r3 = CliRunner().invoke(app, [*args, "--orders", "1,2,3", "--no-train"])
    report = (out / "orders-report" / "report.md").read_text()  # the partial grid names its gaps
    assert "**Missing cells** (2 of" in report and "ar-k3-xxs-U2000-E1, ar-k3-xxs-U2000-E2" in report
    assert "missing cells: ar-k3-xxs-U2000-E1, ar-k3-xxs-U2000-E2" in r3.output
    kept = [x for x in (out / "results.jsonl").read_text().splitlines() if '"ar-k2-xxs-U2000-E2"' not in x]
    (out / "results.jsonl").write_text("\n".join(kept) + "\n")  # a hole inside a curve: that objective ends at E=1
    partial = CliRunner().invoke(app, [*args, "--no-train"])
    assert partial.exit_code == 0, partial.output
    report = (out / "orders-report" / "report.md").read_text()
    assert "**Missing cells** (1 of" in report and "ar-k2-xxs-U2000-E2" in report
    curve = next(line for line in report.splitlines() if line.startswith("| AR, 2 orders | xxs"))
    assert curve.split(" | ")[5] == "1"  # E_max of the truncated curve, in the shared column
    diff = next(line for line in report.splitlines() if line.startswith("| AR, 2 orders − AR, 1 order"))
    assert diff.rstrip(" |").endswith("–")  # no paired difference where a cell is missing
    again = {x["id"]: x["losses"] for x in map(json.loads, (out / "val_per_sequence.jsonl").read_text().splitlines())}
    assert again["mdm-xxs-U2000-E2"] == pytest.approx(per_seq["mdm-xxs-U2000-E2"], rel=1e-6)
    bad = CliRunner().invoke(app, [*args[:4], "0", *args[5:]])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
