"""``carelab care reproduce``: the CARE paper's experiment in miniature, in one resumable command.

synthetic data → SFT data (rule backends) → SFT → GRPO with curriculum (and ablations) → evaluation of
Original, CARE-prompt, SFT-only and CARE on multi-hop, long-context and counterfactual test sets → report.
Each stage writes a done-marker; a rerun skips finished stages and resumes the unfinished one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from carelab.care.train import FINAL_ADAPTER
from carelab.presets import build_config, load_preset
from carelab.runs import InputError, save_config, to_jsonable

console = Console()

#: (file stem, synth kind, split key in the preset's data section)
TRAIN_SETS = (("sft-source", "hotpotqa", "sft_source"), ("easy", "drop", "easy"), ("hard", "msmarco", "hard"))
TEST_SETS = (("multihop", "hotpotqa", "test_multihop"), ("longbench", "longbench", "test_longbench"),
             ("counterfactual", "cofca", "test_counterfactual"))


@dataclass
class ReproduceConfig:
    """The effective preset of a reproduce run (saved as ``reproduce_config.json``)."""

    preset: str
    out: str
    model: str = "smollm2-135m-instruct"
    seed: int = 0
    ablations: bool = False
    data: dict[str, Any] = field(default_factory=dict)
    sft: dict[str, Any] = field(default_factory=dict)
    grpo: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)


def _stage(out: Path, name: str) -> Path:
    return out / "stages" / f"{name}.done.json"


def _run_stage(out: Path, name: str, fn, *args, **kwargs) -> Any:
    """Run ``fn`` unless its done-marker exists; record wall time in the marker."""
    marker = _stage(out, name)
    if marker.exists():
        console.print(f"[dim]✓ {name} (done earlier, skipped)[/]")
        return json.loads(marker.read_text()).get("result")
    console.rule(f"[bold]{name}")
    t0 = time.time()
    result = fn(*args, **kwargs)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"seconds": round(time.time() - t0, 1), "result": result}, default=str, indent=2))
    console.print(f"[green]✓ {name}[/] in {time.time() - t0:.0f} s")
    return result


def _make_data(cfg: ReproduceConfig, data_dir: Path) -> dict[str, str]:
    from carelab.care import synth

    paths: dict[str, str] = {}
    opts = cfg.data.get("synth_options", {})
    for stem, kind, key in TRAIN_SETS + TEST_SETS:
        n = int(cfg.data.get(key, 0))
        if n <= 0:
            continue
        split = "test" if key.startswith("test_") else "train"
        ext = ".jsonl" if kind in ("musique", "longbench", "cofca") else ".json"
        path = data_dir / f"{stem}{ext}"
        synth.write(kind, n, cfg.seed, path, split=split, **opts.get(stem, {}))
        paths[stem] = str(path)
    return paths


def _make_sft_data(cfg: ReproduceConfig, source: str, out_file: Path) -> dict:
    from carelab.care.sftdata import SftDataConfig, run_pipeline

    stats = run_pipeline(SftDataConfig(input=source, format="hotpotqa", reasoner="rule", injector="rule",
                                       out=str(out_file)))
    return stats if isinstance(stats, dict) else {"stats": str(stats)}


def _sft(cfg: ReproduceConfig, sft_file: str, out: Path) -> dict:
    from carelab.care.train import SFTRunConfig, run_sft

    sft_cfg = build_config(SFTRunConfig, cfg.sft, {"data": [sft_file], "out": str(out), "model": cfg.model,
                                                   "seed": cfg.seed, "resume": True}, cfg.preset)
    return run_sft(sft_cfg)


def _grpo(cfg: ReproduceConfig, data: dict[str, str], sft_dir: Path, out: Path, **ablation: Any) -> dict:
    from carelab.care.train import GRPORunConfig, run_grpo

    grpo_cfg = build_config(GRPORunConfig, cfg.grpo, {"easy": [data["easy"]], "hard": [data["hard"]],
                                                      "init_adapter": str(sft_dir), "out": str(out),
                                                      "model": cfg.model, "seed": cfg.seed, "resume": True,
                                                      **ablation}, cfg.preset)
    return run_grpo(grpo_cfg)


def _evaluate(cfg: ReproduceConfig, data: dict[str, str], adapters: dict[str, str], out: Path) -> dict:
    from carelab.care.evaluate import EvalConfig, MethodSpec, run_eval

    methods = [MethodSpec("original", label="Original"), MethodSpec("care-prompt", label="CARE-prompt")]
    methods += [MethodSpec("care", label=label, adapter=path) for label, path in adapters.items()]
    tests = [data[stem] for stem, _, _ in TEST_SETS if stem in data]
    ecfg = EvalConfig(data=tests, methods=methods, out=str(out), model=cfg.model, seed=cfg.seed,
                      **{k: v for k, v in cfg.eval.items() if k in ("limit", "max_new_tokens", "batch_size",
                                                                    "max_prompt_tokens", "dtype")})
    run_eval(ecfg)
    return {"out": str(out)}


def _check_same_settings(cfg: ReproduceConfig, saved: Path) -> None:
    """Refuse to resume a run folder made with other settings (its finished stages would be reused)."""
    if not saved.exists():
        return
    old = json.loads(saved.read_text())
    new = json.loads(json.dumps(to_jsonable(cfg)))
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise InputError(saved, f"this run folder was made with other settings ({', '.join(diff)} differ); "
                                "pass a new --out or delete the folder to start over")


def reproduce(preset: str, out: str | None = None, model: str | None = None, seed: int | None = None,
              ablations: bool | None = None) -> Path:
    """Run (or resume) the whole chain for ``preset``; returns the report folder."""
    raw = load_preset(preset)
    unknown = set(raw) - {"name", "description", "model", "seed", "ablations", "data", "sft", "grpo", "eval"}
    if unknown:
        raise InputError(preset, f"unknown preset section(s): {', '.join(sorted(unknown))}")
    cfg = ReproduceConfig(
        preset=preset, out=out or f"runs/{raw.get('name', Path(preset).stem)}", model=model or raw.get("model",
        "smollm2-135m-instruct"), seed=raw.get("seed", 0) if seed is None else seed,
        ablations=raw.get("ablations", False) if ablations is None else ablations,
        data=raw.get("data", {}), sft=raw.get("sft", {}), grpo=raw.get("grpo", {}), eval=raw.get("eval", {}))
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    _check_same_settings(cfg, root / "reproduce_config.json")
    save_config(cfg, root, "reproduce_config.json")
    t0 = time.time()
    data = _run_stage(root, "1-synthetic-data", _make_data, cfg, root / "data")
    _run_stage(root, "2-sft-data", _make_sft_data, cfg, data["sft-source"], root / "data" / "sft.jsonl")
    _run_stage(root, "3-sft", _sft, cfg, str(root / "data" / "sft.jsonl"), root / "sft")
    _run_stage(root, "4-grpo", _grpo, cfg, data, root / "sft", root / "grpo")
    adapters = {"SFT-only": str(root / "sft"), "CARE": str(root / "grpo" / FINAL_ADAPTER)}
    if cfg.ablations:
        _run_stage(root, "4b-grpo-no-retrieval-reward", _grpo, cfg, data, root / "sft",
                   root / "grpo-no-retrieval-reward", retrieval_reward=False)
        _run_stage(root, "4c-grpo-no-curriculum", _grpo, cfg, data, root / "sft", root / "grpo-no-curriculum",
                   curriculum=False)
        adapters["no-retrieval-reward"] = str(root / "grpo-no-retrieval-reward" / FINAL_ADAPTER)
        adapters["no-curriculum"] = str(root / "grpo-no-curriculum" / FINAL_ADAPTER)
    _run_stage(root, "5-eval", _evaluate, cfg, data, adapters, root / "eval")
    (root / "stages" / "total.json").write_text(json.dumps({"seconds_this_invocation": round(time.time() - t0, 1)}))
    return root / "eval"
