"""Presets: every bundled preset builds the configs; flags override; unknown keys are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from carelab.care.train.config import GRPORunConfig, SFTRunConfig
from carelab.presets import build_config, load_preset, preset_names
from carelab.runs import InputError


def test_bundled_presets_build():
    assert {"cpu-quick", "cpu-full", "cpu-full-ablations", "paper-qwen2.5-7b"} <= set(preset_names())
    for name in preset_names():
        p = load_preset(name)
        sft = build_config(SFTRunConfig, p["sft"], {"data": ["x"], "out": "o"}, name)
        grpo = build_config(GRPORunConfig, p["grpo"], {"easy": ["e"], "out": "o"}, name)
        assert sft.lora_r == 8 and grpo.num_generations == 5
        assert (grpo.batch_size * grpo.grad_accum) % grpo.num_generations == 0
        # the paper keeps its KL term; cpu-full anchors to its SFT model (chosen on dev); the demo runs without one
        beta = {"paper-qwen2.5-7b": 0.01, "cpu-full": 0.04, "cpu-full-ablations": 0.04, "cpu-quick": 0.0}
        assert grpo.beta == beta[name], name


def test_bundled_presets_data_sets_generate():
    """Every synthetic set a preset names is one synth accepts (one item each, so this stays fast)."""
    from carelab.care.data import synth

    for name in preset_names():
        data = load_preset(name)["data"]
        specs = [*data["sft"], data["easy"], data["hard"], *data["tests"].values()]
        assert len(specs) >= 4, name
        for spec in specs:
            opts = {k: v for k, v in spec.items() if k not in ("kind", "n", "seed")}
            assert synth.generate(spec["kind"], 1, spec.get("seed", 0), **opts), (name, spec)
        assert all(v["n"] >= 100 for v in data["tests"].values()) or name == "cpu-quick", name


def test_flags_override_preset():
    p = load_preset("cpu-quick")
    cfg = build_config(GRPORunConfig, p["grpo"], {"easy": ["e"], "out": "o", "max_steps": 99, "lr": None}, "cpu-quick")
    assert cfg.max_steps == 99 and cfg.lr == p["grpo"]["lr"]


def test_unknown_key_and_preset_errors(tmp_path):
    with pytest.raises(InputError, match="field 'learning_rat'"):
        build_config(SFTRunConfig, {"learning_rat": 1}, {"data": ["x"], "out": "o"}, "my.yaml")
    with pytest.raises(InputError, match="unknown preset"):
        load_preset("no-such-preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft: [unclosed\n")
    with pytest.raises(InputError, match="invalid YAML"):
        load_preset(str(bad))


def test_ablation_preset_changes_only_the_ablation():
    """cpu-full-ablations reuses cpu-full's SFT: every other section must be cpu-full's, or the rows differ in more
    than the ablated reward."""
    full, abl = load_preset("cpu-full"), load_preset("cpu-full-ablations")
    for section in ("model", "seed", "data", "sft", "grpo", "eval"):
        assert abl[section] == full[section], section
    assert abl["base_run"] == "runs/cpu-full" and abl["ablations"] == ["no-retrieval-reward"]


def test_ablation_selection(tmp_path):
    from carelab.care.reproduce import ABLATIONS, ReproduceConfig, _selected_ablations

    def pick(value):
        return list(_selected_ablations(ReproduceConfig(preset="p.yaml", out=str(tmp_path), ablations=value)))

    assert pick(True) == list(ABLATIONS) and pick(False) == [] and pick(["no-curriculum"]) == ["no-curriculum"]
    with pytest.raises(InputError, match="unknown ablation.*no-such"):
        pick(["no-such"])


def test_synthetic_set_seed_draws_other_items(tmp_path):
    """A set's own ``seed`` gives other items of the same kind (GRPO prompts apart from the SFT traces); a bad one
    is one preset error."""
    import json

    from carelab.care.reproduce import _synth_set

    spec = {"kind": "hotpotqa", "n": 3, "context_words": 80, "distractors": 1}
    same = _synth_set(spec, 0, tmp_path / "a", "train", "data.easy")
    other = _synth_set({**spec, "seed": 1}, 0, tmp_path / "b", "train", "data.easy")
    ids = [{row["_id"] for row in json.loads(Path(p).read_text())} for p in (same, other)]
    assert ids[0] and not ids[0] & ids[1]
    with pytest.raises(InputError, match="n and seed must be integers"):
        _synth_set({**spec, "seed": "one"}, 0, tmp_path / "c", "train", "data.easy")


def test_eval_checkpoint_picks_the_grpo_adapter(tmp_path):
    """``eval.checkpoint: dev-best`` evaluates the dev-chosen adapter and needs the kept adapters to exist."""
    from carelab.care.reproduce import ReproduceConfig, _checkpoint, _grpo_adapter
    from carelab.care.train.config import DEV_BEST_ADAPTER, FINAL_ADAPTER

    def cfg(checkpoint, **grpo):
        return ReproduceConfig(preset="p.yaml", out=str(tmp_path), grpo=grpo, eval={"checkpoint": checkpoint})

    assert _grpo_adapter(cfg("final"), tmp_path) == str(tmp_path / FINAL_ADAPTER)
    kept = cfg("dev-best", heldout_prompts=8, heldout_keep_adapters=True)
    assert _grpo_adapter(kept, tmp_path) == str(tmp_path / DEV_BEST_ADAPTER)
    with pytest.raises(InputError, match="needs grpo.heldout_prompts"):
        _checkpoint(cfg("dev-best", heldout_prompts=8))
    with pytest.raises(InputError, match="unknown checkpoint 'best'"):
        _checkpoint(cfg("best"))
    assert load_preset("cpu-full")["eval"]["checkpoint"] == "dev-best"
    _checkpoint(ReproduceConfig(preset="cpu-full", out=str(tmp_path), grpo=load_preset("cpu-full")["grpo"],
                                eval=load_preset("cpu-full")["eval"]))


def _outside_grpo(preset: dict) -> dict:
    """A preset without what a GRPO probe may change: its name, GRPO settings, GRPO prompt pool (``data.easy`` /
    ``data.hard``), which methods its evaluation runs (a probe may skip Original, whose rows do not change) and
    the sets an ablation would be evaluated on (probes train no ablation)."""
    rest = {k: v for k, v in preset.items() if k not in ("name", "grpo")}
    rest["data"] = {k: v for k, v in rest["data"].items() if k not in ("easy", "hard")}
    rest["eval"] = {k: v for k, v in rest["eval"].items() if k not in ("methods", "ablation_tests")}
    return rest


def test_cpu_full_is_run_9_with_its_heap_trimmed():
    """docs/results/cpu-full.md gives run 9's numbers as the preset's: run 9 ran from its probe file, and the
    preset may differ from it only in name, Original's row (the probe reused run 6's) and the heap trim, which
    changes no number (tests/care/test_train.py; equal losses in the 60-update memory probe)."""
    probes = Path(__file__).resolve().parents[1] / "docs/results/care/probes"
    full, run9 = load_preset("cpu-full"), load_preset(str(probes / "cpu-full-testlen-long.yaml"))
    assert full["grpo"] == {**run9["grpo"], "trim_heap_every_update": True}
    assert {k: v for k, v in full.items() if k not in ("name", "grpo", "eval")} == \
        {k: v for k, v in run9.items() if k not in ("name", "grpo", "eval")}
    # the ablation is evaluated on all four sets (no ablation_tests), Original beside SFT-only and CARE
    run9_eval = {k: v for k, v in run9["eval"].items() if k != "ablation_tests"}
    assert full["eval"] == {**run9_eval, "methods": ["original", "sft-only", "care"]}


@pytest.mark.parametrize("probe", sorted((Path(__file__).resolve().parents[1] / "docs/results/care/probes")
                                         .glob("*.yaml")), ids=lambda p: p.stem)
def test_documented_grpo_probes_change_only_grpo_settings(probe):
    """The dev probes in docs/results/cpu-full.md are cpu-full with other GRPO settings or another GRPO pool: they
    still build, and the SFT data, SFT, test sets and evaluation settings are cpu-full's, so their SFT-only rows
    and test items compare with the preset's."""
    full, other = load_preset("cpu-full"), load_preset(str(probe))
    build_config(GRPORunConfig, other["grpo"], {"easy": ["e"], "out": "o"}, str(probe))
    assert _outside_grpo(other) == _outside_grpo(full)
    changed = (other["grpo"], other["data"].get("easy"), other["data"].get("hard"))
    assert changed != (full["grpo"], full["data"].get("easy"), full["data"].get("hard"))
    assert other["name"] == probe.stem
    assert set(other["eval"]["methods"]) <= set(full["eval"]["methods"])
