"""Slow: SFT and GRPO with the embedded SmolLM2-135M-Instruct on short synthetic data."""

from __future__ import annotations

import json

import pytest

from carelab.care.data import synth
from carelab.care.train.config import GRPORunConfig, SFTRunConfig
from carelab.care.train.grpo import run_grpo
from carelab.care.train.sft import run_sft

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # 135M SFT + GRPO on CPU


def test_smollm2_sft_lowers_loss_then_grpo_runs(sft_jsonl, tmp_path):
    sft_data = sft_jsonl(16, seed=3, context_words=30)
    sft_out = tmp_path / "sft"
    metrics = run_sft(SFTRunConfig(data=[sft_data], out=str(sft_out), max_steps=24, batch_size=2,
                                   lr=5e-4, logging_steps=4, save_steps=24, report_to=[], max_length=1024,
                                   warmup_ratio=0.0))
    state = json.loads((sft_out / "checkpoint-24" / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert metrics["steps"] == 24 and losses[-1] < 0.7 * losses[0], losses

    easy = synth.write("drop", 6, 3, tmp_path / "easy.json", context_words=30)
    out = tmp_path / "grpo"
    result = run_grpo(GRPORunConfig(easy=[str(easy)], out=str(out), init_adapter=str(sft_out), max_steps=1,
                                    batch_size=5, num_generations=5, max_completion_tokens=48, lr=2e-5,
                                    report_to=[], save_steps=1))
    assert result["steps"] == 1
    log = json.loads((out / "reward_curve.jsonl").read_text().splitlines()[0])
    assert 0.0 <= log["reward"] <= 1.0 and "rewards/retrieval/mean" in log
