"""CARE training on a tiny random model: SFT lowers loss, GRPO runs with rewards + curriculum, ablations, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carelab.care.train.config import GRPORunConfig, SFTRunConfig
from carelab.care.train.grpo import run_grpo
from carelab.care.train.sft import run_sft

TINY = "tiny-random-qwen2"


def _losses(out: Path) -> list[float]:
    ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def test_sft_lowers_loss(data, tmp_path):
    cfg = SFTRunConfig(data=[data["sft"]], out=str(tmp_path / "sft"), model=TINY, adapter="lora", lora_r=16,
                       lora_alpha=32, max_steps=24, lr=3e-3, batch_size=4, logging_steps=4, save_steps=24,
                       report_to=[], max_length=4096, warmup_ratio=0.0)
    metrics = run_sft(cfg)
    losses = _losses(tmp_path / "sft")
    assert metrics["steps"] == 24
    assert losses[-1] < losses[0] - 0.05, losses
    assert (tmp_path / "sft" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "sft" / "sft_config.json").read_text())["lr"] == 3e-3


def _grpo_cfg(data, out: Path, **kw) -> GRPORunConfig:
    base = dict(easy=[data["easy"]], hard=[data["hard"]], out=str(out), model=TINY, max_steps=2, batch_size=6,
                num_generations=3, max_completion_tokens=8, max_prompt_tokens=1500, lr=1e-4, report_to=[],
                save_steps=2, ramp_steps=2)
    base.update(kw)
    return GRPORunConfig(**base)


def _logged(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "reward_curve.jsonl").read_text().splitlines()]


def test_grpo_runs_with_three_rewards_and_curriculum(data, tmp_path):
    out = tmp_path / "grpo"
    metrics = run_grpo(_grpo_cfg(data, out, batch_size=12, max_steps=3, ramp_steps=3))
    assert metrics["steps"] == 3 and metrics["n_hard"] == 6
    logs = _logged(out)
    assert {"rewards/accuracy/mean", "rewards/format/mean", "rewards/retrieval/mean"} <= set(logs[0])
    # the untrained tiny model never quotes: retrieval reward is the official 0.2 floor
    assert logs[0]["rewards/retrieval/mean"] == pytest.approx(0.2)
    curriculum = [json.loads(x) for x in (out / "curriculum.jsonl").read_text().splitlines()]
    assert [c["p_hard"] for c in curriculum[:4]] == pytest.approx([0.0, 0.5 / 3, 2 * 0.5 / 3, 0.5])
    assert curriculum[0]["hard_share"] == 0.0  # step 0 draws only easy items
    assert (out / "final-adapter" / "adapter_config.json").exists()


def test_trim_heap_every_update_trims_once_per_update_and_changes_no_number(data, tmp_path, monkeypatch):
    import carelab.memory

    trims = []
    monkeypatch.setattr(carelab.memory, "trim_heap", lambda: trims.append(1) or True)
    run_grpo(_grpo_cfg(data, tmp_path / "trim", max_steps=2, seed=3, trim_heap_every_update=True))
    assert len(trims) == 2
    run_grpo(_grpo_cfg(data, tmp_path / "plain", max_steps=2, seed=3))
    assert len(trims) == 2  # off by default
    assert [r["loss"] for r in _logged(tmp_path / "trim")] == [r["loss"] for r in _logged(tmp_path / "plain")]


def test_ablation_flags(data, tmp_path):
    out = tmp_path / "abl"
    metrics = run_grpo(_grpo_cfg(data, out, retrieval_reward=False, curriculum=False, max_steps=1))
    assert metrics["n_hard"] == 0
    logs = _logged(out)
    assert "rewards/retrieval/mean" not in logs[0] and "rewards/accuracy/mean" in logs[0]
    curriculum = [json.loads(x) for x in (out / "curriculum.jsonl").read_text().splitlines()]
    assert curriculum and all(c["hard_share"] == 0.0 for c in curriculum)


def test_grpo_from_sft_adapter_stacks_exactly(data, tmp_path):
    sft = tmp_path / "sft"
    run_sft(SFTRunConfig(data=[data["sft"]], out=str(sft), model=TINY, max_steps=2, batch_size=2, report_to=[],
                         max_length=4096, lr=1e-2))
    out = tmp_path / "grpo"
    run_grpo(_grpo_cfg(data, out, init_adapter=str(sft), max_steps=1, lr=1e-2))
    stacked = json.loads((out / "final-adapter" / "adapter_config.json").read_text())
    assert stacked["r"] == 16
    # exact: the final adapter on the untouched base equals SFT merged, then the GRPO adapter on top
    import torch
    from peft import PeftModel

    from carelab.models import load_model

    ids = torch.tensor([[5, 9, 17, 33, 2, 40, 7]])
    sft_model, _ = load_model(TINY, adapter=str(sft))
    with torch.no_grad():
        sft_logits = sft_model(input_ids=ids).logits
        sequential = PeftModel.from_pretrained(sft_model.merge_and_unload(), str(out / "grpo-adapter")).eval()
        want = sequential(input_ids=ids).logits
        got = load_model(TINY, adapter=str(out / "final-adapter"))[0](input_ids=ids).logits
    assert not torch.allclose(want, sft_logits, atol=1e-6), "GRPO changed nothing: exactness would be trivial"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_long_prompts_drop_or_truncate(data, tmp_path):
    from carelab.care.data.loaders import load_examples
    from carelab.care.train.grpo import grpo_rows
    from carelab.models import load_tokenizer

    tok = load_tokenizer(TINY)
    exs = load_examples(data["hard"])
    rows, changed = grpo_rows(exs, tok, "hard", 700, "truncate")
    assert changed > 0 and len(rows) == len(exs)
    assert all(r["prompt"][-1]["content"].endswith(f"Question: {e.question}") for r, e in zip(rows, exs, strict=True))
    dropped, _ = grpo_rows(exs, tok, "hard", 700, "drop")
    assert len(dropped) < len(exs)


def test_resume_skips_a_checkpoint_killed_while_saving(tmp_path):
    """The newest folder without a readable trainer_state.json (written last by the Trainer) is not resumed from."""
    from carelab.care.train.common import last_checkpoint

    assert last_checkpoint(tmp_path / "missing") is None
    for step, state in ((3, "{}"), (6, "{}"), (9, None), (12, '{"trunc')):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")


def test_kill_and_resume_continues_at_the_right_step(data, tmp_path):
    out = tmp_path / "resume"
    cmd = [sys.executable, "-m", "carelab.cli", "care", "sft", "--data", data["sft"], "--out", str(out), "--model",
           TINY, "--max-steps", "40", "--batch-size", "2", "--save-steps", "3", "--report-to", "none",
           "--max-length", "4096"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    # any complete checkpoint from step 6 on: only the last 2 are kept, and on a GPU checkpoint-6 is rotated out
    # within a fraction of a second (seen on an H200, where a 0.5 s poll missed it and training ran to the end)
    while time.time() < deadline and _newest_checkpoint_step(out) < 6:
        time.sleep(0.02)
        assert proc.poll() is None, "training ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # at once: on an idle machine the tiny model trains a step in ~0.1 s
    proc.wait()
    done = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert done and max(done) < 40
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = json.loads((out / "checkpoint-40" / "trainer_state.json").read_text())
    assert state["global_step"] == 40
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == sorted(set(steps))  # no step trained twice in the log


def _newest_checkpoint_step(out: Path) -> int:
    """The step of the newest complete checkpoint (the one ``--resume`` would take), 0 before the first."""
    from carelab.care.train.common import last_checkpoint

    newest = last_checkpoint(out)
    return int(newest.rsplit("-", 1)[1]) if newest else 0


def _adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


@pytest.fixture
def unseeded_rng(monkeypatch):
    """torch's generator in a state of its own at each model load, as in a fresh process (torch 2.13 starts from
    a random seed; the tiny model's loader seeds it, which would hide a missing seed)."""
    import torch

    from carelab.care.train import common, grpo, sft

    states = iter(range(1000, 2000))

    def load_then_scramble(*args, **kwargs):
        loaded = common.load_base(*args, **kwargs)
        torch.manual_seed(next(states))
        return loaded

    monkeypatch.setattr(sft, "load_base", load_then_scramble)
    monkeypatch.setattr(grpo, "load_base", load_then_scramble)


def test_sft_with_the_same_seed_gives_the_same_adapter(data, tmp_path, unseeded_rng):
    # The seed alone must decide LoRA's random A: before it did, two `make demo` runs drew different adapters
    # from `seed: 0` (every lora_A differed after one step at learning rate 0).
    def sft(name: str, seed: int) -> dict:
        run_sft(SFTRunConfig(data=[data["sft"]], out=str(tmp_path / name), model=TINY, max_steps=2, batch_size=2,
                             report_to=[], max_length=4096, lr=1e-2, seed=seed))
        return _adapter_tensors(tmp_path / name)

    first, again, other = sft("a", 0), sft("b", 0), sft("c", 1)
    assert _same(first, again)
    assert not _same(first, other)


def test_grpo_with_the_same_seed_gives_the_same_adapter(data, tmp_path, unseeded_rng):
    import torch

    # on CUDA some kernels accumulate in a varying order: bit-equal runs need full determinism there (on an H200
    # two runs without it gave different adapters); on a CPU the seed alone decides
    trl = {"full_determinism": True} if torch.cuda.is_available() else {}
    runs = []
    for name in ("a", "b"):
        run_grpo(_grpo_cfg(data, tmp_path / name, max_steps=1, lr=1e-2, seed=3, trl=trl))
        runs.append(_adapter_tensors(tmp_path / name / "final-adapter"))
    assert _same(*runs)
