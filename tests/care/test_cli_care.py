"""The CARE CLI: ask (tiny and SmolLM2), demo, clear one-line errors, reproduce on a toy preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carelab.cli import app

runner = CliRunner()
HERE = Path(__file__).parent


def test_help_lists_sub_apps():
    result = runner.invoke(app, ["--help"])
    for name in ("care", "lora", "watermark", "diffusion", "data", "serve", "demo"):
        assert name in result.output


def test_ask_missing_file_is_one_line_error():
    result = runner.invoke(app, ["care", "ask", "--context", "/no/such/file.txt", "-q", "x"])
    assert result.exit_code == 2
    assert "no such file" in result.output and "Traceback" not in result.output


def test_ask_json_on_tiny_model_with_truncation(tmp_path):
    ctx = tmp_path / "doc.txt"
    ctx.write_text(" ".join(f"sentence{i}." for i in range(3000)))
    result = runner.invoke(app, ["care", "ask", "-c", str(ctx), "-q", "Which sentence is last?", "-m",
                                 "tiny-random-qwen2", "--adapter", "none", "--max-new-tokens", "4", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{"):])
    assert payload["truncated"] is True
    assert set(payload["rewards"]) == {"format", "retrieval"}


def test_reproduce_chain_on_toy_preset(tmp_path):
    out = tmp_path / "run"
    preset = ["care", "reproduce", "--preset", str(HERE / "data" / "tiny-preset.yaml"), "--out", str(out)]
    bad = runner.invoke(app, [*preset, "--stop-after", "train"])
    assert bad.exit_code != 0 and "unknown stop point 'train'" in bad.output and "Traceback" not in bad.output
    # a first sitting ends at the dev curves: every GRPO run (the ablations' too) is done, nothing is evaluated
    first = runner.invoke(app, [*preset, "--stop-after", "grpo"])
    assert first.exit_code == 0, first.output
    assert "Stopped after grpo" in first.output and "heldout_reward.md" in first.output
    done = {p.name.removesuffix(".done.json") for p in (out / "stages").glob("*.done.json")}
    assert done == {"1-synthetic-data", "2-sft-data", "3-sft", "4-grpo", "6-grpo-no-retrieval-reward",
                    "6-grpo-no-curriculum"}
    result = runner.invoke(app, preset)  # the second sitting resumes with the evaluations
    assert result.exit_code == 0, result.output
    assert "4-grpo (done earlier, skipped)" in result.output
    for stage in ("1-synthetic-data", "2-sft-data", "3-sft", "4-grpo", "5-eval", "6-grpo-no-retrieval-reward",
                  "6-grpo-no-curriculum", "7-eval-ablations"):
        assert (out / "stages" / f"{stage}.done.json").exists(), stage
    sft_marker = json.loads((out / "stages" / "3-sft.done.json").read_text())
    assert sft_marker["peak_rss_gb"] > 0  # each stage's own peak (Linux)
    assert 0 < sft_marker["start_rss_gb"] <= sft_marker["peak_rss_gb"]  # what the stage inherited
    report = (out / "eval" / "report.md").read_text()
    for label in ("Original", "CARE-prompt", "SFT-only", "CARE"):
        assert label in report
    assert "CARE (bundled)" not in report  # the bundled adapter does not fit the tiny model: skipped
    assert "heldout-style" in report
    ablation_report = (out / "eval-ablations" / "report.md").read_text()
    for label in ("SFT-only", "CARE", "no-retrieval-reward", "no-curriculum"):
        assert label in ablation_report
    # the main rows' predictions were copied, not generated again
    from carelab.care.eval.harness import predictions_path

    main_pred = predictions_path(out / "eval", "CARE", "test-counterfactual")
    assert main_pred.read_text() == predictions_path(out / "eval-ablations", "CARE", "test-counterfactual").read_text()
    assert (out / "eval" / "viewer.html").exists()
    assert (out / "grpo" / "heldout_reward.jsonl").exists()
    again = runner.invoke(app, ["care", "reproduce", "--preset", str(HERE / "data" / "tiny-preset.yaml"),
                                "--out", str(out)])
    assert again.exit_code == 0 and "done earlier, skipped" in again.output
    # the ablation preset shape: a second run reuses the finished run's data, SFT and CARE
    abl = tmp_path / "ablations"
    result = runner.invoke(app, ["care", "reproduce", "--preset", str(HERE / "data" / "tiny-preset.yaml"),
                                 "--out", str(abl), "--base-run", str(out)])
    assert result.exit_code == 0, result.output
    assert not (abl / "stages" / "3-sft.done.json").exists()
    assert (abl / "stages" / "7-eval-ablations.done.json").exists()
    assert "no-curriculum" in (abl / "eval-ablations" / "report.md").read_text()


@pytest.mark.slow
def test_smollm2_answers_in_care_format_through_ask(tmp_path):
    """SmolLM2 with the CARE prompt (plus the bundled adapter when present) answers via `care ask --json`."""
    ctx = tmp_path / "doc.txt"
    ctx.write_text("Marie Curie was born in Warsaw in 1867. She moved to Paris to study physics.")
    result = runner.invoke(app, ["care", "ask", "-c", str(ctx), "-q", "Where was Marie Curie born?",
                                 "--max-new-tokens", "96", "--json", "--gold", "Warsaw"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{"):])
    assert payload["raw"].strip()
    assert set(payload["rewards"]) == {"accuracy", "format", "retrieval", "total"}
    for quote in payload["quotes"]:
        assert quote["match"] in {"exact", "fuzzy", "none"}
    if payload["adapter"]:  # the shipped CARE adapter must produce the format
        assert payload["well_formed"] and "Warsaw" in payload["answer"]


def test_reproduce_refuses_a_folder_made_with_other_settings(tmp_path):
    from carelab.care.reproduce import ReproduceConfig, _check_same_settings
    from carelab.runs import InputError, save_config

    cfg = ReproduceConfig(preset="p", out=str(tmp_path), data={"easy": 4})
    save_config(cfg, tmp_path, "reproduce_config.json")
    _check_same_settings(cfg, tmp_path / "reproduce_config.json")  # same settings: fine
    cfg.data = {"easy": 8}
    with pytest.raises(InputError, match="data differ"):
        _check_same_settings(cfg, tmp_path / "reproduce_config.json")
