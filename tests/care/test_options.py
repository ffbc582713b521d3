"""Every training option is declared once (a dataclass field with help): its flag, preset key and saved config
come from it, and every field of TRL's GRPOConfig/SFTConfig is reachable through ``trl``."""

from __future__ import annotations

import dataclasses

import pytest
from trl import GRPOConfig, SFTConfig
from typer.testing import CliRunner

import carelab.care.cli.main as care_cli
from carelab.care.train.config import GRPORunConfig, SFTRunConfig, trl_options
from carelab.cli import app
from carelab.options import flag_name
from carelab.runs import InputError


@pytest.mark.parametrize("cls", [SFTRunConfig, GRPORunConfig])
def test_every_field_has_help_and_a_flag(cls):
    command = "sft" if cls is SFTRunConfig else "grpo"
    page = CliRunner().invoke(app, ["care", command, "--help"], env={"COLUMNS": "250"}).output
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
        assert flag_name(f) in page, f"{flag_name(f)} missing from `care {command} --help`"


@pytest.mark.parametrize("trl_cls", [GRPOConfig, SFTConfig])
def test_every_trl_field_is_reachable_and_typos_are_named(trl_cls):
    for f in dataclasses.fields(trl_cls):
        assert trl_options(trl_cls, {f.name: "x"}, {"output_dir": "o"})[f.name] == "x"
    with pytest.raises(InputError, match="did you mean loss_type"):
        trl_options(GRPOConfig, {"loss_typ": "dapo"}, {})


def test_grpo_help_says_how_to_reach_trl():
    page = CliRunner().invoke(app, ["care", "grpo", "--help"], env={"COLUMNS": "250"}).output
    assert "--trl" in page and "GRPOConfig" in page and "trl:" in page


def _parsed(monkeypatch, args: list[str]):
    """The config a ``care`` training command would run (the run itself replaced)."""
    seen = []
    monkeypatch.setattr(care_cli, "_run_user_job", lambda fn, cfg: seen.append(cfg) or {
        "first_reward": 0, "last_reward": 0, "steps": 0, "final_adapter": "x", "first_loss": 0, "last_loss": 0})
    res = CliRunner().invoke(app, ["care", *args])
    return res, (seen[0] if seen else None)


def test_flags_become_the_config(monkeypatch):
    res, cfg = _parsed(monkeypatch, ["grpo", "--easy", "a.json", "--out", "o", "-m", "tiny", "--no-curriculum",
                                     "--reward-weights", "0.5,0.2,0.3", "--report-to", "none", "--loss-type", "grpo",
                                     "--trl", "scale_rewards=batch", "--trl", "epsilon_high=0.28"])
    assert res.exit_code == 0, res.output
    assert cfg == GRPORunConfig(easy=["a.json"], out="o", model="tiny", curriculum=False,
                                reward_weights=(0.5, 0.2, 0.3), report_to=[], loss_type="grpo",
                                trl={"scale_rewards": "batch", "epsilon_high": 0.28})


def test_preset_then_flags(monkeypatch, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("sft:\n  lr: 0.001\n  epochs: 2\n  trl: {lr_scheduler_type: linear}\n")
    res, cfg = _parsed(monkeypatch, ["sft", "--preset", str(preset), "--data", "d.jsonl", "--out", "o",
                                     "--epochs", "1", "--trl", "max_grad_norm=0.5"])
    assert res.exit_code == 0, res.output
    assert (cfg.lr, cfg.epochs) == (0.001, 1.0)
    assert cfg.trl == {"lr_scheduler_type": "linear", "max_grad_norm": 0.5}


@pytest.mark.parametrize("args, message", [
    (["grpo", "--easy", "a", "--out", "o", "--reward-weights", "1,2"], "three numbers"),
    (["grpo", "--easy", "a", "--out", "o", "--reward-weights", "a,b,c"], "--reward-weights"),
    (["grpo", "--easy", "a", "--out", "o", "--long-prompts", "cut"], "truncate"),
    (["sft", "--out", "o"], "missing setting"),
])
def test_bad_flags_are_one_line(monkeypatch, args, message):
    res, cfg = _parsed(monkeypatch, args)
    assert res.exit_code == 2 and message in res.output and cfg is None
