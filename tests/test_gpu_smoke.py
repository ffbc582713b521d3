"""benchmarks/gpu_smoke.sh: valid bash, and on a machine without CUDA it says SKIP and runs nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.sh"


def test_script_parses_as_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_without_cuda_it_skips_with_exit_code_2(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the script would run for real")
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(SCRIPT), "some/model", str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout.strip() == f"gpu_smoke: SKIP (no CUDA device visible to {sys.executable})"
    assert not (tmp_path / "out" / "train.json").exists()


def test_random_weights_builds_a_loadable_seeded_model_with_the_same_tokenizer(tmp_path):
    """benchmarks/random_weights.py: the config's architecture at random weights, the same seed the same weights,
    the tokenizer files copied (how the GPU smoke model was made where the real weights could not travel)."""
    import importlib.util

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from carelab.models import tiny_random_model

    spec = importlib.util.spec_from_file_location("random_weights", SCRIPT.with_name("random_weights.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    model, tok = tiny_random_model("llama")
    config_dir = tmp_path / "config"
    model.config.save_pretrained(config_dir)
    tok.save_pretrained(config_dir)
    assert not list(config_dir.glob("*.safetensors"))

    assert script.main([str(config_dir), str(tmp_path / "a"), "--dtype", "float32"]) == 0
    script.materialise(config_dir, tmp_path / "b", seed=0, dtype="float32")
    script.materialise(config_dir, tmp_path / "c", seed=1, dtype="float32")
    a, b, c = (load_file(str(tmp_path / name / "model.safetensors")) for name in "abc")
    assert all(bool((a[k] == b[k]).all()) for k in a) and any(not bool((a[k] == c[k]).all()) for k in a)
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "a"))
    assert loaded.config.num_hidden_layers == model.config.num_hidden_layers
    assert AutoTokenizer.from_pretrained(str(tmp_path / "a")).get_vocab() == tok.get_vocab()
    with pytest.raises(SystemExit, match="config.json is missing"):
        script.materialise(tmp_path / "nowhere", tmp_path / "d")
