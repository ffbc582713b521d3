"""The faster GRPO path: whole group in one pass equals per-rollout accumulation, β = 0 runs no reference,
the held-out reward curve, and TRL options passed through by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from carelab.care.rewards import reward_functions
from carelab.care.train import shared_prefix
from carelab.care.train.config import GRPORunConfig, SFTRunConfig
from carelab.care.train.grpo import run_grpo
from carelab.care.train.heldout import (
    arm_difference,
    best_heldout_step,
    heldout_summary,
    plot_arm_curves,
    read_heldout,
    score_completions,
    split_heldout,
)
from carelab.care.train.sft import run_sft
from carelab.memory import GLIBC_WARM, M_MMAP_THRESHOLD
from carelab.runs import InputError

TINY = "tiny-random-qwen2"


def _cfg(data, out: Path, **kw) -> GRPORunConfig:
    base = dict(easy=[data["easy"]], hard=[data["hard"]], out=str(out), model=TINY, max_steps=1, batch_size=3,
                num_generations=3, max_completion_tokens=8, max_prompt_tokens=1500, lr=1e-4, report_to=[],
                save_steps=100, curriculum=False, temperature=1.0)
    base.update(kw)
    return GRPORunConfig(**base)


class _GradTap:
    """Copies every trainable gradient just before the optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        tap = self
        self.grads: dict[str, torch.Tensor] = {}

        class Cb(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
                tap.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

        self.callback = Cb()


def test_whole_group_in_one_pass_gives_the_same_gradient(data, tmp_path):
    """batch 3 × accumulation 1 and batch 1 × accumulation 3 see the same rollouts and must agree."""
    taps = {}
    for name, kw in {"batched": dict(batch_size=3, grad_accum=1), "per-rollout": dict(batch_size=1, grad_accum=3)}.items():
        taps[name] = _GradTap()
        run_grpo(_cfg(data, tmp_path / name, beta=0.0, **kw), callbacks=[taps[name].callback])
    a, b = taps["batched"].grads, taps["per-rollout"].grads
    assert a and set(a) == set(b)
    assert any(g.abs().sum() > 0 for g in a.values()), "no gradient at all: the comparison would be vacuous"
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-7)


def test_shared_prompt_gives_the_same_gradient(data, tmp_path, monkeypatch):
    """The same rollouts (same seed) through GRPOTrainer with and without the shared prompt, and with the shared
    prompt's completions scored all at once or one row at a time under recomputation: same gradient."""
    used: list[str] = []
    recompute: list[int | None] = []
    for name in ("shared_prefix_logps", "shared_prefill_generate"):
        original = getattr(shared_prefix, name)

        def wrapped(*a, _f=original, _n=name, **k):
            used.append(_n)
            if _n == "shared_prefix_logps":
                recompute.append(k.get("recompute_rows"))
            return _f(*a, **k)

        monkeypatch.setattr(shared_prefix, name, wrapped)
    taps = {}
    for share, rows in ((True, 1), (True, 0), (False, 1)):
        taps[share, rows] = _GradTap()
        run_grpo(_cfg(data, tmp_path / f"share-{share}-{rows}", beta=0.0, share_prompt=share, recompute_rows=rows),
                 callbacks=[taps[share, rows].callback])
        if share:  # the shared run really took both shared paths, with its recomputation setting; the other neither
            assert {"shared_prefix_logps", "shared_prefill_generate"} <= set(used)
            assert set(recompute) == {rows or None}
            used.clear()
            recompute.clear()
    assert not used
    base = taps[False, 1].grads
    assert base and any(g.abs().sum() > 0 for g in base.values())
    for key in ((True, 1), (True, 0)):
        assert set(taps[key].grads) == set(base)
        for name in base:
            torch.testing.assert_close(taps[key].grads[name], base[name], rtol=1e-4, atol=1e-7)


def test_negative_recompute_rows_is_refused(data, tmp_path):
    with pytest.raises(ValueError, match="recompute-rows"):
        run_grpo(_cfg(data, tmp_path / "neg", recompute_rows=-1))


def test_beta_zero_runs_no_reference_forward(data, tmp_path, monkeypatch):
    """With β = 0 (and one update per generation) every log-prob pass is the training pass, under grad."""
    from trl import GRPOTrainer

    calls: list[bool] = []
    original = GRPOTrainer._get_per_token_logps_and_entropies

    def counting(self, *a, **k):
        calls.append(torch.is_grad_enabled())
        return original(self, *a, **k)

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", counting)
    shared_original = shared_prefix.shared_prefix_logps

    def shared_counting(*a, **k):
        calls.append(torch.is_grad_enabled())
        return shared_original(*a, **k)

    monkeypatch.setattr(shared_prefix, "shared_prefix_logps", shared_counting)
    run_grpo(_cfg(data, tmp_path / "b0", beta=0.0))
    assert calls and all(calls), calls
    calls.clear()
    run_grpo(_cfg(data, tmp_path / "b1", beta=0.01))
    assert calls.count(False) >= 1, "β > 0 should score the reference (adapter disabled) without grad"


def test_num_iterations_reuses_each_generation(data, tmp_path, monkeypatch):
    from trl import GRPOTrainer

    generations: list[int] = []
    original = GRPOTrainer._generate_and_score_completions

    def counting(self, *a, **k):
        generations.append(1)
        return original(self, *a, **k)

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", counting)
    metrics = run_grpo(_cfg(data, tmp_path / "mu2", beta=0.0, num_iterations=2, max_steps=4))
    assert metrics["steps"] == 4 and len(generations) == 2


def test_release_freed_memory_unmaps_training_and_keeps_the_heap_for_generation(data, tmp_path, monkeypatch):
    """--release-freed-memory: glibc's threshold fixed for the run, back to the heap's around rollouts (and the
    held-out evaluation's generation), fixed again after each."""
    from carelab.care.train import common

    monkeypatch.setattr(common, "_unmapping", False)
    monkeypatch.setattr(common, "has_gpu", lambda: False)
    calls: list[int] = []
    set_threshold = common._set_mmap_threshold
    monkeypatch.setattr(common, "_set_mmap_threshold", lambda n: calls.append(n) or set_threshold(n))
    try:
        run_grpo(_cfg(data, tmp_path / "unmap", beta=0.0, max_steps=2, heldout_prompts=2, heldout_steps=2,
                      release_freed_memory=True))
    finally:
        set_threshold(GLIBC_WARM[M_MMAP_THRESHOLD])  # the rest of the test process: heap as usual
    low, heap = common.CPU_MMAP_THRESHOLD, GLIBC_WARM[M_MMAP_THRESHOLD]
    assert calls[0] == low and calls.count(heap) >= 3  # two updates' rollouts, one held-out evaluation
    assert calls == [low] + [heap, low] * calls.count(heap)


def test_heldout_reward_curve(data, tmp_path):
    out = tmp_path / "held"
    run_grpo(_cfg(data, out, beta=0.0, max_steps=2, heldout_prompts=4, heldout_steps=1))
    records = read_heldout(out)
    assert [r["step"] for r in records] == [0, 1, 2]
    row = heldout_summary(records)[0]  # each component carries its interval over the prompts
    assert row["retrieval_lo"] <= row["retrieval"] <= row["retrieval_hi"]
    assert all(r["n"] == 4 and len(r["per_item"]) == 4 for r in records)
    assert {"accuracy_mean", "format_mean", "retrieval_mean", "total_mean"} <= set(records[0])
    # a rerun on the same folder does not duplicate finished points
    assert len((out / "heldout_reward.jsonl").read_text().splitlines()) == 3
    assert set(records[0]["per_item_scores"]) == {"accuracy", "format", "retrieval", "total"}
    report = (out / "heldout_reward.md").read_text()
    assert "| 0 | 4 |" in report and "| 2 | 4 |" in report and (out / "heldout_reward.png").stat().st_size > 0


def test_heldout_keep_adapters_writes_the_dev_best_adapter(data, tmp_path):
    """Each held-out evaluation leaves its adapter; the one with the best dev reward becomes dev-best-adapter."""
    out = tmp_path / "keep"
    metrics = run_grpo(_cfg(data, out, beta=0.0, max_steps=2, heldout_prompts=4, heldout_steps=1,
                            heldout_keep_adapters=True))
    records = read_heldout(out)
    assert sorted(p.name for p in (out / "heldout-adapters").iterdir()) == ["step-0", "step-1", "step-2"]
    assert metrics["dev_best_step"] == best_heldout_step(records)
    assert (out / "dev-best-adapter" / "adapter_config.json").exists()
    saved = json.loads((out / "grpo_metrics.json").read_text())
    assert saved["dev_best_step"] == metrics["dev_best_step"]


def test_best_heldout_step_takes_the_earliest_maximum():
    records = [{"step": 20, "total_mean": 0.6}, {"step": 0, "total_mean": 0.5}, {"step": 10, "total_mean": 0.6}]
    assert best_heldout_step(records) == 10 and best_heldout_step([]) is None


def test_heldout_summary_pairs_each_step_with_the_first():
    """Hand-checkable: every prompt gains exactly 0.5, so the paired change is +0.5 with a zero-width CI."""
    records = [{"step": 0, "n": 3, "per_item": [0.0, 1.0, 0.5]},
               {"step": 10, "n": 3, "per_item": [0.5, 1.5, 1.0], "format_mean": 2 / 3, "total_mean": 1.0}]
    first, last = heldout_summary(records)
    assert first["reward"] == pytest.approx(0.5) and first["change"] == pytest.approx(0.0)
    assert last["reward"] == pytest.approx(1.0)
    assert (last["change"], last["change_lo"], last["change_hi"]) == pytest.approx((0.5, 0.5, 0.5))
    assert last["format"] == pytest.approx(2 / 3) and "total" not in last
    assert "format_change" not in last  # no per-prompt format scores: no paired change


def test_heldout_summary_pairs_each_reward_with_the_first():
    """Hand-checkable: retrieval rises by exactly 1 on one of two prompts (+0.5), accuracy stays put."""
    records = [{"step": 0, "n": 2, "per_item": [0.0, 0.5], "retrieval_mean": 0.0, "accuracy_mean": 0.5,
                "per_item_scores": {"retrieval": [0.0, 0.0], "accuracy": [0.0, 1.0]}},
               {"step": 20, "n": 2, "per_item": [0.4, 0.5], "retrieval_mean": 0.5, "accuracy_mean": 0.5,
                "per_item_scores": {"retrieval": [1.0, 0.0], "accuracy": [0.0, 1.0]}}]
    first, last = heldout_summary(records)
    assert first["retrieval_change"] == pytest.approx(0.0)
    assert last["retrieval_change"] == pytest.approx(0.5)
    assert last["retrieval_change_lo"] <= 0.5 <= last["retrieval_change_hi"]
    assert (last["accuracy_change"], last["accuracy_change_lo"], last["accuracy_change_hi"]) == pytest.approx(
        (0.0, 0.0, 0.0))
    assert first["reward_lo"] <= 0.5 <= first["reward_hi"]


def _dev(step, retrieval, accuracy, ids=("p1", "p2")):
    total = [0.4 * r + 0.5 * a for r, a in zip(retrieval, accuracy, strict=True)]
    return {"step": step, "n": len(ids), "ids": list(ids), "per_item": total,
            "per_item_scores": {"retrieval": retrieval, "accuracy": accuracy, "total": total}}


def test_arm_difference_pairs_two_runs_per_prompt():
    """Hand-checkable: from the same start, A's retrieval rises by 1 on both prompts, B's on one (+0.5); accuracy
    moves in neither. A − B is +0.5 on retrieval (both prompts differ by 1 and 0) and 0 on accuracy."""
    start = _dev(0, [0.0, 0.0], [1.0, 0.0])
    run_a = [start, _dev(80, [1.0, 1.0], [1.0, 0.0])]
    run_b = [start, _dev(40, [0.0, 0.0], [1.0, 0.0]), _dev(80, [1.0, 0.0], [1.0, 0.0])]
    rows = {r["reward"]: r for r in arm_difference(run_a, run_b)}
    assert rows["retrieval"]["step"] == 80 and rows["retrieval"]["n"] == 2 and rows["retrieval"]["same_start"]
    assert rows["retrieval"]["a"] == pytest.approx((1.0, 1.0, 1.0))
    assert rows["retrieval"]["b"][0] == pytest.approx(0.5)
    assert rows["retrieval"]["difference"] == pytest.approx((0.5, 0.0, 1.0))  # resamples: both 0, both 1, mixed
    assert rows["accuracy"]["difference"] == pytest.approx((0.0, 0.0, 0.0))
    assert rows["total"]["difference"][0] == pytest.approx(0.2)  # 0.4 × 0.5
    assert list(rows) == ["total", "retrieval", "accuracy"]
    with pytest.raises(ValueError, match="step 40 is not evaluated in both"):
        arm_difference(run_a, run_b, step=40)
    with pytest.raises(ValueError, match="prompts differ"):
        arm_difference(run_a, [_dev(0, [0.0, 0.0], [1.0, 0.0], ids=("p1", "p3"))], step=0)


def test_plot_arm_curves_draws_only_the_steps_both_runs_evaluated(tmp_path):
    """B's update 40 has no A counterpart: the curve skips it instead of failing (arm_difference would raise)."""
    start = _dev(0, [0.0, 0.0], [1.0, 0.0])
    run_a = [start, _dev(80, [1.0, 1.0], [1.0, 0.0])]
    run_b = [start, _dev(40, [0.0, 0.0], [1.0, 0.0]), _dev(80, [1.0, 0.0], [1.0, 0.0])]
    path = plot_arm_curves(run_a, run_b, tmp_path / "arms.png", labels=("CARE", "ablation"))
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="share no evaluated step"):
        plot_arm_curves(run_a, [_dev(40, [0.0, 0.0], [1.0, 0.0])], tmp_path / "none.png")
    with pytest.raises(ValueError, match="'format' is not scored per prompt"):
        plot_arm_curves(run_a, run_b, tmp_path / "none.png", reward="format")


def test_split_heldout_is_disjoint_and_seeded():
    rows = [{"id": i} for i in range(20)]
    train, held = split_heldout(rows, 5, seed=3)
    assert len(held) == 5 and len(train) == 15
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    assert split_heldout(rows, 5, seed=3)[1] == held
    with pytest.raises(ValueError, match="nothing would be left"):
        split_heldout(rows, 20, seed=0)


def test_score_completions_weights_like_the_trainer():
    rows = [{"answer": "Paris", "context": "The capital is Paris."}]
    good = "<think>The text says <retrieval>The capital is Paris.</retrieval></think>\nAnswer: Paris"
    scores = score_completions(rows, [good], reward_functions(), [0.7, 0.1, 0.2])
    assert scores["accuracy"] == [1.0] and scores["format"] == [1.0] and scores["retrieval"] == [1.0]
    assert scores["total"] == [pytest.approx(1.0)]


def test_unknown_trl_option_fails_before_loading(tmp_path):
    with pytest.raises(InputError, match="loss_typ.*did you mean loss_type"):
        run_grpo(GRPORunConfig(easy=["unused.json"], out=str(tmp_path / "x"), model=TINY, trl={"loss_typ": "dapo"}))
    with pytest.raises(InputError, match="no field 'packing_strat'"):
        run_sft(SFTRunConfig(data=["unused.jsonl"], out=str(tmp_path / "y"), model=TINY, trl={"packing_strat": "x"}))
    assert not (tmp_path / "x").exists()


def test_trl_option_reaches_the_trainer(data, tmp_path):
    out = tmp_path / "trl"
    run_grpo(_cfg(data, out, beta=0.0, trl={"scale_rewards": "batch"}))
    saved = json.loads((out / "grpo_config.json").read_text())
    assert saved["trl"] == {"scale_rewards": "batch"}


def test_cli_trl_flags_are_checked_by_name(data, tmp_path):
    from typer.testing import CliRunner

    from carelab.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["care", "grpo", "--easy", data["easy"], "--out", str(tmp_path / "g"), "--model", TINY,
                              "--trl", "loss_typ=dapo"])
    assert bad.exit_code == 2 and "did you mean loss_type" in bad.output
    malformed = runner.invoke(app, ["care", "sft", "--data", "x.jsonl", "--out", str(tmp_path / "s"), "--trl", "oops"])
    assert malformed.exit_code == 2 and "key=value" in malformed.output
