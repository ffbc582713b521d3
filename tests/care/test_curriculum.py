"""The step-aware curriculum sampler: schedule, determinism, GRPO repeat layout, ablation."""

from __future__ import annotations

import pytest

from carelab.care.train.curriculum import CurriculumSampler, hard_probability


def _sampler(**kw):
    base = dict(n_easy=50, n_hard=30, num_generations=3, prompts_per_chunk=400, repeat_count=1, num_chunks=11,
                steps_per_chunk=1.0, p_max=0.5, ramp_steps=10, seed=7)
    base.update(kw)
    return CurriculumSampler(**base)


def test_probability_ramp():
    assert hard_probability(0, 0.5, 100) == 0.0
    assert hard_probability(50, 0.5, 100) == pytest.approx(0.25)
    assert hard_probability(1000, 0.5, 100) == 0.5
    assert hard_probability(3, 0.3, 0) == 0.3


def test_hard_share_follows_schedule():
    plan = _sampler().plan()
    assert plan.steps and plan.chunks
    for step, flags in zip(plan.steps, plan.hard, strict=True):
        expected = hard_probability(step, 0.5, 10)
        share = sum(flags) / len(flags)
        assert abs(share - expected) < 0.08, (step, share, expected)
    # hard flags and indices agree: hard rows live after the easy rows
    for idx, flags in zip(plan.chunks, plan.hard, strict=True):
        assert all((i >= 50) == f for i, f in zip(idx, flags, strict=True))


def test_deterministic_and_seed_dependent():
    assert _sampler().plan().chunks == _sampler().plan().chunks
    assert _sampler().plan().chunks != _sampler(seed=8).plan().chunks


def test_repeat_layout_matches_grpo():
    s = _sampler(prompts_per_chunk=2, repeat_count=2, num_chunks=3)
    out = list(s)
    assert len(out) == len(s) == 3 * 2 * 2 * 3
    chunk0 = s.plan().chunks[0]
    expected = [i for _ in range(2) for i in chunk0 for _ in range(3)]
    assert out[:12] == expected


def test_no_curriculum_draws_easy_only():
    plan = _sampler(enabled=False).plan()
    assert plan.chunks and all(plan.chunks)
    assert not any(f for flags in plan.hard for f in flags)
    assert all(i < 50 for chunk in plan.chunks for i in chunk)


def test_replay_is_identical_for_resume():
    """A resumed Trainer skips consumed batches by re-iterating: the stream must be identical."""
    s = _sampler(prompts_per_chunk=4, num_chunks=6)
    assert list(s) == list(s)


def test_log_written(tmp_path):
    s = _sampler(num_chunks=3, prompts_per_chunk=10, log_path=str(tmp_path / "c.jsonl"))
    s.write_log()
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == 3 and '"p_hard": 0.0' in lines[0]
