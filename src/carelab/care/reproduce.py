"""``carelab care reproduce``: the CARE paper's experiment in miniature, in one resumable command.

synthetic data → SFT data (rule backends) → SFT → GRPO with curriculum → evaluation of the preset's
methods (Original, SFT-only, CARE, optionally CARE-prompt and the bundled adapter) on its test sets →
report; then, optionally, the paper's two ablations on a subset of the test sets (in their own folder,
possibly in a separate run that reuses a finished run's data and SFT via ``base_run``).
Each stage writes a done-marker; a rerun skips finished stages and resumes the unfinished one.
Under a multi-process launch every process runs the training and item stages (TRL and ``carelab.distributed``
share the work); files of carelab's own (synthetic data, markers, configs) are written by the main process.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from carelab import distributed, memory
from carelab.care.eval.results import BUNDLED_LABEL
from carelab.care.train.config import DEV_BEST_ADAPTER, FINAL_ADAPTER
from carelab.presets import build_config, load_preset
from carelab.runs import InputError, check_same_settings, read_jsonl, save_config, saved_settings, write_jsonl

console = Console()

#: eval labels of the trained rows (also the names the report's paired differences look for)
SFT_LABEL, CARE_LABEL = "SFT-only", "CARE"
#: ablation label -> the GRPO setting it turns off
ABLATIONS = {"no-retrieval-reward": {"retrieval_reward": False}, "no-curriculum": {"curriculum": False}}
#: methods a preset may list under ``eval.methods``
EVAL_METHODS = ("original", "care-prompt", "sft-only", "care", "bundled")
#: ``eval.checkpoint``: which GRPO adapter the CARE and ablation rows use
CHECKPOINTS = {"final": FINAL_ADAPTER, "dev-best": DEV_BEST_ADAPTER}
#: ``--stop-after``: the chain in order; stopping after ``grpo`` ends a sitting at the dev curve, and a rerun of
#: the same command resumes with the next stage (``grpo`` also covers the ablations' GRPO runs)
STOP_POINTS = ("data", "sft", "grpo", "eval")


@dataclass
class ReproduceConfig:
    """The effective preset of a reproduce run (saved as ``reproduce_config.json``).

    ``data`` holds the synthetic sets: ``sft`` (a list of sources for the rule pipeline), ``easy`` and
    ``hard`` (GRPO), ``tests`` (name -> set); each set is ``{kind, n, style, …synth options}``.
    """

    preset: str
    out: str
    model: str = "smollm2-135m-instruct"
    seed: int = 0
    #: train the paper's ablations: ``True`` for all of ``ABLATIONS``, or a list of their labels
    ablations: bool | list[str] = False
    #: reuse this finished run's data, SFT and CARE (the ablation preset trains only the ablations)
    base_run: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    sft: dict[str, Any] = field(default_factory=dict)
    grpo: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)


def _stage(out: Path, name: str) -> Path:
    return out / "stages" / f"{name}.done.json"


def _run_stage(out: Path, name: str, fn, *args, main_only: bool = False, **kwargs) -> Any:
    """Run ``fn`` unless its done-marker exists; record wall time, peak RSS and the RSS it started from.

    Every process runs ``fn`` (training and item stages share their work) unless ``main_only``; the main
    process writes the marker, and the others take the stage's result from it.
    """
    marker = _stage(out, name)
    main = distributed.is_main()
    distributed.barrier()  # every process sees the same markers
    if marker.exists():
        if main:
            console.print(f"[dim]✓ {name} (done earlier, skipped)[/]")
        return json.loads(marker.read_text()).get("result")
    if main:
        console.rule(f"[bold]{name}")
    memory.reset_peak_rss()
    start_rss = memory.rss_gb()  # what the stage inherits: the floor of its peak window
    t0 = time.time()
    result = fn(*args, **kwargs) if main or not main_only else None
    peak = memory.peak_rss_gb()
    memory.release_heap()  # the next stage starts without this one's freed heap
    if main:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"seconds": round(time.time() - t0, 1), "peak_rss_gb": peak and round(peak, 3),
                                      "start_rss_gb": start_rss and round(start_rss, 3), "result": result},
                                     default=str, indent=2))
        console.print(f"[green]✓ {name}[/] in {time.time() - t0:.0f} s"
                      + (f", peak RSS {peak:.2f} GB" if peak is not None else ""))
    distributed.barrier()
    return result if main else json.loads(marker.read_text()).get("result")


def _synth_set(spec: dict[str, Any], seed: int, path: Path, split: str, where: str) -> str:
    """Write one synthetic set described by ``{kind, n, style, …options}``; returns its path."""
    from carelab.care.data import synth

    opts = dict(spec)
    try:
        kind, n = opts.pop("kind"), int(opts.pop("n"))
        seed = int(opts.pop("seed", seed))  # another seed draws other items of the same kind (e.g. GRPO vs SFT)
    except KeyError as exc:
        raise InputError("preset", f"data set {where} needs {exc.args[0]!r}", field=where) from None
    except (TypeError, ValueError):
        raise InputError("preset", f"data set {where}: n and seed must be integers", field=where) from None
    path = path.with_suffix(synth.SUFFIX.get(kind, ".json"))
    try:
        synth.write(kind, n, seed, path, split=opts.pop("split", split), **opts)
    except (TypeError, ValueError) as exc:
        raise InputError("preset", str(exc), field=where) from None
    return str(path)


def _make_data(cfg: ReproduceConfig, data_dir: Path) -> dict[str, Any]:
    """Every synthetic set of the preset: SFT sources, GRPO easy/hard, and the named test sets."""
    data = cfg.data
    paths: dict[str, Any] = {"sft": [_synth_set(spec, cfg.seed, data_dir / f"sft-{i}-{spec.get('kind')}", "train",
                                                f"data.sft[{i}]") for i, spec in enumerate(data.get("sft", []))]}
    for key in ("easy", "hard"):
        if data.get(key):
            paths[key] = _synth_set(data[key], cfg.seed, data_dir / key, "train", f"data.{key}")
    paths["tests"] = {name: _synth_set(spec, cfg.seed, data_dir / f"test-{name}", "test", f"data.tests.{name}")
                      for name, spec in data.get("tests", {}).items()}
    return paths


def _make_sft_data(sources: list[str], out_file: Path) -> dict:
    """Rule-pipeline traces from every source, concatenated (the trainer shuffles)."""
    from carelab.care.sft.pipeline import SftDataConfig, run_pipeline

    stats = {}
    parts = []
    for src in sources:
        part = out_file.with_name(f"{Path(src).stem}.sft.jsonl")
        stats[Path(src).stem] = run_pipeline(SftDataConfig(input=src, reasoner="rule", injector="rule", out=str(part)),
                                             echo=console.print if distributed.is_main() else _quiet)
        parts.append(part)
    if not distributed.is_main():
        return {}
    with out_file.open("w", encoding="utf-8") as fh:
        for part in parts:
            fh.write(part.read_text(encoding="utf-8"))
    return {k: (v if isinstance(v, dict) else str(v)) for k, v in stats.items()}


def _quiet(_: str) -> None:
    """An ``echo`` for processes other than the main one (one summary per job)."""


def _sft(cfg: ReproduceConfig, sft_file: str, out: Path) -> dict:
    from carelab.care.train.config import SFTRunConfig
    from carelab.care.train.sft import run_sft

    sft_cfg = build_config(SFTRunConfig, cfg.sft, {"data": [sft_file], "out": str(out), "model": cfg.model,
                                                   "seed": cfg.seed, "resume": True}, cfg.preset)
    return run_sft(sft_cfg)


def _grpo(cfg: ReproduceConfig, data: dict[str, Any], sft_dir: Path, out: Path, **ablation: Any) -> dict:
    from carelab.care.train.config import GRPORunConfig
    from carelab.care.train.grpo import run_grpo

    grpo_cfg = build_config(GRPORunConfig, cfg.grpo, {"easy": [data["easy"]], "hard": [data["hard"]],
                                                      "init_adapter": str(sft_dir), "out": str(out),
                                                      "model": cfg.model, "seed": cfg.seed, "resume": True,
                                                      **ablation}, cfg.preset)
    return run_grpo(grpo_cfg)


def _checkpoint(cfg: ReproduceConfig) -> str:
    """``eval.checkpoint`` (final | dev-best), checked before anything runs: dev-best needs the kept adapters."""
    name = cfg.eval.get("checkpoint", "final")
    if name not in CHECKPOINTS:
        raise InputError(cfg.preset, f"unknown checkpoint {name!r}; use {' or '.join(CHECKPOINTS)}",
                         field="eval.checkpoint")
    if name == "dev-best" and not (cfg.grpo.get("heldout_prompts") and cfg.grpo.get("heldout_keep_adapters")):
        raise InputError(cfg.preset, "checkpoint dev-best needs grpo.heldout_prompts > 0 and "
                                     "grpo.heldout_keep_adapters: true", field="eval.checkpoint")
    return name


def _grpo_adapter(cfg: ReproduceConfig, grpo_dir: Path) -> str:
    """The adapter a GRPO run is evaluated with: its final one, or the one its dev curve chose."""
    return str(grpo_dir / CHECKPOINTS[_checkpoint(cfg)])


def _method_specs(cfg: ReproduceConfig, root: Path) -> list:
    """The rows of the main table, in the preset's order (default: Original, SFT-only, CARE)."""
    from carelab.care.eval.harness import MethodSpec
    from carelab.care.shipped import default_adapter, is_embedded

    specs = []
    for name in cfg.eval.get("methods", ["original", "sft-only", "care"]):
        if name == "original":
            specs.append(MethodSpec("original", label="Original"))
        elif name == "care-prompt":
            specs.append(MethodSpec("care-prompt", label="CARE-prompt"))
        elif name == "sft-only":
            specs.append(MethodSpec("care", label=SFT_LABEL, adapter=str(root / "sft")))
        elif name == "care":
            specs.append(MethodSpec("care", label=CARE_LABEL, adapter=_grpo_adapter(cfg, root / "grpo")))
        elif name == "bundled":
            bundled = default_adapter()
            if bundled is None or not is_embedded(cfg.model):
                console.print("[yellow]the bundled CARE adapter fits only the embedded SmolLM2 (and must be in "
                              "this build): its row is skipped[/]")
            else:
                specs.append(MethodSpec("care", label=BUNDLED_LABEL, adapter=bundled))
        else:
            raise InputError(cfg.preset, f"unknown eval method {name!r}; use {', '.join(EVAL_METHODS)}",
                             field="eval.methods")
    return specs


def _eval_options(cfg: ReproduceConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.eval.items() if k in ("limit", "max_new_tokens", "batch_size", "max_prompt_tokens",
                                                       "dtype")}


def _evaluate(cfg: ReproduceConfig, tests: list[str], methods: list, out: Path) -> dict:
    """Evaluate ``methods`` on ``tests``; a GRPO row whose dev curve kept update 0 reuses SFT-only's answers."""
    from carelab.care.eval.harness import EvalConfig, run_eval

    def evaluate(specs: list) -> None:
        run_eval(EvalConfig(data=tests, methods=specs, out=str(out), model=cfg.model, seed=cfg.seed,
                            **_eval_options(cfg)))

    sft = next((m for m in methods if m.name == SFT_LABEL), None)
    unchanged = [m for m in methods if _is_unchanged_sft(m.adapter, sft.adapter)] if sft else []
    if unchanged:
        evaluate([m for m in methods if m not in unchanged])
        with distributed.main_process_first():
            if distributed.is_main():
                for spec in unchanged:
                    console.print(f"{spec.name}: the dev curve kept update 0 (the SFT adapter), so its rows are "
                                  f"{SFT_LABEL}'s greedy answers, copied")
                    for test in tests:
                        _copy_predictions(out, sft, out, spec, Path(test).name.split(".")[0])
    evaluate(methods)
    return {"out": str(out)}


def _is_unchanged_sft(adapter: str | None, sft_adapter: str | None) -> bool:
    """True for a dev-best GRPO adapter whose dev curve chose update 0 on top of ``sft_adapter``: the same
    function as the SFT adapter (its GRPO factor is still zero), so greedy decoding gives the same answers."""
    if not adapter or not sft_adapter or Path(adapter).name != DEV_BEST_ADAPTER:
        return False
    try:
        metrics = json.loads((Path(adapter).parent / "grpo_metrics.json").read_text())
        stacked = json.loads((Path(adapter) / "STACKED_FROM.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return metrics.get("dev_best_step") == 0 and Path(stacked.get("first", "")) == Path(sft_adapter)


def _copy_predictions(src_out: Path, src_spec: Any, dst_out: Path, dst_spec: Any, key: str) -> None:
    """Give ``dst_spec`` the finished predictions of ``src_spec`` on one test set (relabelled), unless it has some."""
    from carelab.care.eval.harness import predictions_path

    src, dst = predictions_path(src_out, src_spec.name, key), predictions_path(dst_out, dst_spec.name, key)
    if src.exists() and not dst.exists():
        relabel = {"label": dst_spec.name, "method": dst_spec.method, "adapter": dst_spec.adapter}
        write_jsonl(dst, ({**rec, **relabel} for _, rec in read_jsonl(src, skip_invalid=True)))


def _selected_ablations(cfg: ReproduceConfig) -> dict[str, dict[str, Any]]:
    """The ablations this run trains: all of them for ``ablations: true``, else the listed labels."""
    if cfg.ablations is True:
        return dict(ABLATIONS)
    if not cfg.ablations:
        return {}
    labels = [cfg.ablations] if isinstance(cfg.ablations, str) else list(cfg.ablations)
    unknown = [label for label in labels if label not in ABLATIONS]
    if unknown:
        raise InputError(cfg.preset, f"unknown ablation(s) {', '.join(map(str, unknown))}; use "
                                     f"{', '.join(ABLATIONS)}", field="ablations")
    return {label: ABLATIONS[label] for label in labels}


def _evaluate_ablations(cfg: ReproduceConfig, data: dict[str, Any], main_root: Path, root: Path,
                        out: Path) -> dict:
    """Ablation rows beside SFT-only and CARE on the preset's ablation sets; the main rows' finished
    predictions are copied from the main evaluation, not generated again (greedy: they would be equal)."""
    from carelab.care.eval.harness import MethodSpec

    names = cfg.eval.get("ablation_tests") or list(data["tests"])
    unknown = [n for n in names if n not in data["tests"]]
    if unknown:
        raise InputError(cfg.preset, f"unknown test set(s) {', '.join(unknown)}", field="eval.ablation_tests")
    tests = [data["tests"][n] for n in names]
    main = [MethodSpec("care", label=SFT_LABEL, adapter=str(main_root / "sft")),
            MethodSpec("care", label=CARE_LABEL, adapter=_grpo_adapter(cfg, main_root / "grpo"))]
    with distributed.main_process_first():
        if distributed.is_main():
            for spec in main:
                for test in tests:
                    _copy_predictions(main_root / "eval", spec, out, spec, Path(test).name.split(".")[0])
    ablations = [MethodSpec("care", label=label, adapter=_grpo_adapter(cfg, root / f"grpo-{label}"))
                 for label in _selected_ablations(cfg)]
    return _evaluate(cfg, tests, main + ablations, out)


def _check_same_settings(cfg: ReproduceConfig, saved: Path) -> None:
    """Refuse to resume a run folder made with other settings (its finished stages would be reused)."""
    check_same_settings(saved, saved_settings(saved), cfg)


def reproduce(preset: str, out: str | None = None, model: str | None = None, seed: int | None = None,
              ablations: bool | None = None, base_run: str | None = None,
              stop_after: str | None = None) -> Path | None:
    """Run (or resume) the whole chain for ``preset``; returns the main report folder (None when stopped early).

    With ``base_run`` (or ``base_run:`` in the preset) the data, SFT and CARE of that finished run are
    reused and only the ablations are trained and evaluated. ``stop_after`` (one of ``STOP_POINTS``) ends the
    invocation after that stage, so a long chain can be run in sittings that each fit the time at hand.
    """
    if stop_after is not None and stop_after not in STOP_POINTS:
        raise InputError(preset, f"unknown stop point {stop_after!r}; use {', '.join(STOP_POINTS)}",
                         field="--stop-after")
    last = STOP_POINTS.index(stop_after) if stop_after else len(STOP_POINTS) - 1

    def stops_after(point: str) -> bool:
        return STOP_POINTS.index(point) >= last

    raw = load_preset(preset)
    unknown = set(raw) - {"name", "description", "model", "seed", "ablations", "base_run", "data", "sft", "grpo",
                          "eval"}
    if unknown:
        raise InputError(preset, f"unknown preset section(s): {', '.join(sorted(unknown))}")
    cfg = ReproduceConfig(
        preset=preset, out=out or f"runs/{raw.get('name', Path(preset).stem)}", model=model or raw.get("model",
        "smollm2-135m-instruct"), seed=raw.get("seed", 0) if seed is None else seed,
        ablations=raw.get("ablations", False) if ablations is None else ablations,
        base_run=base_run or raw.get("base_run"),
        data=raw.get("data", {}), sft=raw.get("sft", {}), grpo=raw.get("grpo", {}), eval=raw.get("eval", {}))
    root = Path(cfg.out)
    main_root = Path(cfg.base_run) if cfg.base_run else root
    if cfg.base_run and not _stage(main_root, "4-grpo").exists():
        raise InputError(cfg.base_run, "base run has no finished GRPO stage; run its preset first (carelab care "
                                       "reproduce --preset … --out " + cfg.base_run + ")")
    _selected_ablations(cfg)  # unknown labels and checkpoints fail before anything runs
    _checkpoint(cfg)
    root.mkdir(parents=True, exist_ok=True)
    with distributed.main_process_first():  # the main process checks and saves; the others then check
        _check_same_settings(cfg, root / "reproduce_config.json")
        if distributed.is_main():
            save_config(cfg, root, "reproduce_config.json")
    t0 = time.time()
    stopped = _run_chain(cfg, root, main_root, stops_after)
    if distributed.is_main():
        (root / "stages" / "total.json").write_text(json.dumps({"seconds_this_invocation": round(time.time() - t0, 1)}))
    if stopped:
        if distributed.is_main():  # a sitting that ends at GRPO ends at its dev curve: say where it is
            for report in sorted(root.glob("grpo*/heldout_reward.md")):
                console.print(f"dev reward curve: [bold]{report.resolve()}[/]")
        return None
    return (root / "eval") if not cfg.base_run else (root / "eval-ablations")


def _run_chain(cfg: ReproduceConfig, root: Path, main_root: Path, stops_after) -> bool:
    """The stages in order, up to the stop point; True when it stopped before the last one."""
    if cfg.base_run:
        data = json.loads(_stage(main_root, "1-synthetic-data").read_text())["result"]
    else:
        data = _run_stage(root, "1-synthetic-data", _make_data, cfg, root / "data", main_only=True)
        _run_stage(root, "2-sft-data", _make_sft_data, data["sft"], root / "data" / "sft.jsonl")
        if stops_after("data"):
            return True
        _run_stage(root, "3-sft", _sft, cfg, str(root / "data" / "sft.jsonl"), root / "sft")
    if stops_after("sft"):  # a base run's data and SFT are finished already
        return True
    if not cfg.base_run:
        _run_stage(root, "4-grpo", _grpo, cfg, data, root / "sft", root / "grpo")
    if cfg.ablations:
        for label, setting in _selected_ablations(cfg).items():
            _run_stage(root, f"6-grpo-{label}", _grpo, cfg, data, main_root / "sft", root / f"grpo-{label}",
                       **setting)
    if stops_after("grpo"):
        return True
    if not cfg.base_run:
        _run_stage(root, "5-eval", _evaluate, cfg, list(data["tests"].values()), _method_specs(cfg, root),
                   root / "eval")
    if cfg.ablations:
        _run_stage(root, "7-eval-ablations", _evaluate_ablations, cfg, data, main_root, root,
                   root / "eval-ablations")
    return False
