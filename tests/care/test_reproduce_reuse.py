"""``reproduce`` does not regenerate the CARE row when the dev curve kept the SFT adapter (update 0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carelab.care import reproduce
from carelab.care.eval import harness
from carelab.care.eval.harness import MethodSpec, predictions_path


def _grpo_run(root: Path, best_step: int) -> Path:
    """A finished GRPO folder as far as the check reads it: metrics and the stacked dev-best adapter."""
    adapter = root / "grpo" / "dev-best-adapter"
    adapter.mkdir(parents=True)
    (root / "grpo" / "grpo_metrics.json").write_text(json.dumps({"dev_best_step": best_step}))
    (adapter / "STACKED_FROM.json").write_text(json.dumps({"first": str(root / "sft"), "second": "x"}))
    return adapter


@pytest.fixture
def fake_eval(monkeypatch):
    """run_eval stand-in: generates ("gen by LABEL") only the rows a label lacks, and records each call."""
    calls: list[list[str]] = []

    def run_eval(config):
        calls.append([m.name for m in config.methods])
        for spec in config.methods:
            for test in config.data:
                path = predictions_path(config.out, spec.name, Path(test).name.split(".")[0])
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps({"id": "q1", "label": spec.name, "adapter": spec.adapter,
                                                "raw": f"gen by {spec.name}"}) + "\n")

    monkeypatch.setattr(harness, "run_eval", run_eval)
    return calls


def _methods(root: Path, adapter: Path) -> list[MethodSpec]:
    return [MethodSpec("original", label="Original"),
            MethodSpec("care", label="SFT-only", adapter=str(root / "sft")),
            MethodSpec("care", label="CARE", adapter=str(adapter))]


def test_dev_best_at_update_zero_copies_the_sft_rows(tmp_path, fake_eval):
    adapter = _grpo_run(tmp_path, best_step=0)
    cfg = reproduce.ReproduceConfig(preset="p", out=str(tmp_path))
    out = tmp_path / "eval"
    reproduce._evaluate(cfg, ["a/test-x.jsonl", "a/test-y.jsonl"], _methods(tmp_path, adapter), out)
    assert fake_eval == [["Original", "SFT-only"], ["Original", "SFT-only", "CARE"]]
    for key in ("test-x", "test-y"):
        rec = json.loads(predictions_path(out, "CARE", key).read_text())
        assert rec == {"id": "q1", "label": "CARE", "method": "care", "adapter": str(adapter),
                       "raw": "gen by SFT-only"}


@pytest.mark.parametrize("best_step", [20, None])
def test_a_trained_dev_best_is_generated(tmp_path, fake_eval, best_step):
    adapter = _grpo_run(tmp_path, best_step=best_step)
    out = tmp_path / "eval"
    reproduce._evaluate(reproduce.ReproduceConfig(preset="p", out=str(tmp_path)), ["a/test-x.jsonl"],
                        _methods(tmp_path, adapter), out)
    assert fake_eval == [["Original", "SFT-only", "CARE"]]
    assert "gen by CARE" in predictions_path(out, "CARE", "test-x").read_text()


def test_final_adapter_or_other_sft_is_never_aliased(tmp_path):
    adapter = _grpo_run(tmp_path, best_step=0)
    assert reproduce._is_unchanged_sft(str(adapter), str(tmp_path / "sft"))
    assert not reproduce._is_unchanged_sft(str(adapter), str(tmp_path / "other-sft"))
    assert not reproduce._is_unchanged_sft(str(tmp_path / "grpo" / "final-adapter"), str(tmp_path / "sft"))
    assert not reproduce._is_unchanged_sft(None, str(tmp_path / "sft"))
