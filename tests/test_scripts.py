"""The scripts that docs/results/cpu-full.md quotes give the quoted numbers from the committed result files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARE = ROOT / "docs/results/care"


def _run(*args: str) -> str:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True, cwd=ROOT).stdout


def test_paired_items_gives_the_documented_care_minus_bundled():
    out = _run("scripts/paired_items.py", str(CARE / "cpu-full-kl-items.csv"), str(CARE / "cpu-full-c82dedd-items.csv"),
               "CARE")
    assert "Original rows identical F1 in both files: 400/400" in out
    assert "Avg (datasets weighted equally): -3.0 [-7.8, +1.7]" in out


def test_paired_items_takes_another_method_and_has_no_share_without_quotes():
    out = _run("scripts/paired_items.py", str(CARE / "cpu-full-kl-items.csv"), str(CARE / "cpu-full-kl-items.csv"),
               "SFT-only", "Original")
    assert "SFT-only" in out and "a side has no quotes" in out


def test_paired_items_pairs_an_ablation_only_on_its_own_sets():
    # run 8's ablation was evaluated on two of the four sets; the pairing skips the others instead of failing.
    items = str(CARE / "cpu-full-run8-items.csv")
    out = _run("scripts/paired_items.py", items, items, "CARE", "no-retrieval-reward")
    assert "CofCA: n=70 F1 +0.0 [-4.3, +4.3]  exact-quote share pts +2.7 [-0.3, +7.1]" in out
    assert "test-multihop: n=100" in out and "test-longbench" not in out


def test_reward_curve_summary_gives_the_documented_run7_log():
    out = _run("scripts/reward_curve_summary.py", str(CARE / "cpu-full-testlen-reward_curve.jsonl"))
    assert "40 logged groups" in out
    assert "rewards/accuracy/mean: 0.061 [0.033, 0.092]" in out
    assert "rewards/retrieval/mean: 0.305 [0.241, 0.374]" in out
    assert "groups with no reward variance: 5 / 40" in out
    assert "KL to the reference: mean 0.0035, max 0.0088" in out


def test_heldout_arms_gives_the_documented_run8_ablation():
    out = _run("scripts/heldout_arms.py", str(CARE / "cpu-full-run8-heldout_reward.jsonl"),
               str(CARE / "cpu-full-run8-noret-heldout_reward.jsonl"), "80", "CARE", "no-retrieval-reward")
    assert "update 80, n = 24 dev prompts; same update-0 scores in both runs: True" in out
    assert "| retrieval | +0.097 [-0.069, 0.271] | +0.083 [-0.042, 0.208] | +0.014 [-0.139, 0.167] |" in out
    assert "| total | +0.047 [-0.022, 0.118] | +0.042 [-0.042, 0.121] | +0.006 [-0.099, 0.104] |" in out


def test_memory_trace_runs_a_command_and_logs_the_heap_split(tmp_path):
    import json

    trace = tmp_path / "trace.jsonl"
    out = _run("scripts/memory_trace.py", str(trace), "care", "--help")
    assert "eval" in out  # the carelab command itself ran
    rows = [json.loads(line) for line in trace.read_text().splitlines()]
    assert rows and {"rss_gb", "heap_gb", "in_use_gb", "free_kept_gb", "mapped_gb"} <= set(rows[-1])
    assert 0 < rows[-1]["in_use_gb"] <= rows[-1]["heap_gb"] + rows[-1]["mapped_gb"]


def test_paired_items_gives_the_documented_demo_care_minus_sft_only():
    # docs/results/cpu-quick.md: the demo's six GRPO updates mend one of its SFT adapter's 41 altered-fact answers.
    items = str(CARE / "cpu-quick-with-sft-only-items.csv")
    out = _run("scripts/paired_items.py", items, items, "CARE", "SFT-only")
    assert "Original rows identical F1 in both files: 60/60" in out
    assert "CofCA: n=41 F1 +2.4 [+0.0, +7.3]" in out


def test_quote_counts_gives_the_documented_run9_counts():
    # run 9's exact-quote share gain came with fewer quotes per answer, not more exact ones (cpu-full.md, run 9).
    out = _run("scripts/quote_counts.py", str(CARE / "cpu-full-testlen-long-items.csv"), "CARE", "SFT-only")
    assert "n = 400 items paired" in out
    assert "quotes per answer: CARE 1.002, SFT-only 1.133, difference -0.130 [-0.168, -0.095]" in out
    assert "exact quotes per answer: CARE 0.627, SFT-only 0.655, difference -0.028 [-0.070, 0.015]" in out


def test_quote_counts_names_the_file_when_a_method_is_missing():
    proc = subprocess.run([sys.executable, "scripts/quote_counts.py", str(CARE / "cpu-full-testlen-long-items.csv"),
                           "CARE", "Original"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert "cpu-full-testlen-long-items.csv: no items scored for both 'CARE' and 'Original'" in proc.stderr


def test_reward_curve_summary_gives_the_documented_run9_log():
    out = _run("scripts/reward_curve_summary.py", str(CARE / "cpu-full-testlen-long-reward_curve.jsonl"))
    assert "120 logged groups" in out
    assert "rewards/retrieval/mean: 0.346 [0.294, 0.400]" in out
    assert "groups with no reward variance: 21 / 120" in out


def test_heldout_arms_gives_the_documented_run9_ablation_and_plots_the_curves(tmp_path):
    # cpu-full.md, run 9's ablation: late in training the retrieval reward separates the arms on dev.
    png = tmp_path / "arms.png"
    out = _run("scripts/heldout_arms.py", str(CARE / "cpu-full-testlen-long-heldout_reward.jsonl"),
               str(CARE / "cpu-full-testlen-long-noret-heldout_reward.jsonl"), "200", "CARE", "no-retrieval-reward",
               "--plot", str(png))
    assert "update 200, n = 24 dev prompts; same update-0 scores in both runs: True" in out
    assert "| retrieval | +0.319 [0.167, 0.486] | +0.069 [-0.021, 0.167] | +0.250 [0.125, 0.396] |" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heldout_arms_says_in_one_line_that_plot_needs_a_path():
    proc = subprocess.run([sys.executable, "scripts/heldout_arms.py", "a", "b", "--plot"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode != 0 and proc.stderr.strip() == "heldout_arms.py: --plot needs a PNG path"
    proc = subprocess.run([sys.executable, "scripts/heldout_arms.py", "a"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and proc.stderr.strip().startswith("usage: heldout_arms.py RUN_A RUN_B")


def test_paired_items_gives_the_documented_run9_ablation_over_all_items():
    # cpu-full.md, run 9's ablation on the test sets: the exact-quote gain needs the retrieval reward.
    items = str(CARE / "cpu-full-testlen-long-items.csv")
    out = _run("scripts/paired_items.py", items, items, "CARE", "no-retrieval-reward")
    assert "exact-quote share pts, all 400 paired items: +5.7 [+2.0, +9.4]" in out
    assert "in-context share pts, all 400 paired items: +5.8 [+2.4, +9.2]" in out
    out = _run("scripts/paired_items.py", items, items, "no-retrieval-reward", "SFT-only")
    assert "exact-quote share pts, all 400 paired items: -0.9 [-3.9, +1.9]" in out
    out = _run("scripts/paired_items.py", items, items, "CARE-update-240", "no-retrieval-reward-update-240")
    assert "exact-quote share pts, all 400 paired items: +8.7 [+4.6, +12.7]" in out


def test_memory_trace_summary_gives_the_documented_run9_grpo_growth():
    # cpu-full.md, run 9's GRPO memory: the peak grows while the heap in use stays near 2 GB (kept free blocks).
    out = _run("scripts/memory_trace.py", "--summary", str(CARE / "cpu-full-testlen-long-grpo-memory-trace.jsonl"))
    assert "max rss_gb: 4.10" in out and "max in_use_gb: 2.31" in out and "max free_kept_gb: 2.50" in out
    assert "peak RSS by 300 s: 3.21 GB" in out and "peak RSS by 800 s: 3.95 GB" in out
    assert "peak RSS by 900 s: 4.10 GB" in out
    out = _run("scripts/memory_trace.py", "--summary", str(CARE / "cpu-full-testlen-long-grpo-memory-trace-release.jsonl"))
    assert "max in_use_gb: 1.22" in out and "max free_kept_gb: 0.94" in out


def _grpo_folder(root: Path, loss: float, lora: float) -> Path:
    """A GRPO run folder in miniature: dev rows, logged losses, one final adapter."""
    import json

    import torch
    from safetensors.torch import save_file

    (root / "final-adapter").mkdir(parents=True)
    (root / "heldout_reward.jsonl").write_text(
        "".join(json.dumps({"step": s, "total_mean": 0.3 + s / 1000}) + "\n" for s in (0, 40)))
    (root / "reward_curve.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": loss * s}) + "\n" for s in (1, 2, 3)))
    save_file({"lora_A": torch.full((2, 2), lora)}, str(root / "final-adapter" / "adapter_model.safetensors"))
    return root


def test_same_grpo_run_says_same_only_when_rows_and_tensors_are_equal(tmp_path):
    a = _grpo_folder(tmp_path / "a", 0.1, 1.0)
    same = subprocess.run([sys.executable, "scripts/same_grpo_run.py", str(a), str(_grpo_folder(tmp_path / "b", 0.1, 1.0))],
                          capture_output=True, text=True, cwd=ROOT)
    assert same.returncode == 0 and "reward_curve.jsonl: 3 steps in both, all identical" in same.stdout
    assert "final-adapter: identical tensors" in same.stdout and same.stdout.endswith("same run\n")
    other = subprocess.run([sys.executable, "scripts/same_grpo_run.py", str(a), str(_grpo_folder(tmp_path / "c", 0.2, 1.5))],
                           capture_output=True, text=True, cwd=ROOT)
    assert other.returncode == 1 and "differ at steps [1, 2, 3]" in other.stdout
    assert "final-adapter: DIFFERENT tensors" in other.stdout and "not the same run" in other.stdout
    missing = subprocess.run([sys.executable, "scripts/same_grpo_run.py", str(a), str(tmp_path / "nowhere")],
                             capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode == 2 and missing.stderr.strip() == f"{tmp_path / 'nowhere'}: no such run folder"


def test_memory_trace_summary_gives_the_documented_heap_trim_numbers():
    # the 60-update probe with --trim-heap-every-update, and the preset's own 240-update GRPO sitting
    out = _run("scripts/memory_trace.py", "--summary", str(CARE / "cpu-full-testlen-long-grpo-memory-trace-trim.jsonl"),
               "100")
    assert "peak RSS by 300 s: 3.09 GB" in out and "peak RSS by 500 s: 3.25 GB" in out
    assert "peak RSS by 1000 s: 3.56 GB" in out and "max in_use_gb: 2.36" in out
    out = _run("scripts/memory_trace.py", "--summary", str(CARE / "cpu-full-grpo-sitting-memory-trace.jsonl"), "1200")
    assert "peak RSS by 1200 s: 3.52 GB" in out and "peak RSS by 3600 s: 3.68 GB" in out
    assert "(end): 3.77 GB" in out
