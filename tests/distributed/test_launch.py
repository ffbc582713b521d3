"""CARE launched as two CPU processes (torchrun, gloo) on the tiny model, checked against one process.

Each test launches the real CLI twice — ``torchrun --nproc_per_node 2 -m carelab.cli …`` and plain
``python -m carelab.cli …`` — and compares what they wrote: greedy eval predictions identical, SFT loss curve
equal at the same global batch, the GRPO curriculum's drawn levels identical per step, one record per item in
every merged file and only the main process's files. Slow (several process starts each), so marked ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import carelab
from carelab.runs import read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SRC = str(Path(carelab.__file__).resolve().parents[1])
RECORDER = str(Path(__file__).with_name("record_levels.py"))
TINY = "tiny-random-qwen2"


def launch(args: list[str], nproc: int, cwd: Path, script: str | None = None) -> str:
    """Run the CLI (or ``script``) as ``nproc`` processes; returns its output, fails the test with it on error."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    target = [script] if script else ["-m", "carelab.cli"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               *target, *args]
    else:
        cmd = [sys.executable, *target, *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=540)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{output[-4000:]}"
    return output


def records(path: Path) -> list[dict]:
    return [obj for _, obj in read_jsonl(path)]


def no_parts_left(root: Path) -> None:
    assert not list(root.rglob(".parts")), "per-rank part files were not merged away"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from carelab.care.data import synth

    root = tmp_path_factory.mktemp("mp-data")
    synth.write("hotpotqa", 7, 0, root / "qa.json", context_words=30, distractors=1)
    synth.write("drop", 8, 0, root / "easy.json", context_words=30)
    synth.write("msmarco", 6, 0, root / "hard.jsonl", context_words=30)
    # cheap, deterministic training settings: no dropout, a log entry every step, a visible learning rate
    (root / "mp.yaml").write_text("sft: {lora_dropout: 0.0, logging_steps: 1, max_length: 4096, lr: 0.01, "
                                  "warmup_ratio: 0.0, report_to: []}\n"
                                  "grpo: {logging_steps: 1, report_to: [], max_completion_tokens: 6}\n")
    return root


def test_eval_on_two_processes_equals_one(data, tmp_path):
    args = ["care", "eval", "--data", str(data / "qa.json"), "--model", TINY, "--max-new-tokens", "8",
            "--batch-size", "2", "--no-report", "--method", "original", "--method", "care-prompt"]
    launch([*args, "--out", "one"], 1, tmp_path)
    out = launch([*args, "--out", "two"], 2, tmp_path)
    assert out.count("metrics: two/metrics.json") == 1  # one summary, from the main process
    for label in ("original", "care-prompt"):
        one = records(tmp_path / "one" / "predictions" / label / "qa.jsonl")
        two = records(tmp_path / "two" / "predictions" / label / "qa.jsonl")
        assert len(two) == len({r["id"] for r in two}) == 7  # every item once
        assert {r["id"]: r["raw"] for r in two} == {r["id"]: r["raw"] for r in one}
    no_parts_left(tmp_path / "two")
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert [r["n"] for r in metrics["results"]] == [7, 7]


def test_sft_data_with_a_model_reasoner_on_two_processes(data, tmp_path):
    args = ["care", "sft-data", "--input", str(data / "qa.json"), "--reasoner", f"hf:{TINY}",
            "--max-new-tokens", "8", "--batch-size", "2"]
    launch([*args, "--out", "one/sft.jsonl"], 1, tmp_path)
    launch([*args, "--out", "two/sft.jsonl"], 2, tmp_path)
    one = {r["key"]: r["value"] for r in records(tmp_path / "one" / "sft.cache.jsonl")}
    two = records(tmp_path / "two" / "sft.cache.jsonl")
    assert len(two) == len({r["key"] for r in two}) == 7
    assert {r["key"]: r["value"] for r in two} == one  # greedy reasoning: the same answers, each once
    stats = json.loads((tmp_path / "two" / "sft.stats.json").read_text())
    assert stats["stages"] == json.loads((tmp_path / "one" / "sft.stats.json").read_text())["stages"]
    assert stats["stages"]["stage1_reasoning"]["in"] == 7  # counts summed over both processes
    no_parts_left(tmp_path / "two")


def test_sft_loss_curve_on_two_processes_equals_one_at_the_same_global_batch(data, tmp_path):
    launch(["care", "sft-data", "--input", str(data / "qa.json"), "--out", "sft.jsonl"], 1, tmp_path)
    args = ["care", "sft", "--preset", str(data / "mp.yaml"), "--data", "sft.jsonl", "--model", TINY,
            "--max-steps", "3"]  # 7 traces: three full global batches of 2 (a last, short one would be padded)
    launch([*args, "--out", "one", "--batch-size", "2"], 1, tmp_path)
    launch([*args, "--out", "two", "--batch-size", "1"], 2, tmp_path)

    def curve(run: str) -> list[tuple[int, float, float]]:
        state = json.loads((tmp_path / run / "checkpoint-3" / "trainer_state.json").read_text())
        return [(h["step"], h["loss"], h["num_tokens"]) for h in state["log_history"] if "loss" in h]

    one, two = curve("one"), curve("two")
    assert [s for s, _, _ in two] == [1, 2, 3] and [n for *_, n in two] == [n for *_, n in one]
    assert [loss for _, loss, _ in two] == pytest.approx([loss for _, loss, _ in one], rel=1e-4, abs=1e-5)
    assert one[0][1] != pytest.approx(one[-1][1], abs=1e-4)  # the weights moved: the comparison means something
    assert (tmp_path / "two" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "two" / "sft_metrics.json").read_text())["steps"] == 3


def test_grpo_curriculum_draws_the_same_levels_per_step_on_two_processes(data, tmp_path):
    args = ["care", "grpo", "--preset", str(data / "mp.yaml"), "--easy", str(data / "easy.json"),
            "--hard", str(data / "hard.jsonl"), "--model", TINY, "--max-steps", "3", "--num-generations", "3",
            "--ramp-steps", "2", "--p-max", "0.5"]
    launch([str(tmp_path / "one-levels"), *args, "--out", "one", "--batch-size", "6"], 1, tmp_path, RECORDER)
    launch([str(tmp_path / "two-levels"), *args, "--out", "two", "--batch-size", "3"], 2, tmp_path, RECORDER)

    def drawn(prefix: str) -> dict[int, list[tuple[str, str]]]:
        by_step: dict[int, list[tuple[str, str]]] = {}
        for path in sorted(tmp_path.glob(f"{prefix}.rank*.jsonl")):
            for r in records(path):
                by_step.setdefault(r["step"], []).extend(zip(r["ids"], r["levels"], strict=True))
        return {step: sorted(rows) for step, rows in by_step.items()}

    one, two = drawn("one-levels"), drawn("two-levels")
    assert len(list(tmp_path.glob("two-levels.rank*.jsonl"))) == 2  # both processes scored completions
    assert sorted(two) == [0, 1, 2] and two == one
    share = {step: sum(level == "hard" for _, level in rows) / len(rows) for step, rows in two.items()}
    assert share[0] == 0.0 and max(share.values()) > 0  # the ramp starts easy and mixes hard in
    assert (tmp_path / "two" / "curriculum.jsonl").read_text() == (tmp_path / "one" / "curriculum.jsonl").read_text()
    assert (tmp_path / "two" / "final-adapter" / "adapter_model.safetensors").exists()
    assert len(records(tmp_path / "two" / "reward_curve.jsonl")) == 3  # written once, not once per process


def test_reproduce_on_two_processes(tmp_path):
    preset = Path(__file__).parents[1] / "care" / "data" / "tiny-preset.yaml"
    out = launch(["care", "reproduce", "--preset", str(preset), "--out", "run", "--no-ablations"], 2, tmp_path)
    assert out.count("Results (F1") == 1
    run = tmp_path / "run"
    assert {p.name for p in (run / "stages").iterdir()} >= {f"{s}.done.json" for s in (
        "1-synthetic-data", "2-sft-data", "3-sft", "4-grpo", "5-eval")}
    files = list((run / "eval" / "predictions").glob("*/*.jsonl"))
    assert files
    for path in files:
        ids = [r["id"] for r in records(path)]
        assert len(ids) == len(set(ids)) > 0, path
    no_parts_left(run)
    assert json.loads((run / "eval" / "metrics.json").read_text())["results"]
