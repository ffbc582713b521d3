"""The CARE evaluation harness: every method × every dataset file, one protocol, resumable.

Why a harness and not a script per baseline: the paper's tables compare methods, and a comparison is
only fair when every method sees the same examples, the same chat template, the same truncation and the
same scorer. Here the methods differ only in their prompt (``baselines.build_prompt``) and weights
(an optional adapter); generation is greedy and batched; each finished prediction is appended at once to
``predictions/<label>/<dataset>.jsonl`` so a killed run resumes where it stopped; metrics are recomputed
from those files, written as JSON/CSV, and rendered by ``report.write_report``.

Scoring (see docs/care-eval.md): CARE outputs (``care-prompt``, ``care``) are scored on
``format.parse(text).answer`` — the text after ``Answer:`` with EOS stripped; plain outputs (``original``,
``rag``, ``crag``) on ``baselines.plain_answer`` (after an ``Answer:`` prefix if present, first line).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from carelab.care import format as care_format
from carelab.care.data.examples import QAExample
from carelab.care.eval import baselines
from carelab.care.eval.metrics import (
    best_over_golds,
    evidence_bleu,
    evidence_rouge_l,
    exact_match,
    qa_f1_score,
)
from carelab.distributed import ShardedAppender
from carelab.runs import (
    InputError,
    check_same_settings,
    read_jsonl,
    save_config,
    saved_settings,
    to_jsonable,
    warn,
)

#: LongBench subset names (``meta["dataset"]``) -> the paper's column names.
LONGBENCH_NAMES = {"multifieldqa_en": "MFQA", "hotpotqa": "HotpotQA", "2wikimqa": "2WikiMQA",
                   "musique": "MuSiQue"}
#: Where a counterfactual example may keep its original (real-world, memorisable) answer.
ORIGINAL_ANSWER_KEYS = ("original_answers", "original_answer", "factual_answers", "factual_answer")
#: A counterfactual item counts as "memorised" when its answer matches an original answer this well (F1)
#: and better than it matches the altered gold.
MEMORISED_F1 = 0.5


@dataclass
class MethodSpec:
    """One row of the results table: a method, its label, and (for ``care``) the weights to use."""

    method: str
    label: str | None = None
    adapter: str | None = None
    rag_k: int = 3
    retriever: str = "bm25"

    @property
    def name(self) -> str:
        """The label shown in reports (defaults to the method name)."""
        return self.label or self.method


@dataclass
class EvalConfig:
    """Everything that determines an evaluation run; saved as ``config.json`` beside the predictions."""

    data: list[str] = field(default_factory=list)
    methods: list[MethodSpec] = field(default_factory=lambda: [MethodSpec("original")])
    out: str = "runs/care-eval"
    model: str = "smollm2-135m-instruct"
    data_format: str | None = None
    limit: int | None = None
    max_new_tokens: int = 512
    batch_size: int = 8
    #: Prompt budget in tokens; default: the model's window minus ``max_new_tokens``.
    max_prompt_tokens: int | None = None
    dtype: str = "float32"
    #: ``cpu``, ``cuda``, ``cuda:1`` …; default: CUDA when available, else CPU.
    device: str | None = None
    seed: int = 0
    care_system_prompt: str | None = None
    #: Write report.md, the chart and the HTML viewer after the metrics.
    report: bool = True
    #: ``hf`` (carelab.generation) or ``vllm`` (vLLM's offline engine, adapters as LoRA requests; GPU).
    engine: str = "hf"


@dataclass
class DatasetFile:
    """One evaluated data file: its key (file stem, unique), display name, kind and examples."""

    key: str
    name: str
    path: str
    kind: str  # "longbench" | "counterfactual" | "qa"
    examples: list[QAExample]


# --------------------------------------------------------------------------- loading
def _load_examples(path: str, fmt: str | None, limit: int | None) -> list[QAExample]:
    """Load a data file in any supported native format (``datasets.load_examples``; format detected)."""
    from carelab.care.data.loaders import load_examples

    return list(load_examples(path, fmt, limit=limit))


def _dataset_kind(examples: Sequence[QAExample]) -> str:
    if any("counterfactual" in ex.meta for ex in examples):
        return "counterfactual"
    if any(ex.meta.get("dataset") or ex.source == "longbench" for ex in examples):
        return "longbench"
    return "qa"


def _display_name(key: str, kind: str, examples: Sequence[QAExample]) -> str:
    names = {str(ex.meta.get("dataset", "")) for ex in examples}
    if len(names) == 1:
        only = next(iter(names))
        if only in LONGBENCH_NAMES:
            return LONGBENCH_NAMES[only]
    if kind == "counterfactual" and examples and all(ex.source == "cofca" for ex in examples):
        return "CofCA"
    return key


def load_datasets(paths: Sequence[str], fmt: str | None = None, limit: int | None = None) -> list[DatasetFile]:
    """Load every data file; keys are file stems made unique; duplicate ids are an input error."""
    files: list[DatasetFile] = []
    keys: set[str] = set()
    names: set[str] = set()
    for path in paths:
        examples = _load_examples(path, fmt, limit)
        if not examples:
            raise InputError(path, "no examples in this file")
        seen: set[str] = set()
        for ex in examples:
            if ex.id in seen:
                raise InputError(path, f"duplicate id {ex.id!r} (ids must be unique for resuming)", field="id")
            seen.add(ex.id)
        key = _slug(Path(path).name.split(".")[0])
        base, i = key, 2
        while key in keys:
            key, i = f"{base}-{i}", i + 1
        keys.add(key)
        kind = _dataset_kind(examples)
        name = _display_name(key, kind, examples)
        if name in names:
            name = f"{name} ({key})"
        names.add(name)
        files.append(DatasetFile(key, name, str(path), kind, examples))
    return files


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def predictions_path(out: str | Path, label: str, dataset_key: str) -> Path:
    """Where one (method label, dataset) pair's predictions live inside a run directory."""
    return Path(out) / "predictions" / _slug(label) / f"{dataset_key}.jsonl"


# --------------------------------------------------------------------------- scoring
def original_answers(example: QAExample) -> list[str]:
    """The memorisable real-world answer(s) of a counterfactual example, if the file records them."""
    for key in ORIGINAL_ANSWER_KEYS:
        val = example.meta.get(key)
        if val:
            return [str(v) for v in val] if isinstance(val, (list, tuple)) else [str(val)]
    return []


def score_output(raw: str, example: QAExample, care_style: bool, seen_context: str,
                 eos: Sequence[str] = ()) -> dict[str, Any]:
    """Score one generated text: the scored answer, F1/EM ×1, quotes with match labels, evidence scores.

    ``seen_context`` is the context the model was shown (after retrieval/truncation); quotes are matched
    against the whole user turn (context + question), as the official retrieval reward does.
    """
    from carelab.care.quotes import quote_match

    rec: dict[str, Any] = {}
    if care_style:
        parsed = care_format.parse(raw, tuple(eos))
        prediction = parsed.answer
        prompt_text = care_format.user_content(seen_context, example.question)
        rec["think"] = parsed.think
        rec["quotes"] = [{"text": q, "match": quote_match(q, prompt_text)} for q in parsed.retrievals]
        rec["well_formed"] = parsed.well_formed
        gold_facts = example.supporting_sentences()
        if gold_facts:
            rec["evidence_bleu"] = evidence_bleu(parsed.retrievals, gold_facts)
            rec["evidence_rouge_l"] = evidence_rouge_l(parsed.retrievals, gold_facts)
    else:
        prediction = baselines.plain_answer(care_format.strip_stop(raw, tuple(eos)))
        rec["think"] = ""
        rec["quotes"] = []
        rec["well_formed"] = None
    golds = example.answers or [""]
    rec["prediction"] = prediction
    rec["f1"] = best_over_golds(qa_f1_score, prediction, golds)
    # Diagnostic only: a CARE output without "Answer:" read like a plain one (after any reasoning block),
    # to tell "wrong answer" from "right answer in the wrong format".
    lenient = prediction
    if care_style and not prediction:
        text = care_format.strip_stop(raw, tuple(eos))
        cut = text.rfind(care_format.THINK_CLOSE)
        lenient = baselines.plain_answer(text[cut + len(care_format.THINK_CLOSE):] if cut >= 0 else text)
    rec["f1_lenient"] = best_over_golds(qa_f1_score, lenient, golds)
    rec["em"] = best_over_golds(exact_match, prediction, golds)
    if "counterfactual" in example.meta:
        rec["counterfactual"] = bool(example.meta["counterfactual"])
        originals = original_answers(example)
        if rec["counterfactual"] and originals:
            f1_orig = best_over_golds(qa_f1_score, prediction, originals)
            rec["original_answers"] = originals
            rec["f1_original"] = f1_orig
            rec["memorised"] = bool(f1_orig >= MEMORISED_F1 and f1_orig > rec["f1"])
    return rec


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _with_ci(m: dict[str, Any], key: str, values: Sequence[float]) -> None:
    """Set ``m[key]`` (mean ×100 of per-item values in [0, 1]) with its 95 % bootstrap CI ``key_lo``/``key_hi``."""
    from carelab.stats import bootstrap_ci

    est = bootstrap_ci([100.0 * float(v) for v in values])
    m[key], m[f"{key}_lo"], m[f"{key}_hi"] = _pct(_mean(values)), est.lo, est.hi


def _with_ratio_ci(m: dict[str, Any], key: str, hits: Sequence[int], totals: Sequence[int]) -> None:
    """Set a share of quotes (sum of hits / sum of quotes ×100) with its CI from resampling items."""
    from carelab.stats import ratio_ci

    est = ratio_ci([100.0 * h for h in hits], totals)
    m[key], m[f"{key}_lo"], m[f"{key}_hi"] = est.mean, est.lo, est.hi


#: Metrics that carry ``<name>_lo`` / ``<name>_hi`` (95 % percentile bootstrap over items) in metrics.json/csv.
CI_METRICS = ("f1", "em", "f1_lenient", "score", "f1_counterfactual", "f1_factual", "memorised_share",
              "format_rate", "quote_exact_share", "quote_fuzzy_share", "quote_in_context_share")


def aggregate(records: Sequence[dict], kind: str = "qa", care_style: bool = True) -> dict[str, Any]:
    """Metrics of one (method, dataset) pair from its prediction records (rates and F1 in percent).

    ``score`` is the paper's headline number for the file: counterfactual F1 on CofCA-shaped files (F1
    against the altered gold on the counterfactual items), LongBench ``qa_f1_score`` ×100 otherwise.
    Every metric in ``CI_METRICS`` comes with a 95 % bootstrap interval over items (``_lo``/``_hi``, see
    ``carelab.stats``); ``score_n`` is the number of items behind ``score``, ``item_scores`` the per-item
    scores (×100, by id) that paired comparisons in the report resample, ``items_per_s`` the generation
    throughput when the records carry their generation time.
    """
    n = len(records)
    m: dict[str, Any] = {"n": n}
    _with_ci(m, "f1", [r["f1"] for r in records])
    _with_ci(m, "em", [r["em"] for r in records])
    _with_ci(m, "f1_lenient", [r.get("f1_lenient", r["f1"]) for r in records])
    m["n_truncated"] = sum(1 for r in records if r.get("truncated"))
    scored = records
    if kind == "counterfactual":
        cf = [r for r in records if r.get("counterfactual") is True]
        fa = [r for r in records if r.get("counterfactual") is False]
        with_orig = [r for r in cf if "memorised" in r]
        m.update(n_counterfactual=len(cf), n_factual=len(fa))
        _with_ci(m, "f1_counterfactual", [r["f1"] for r in cf])
        _with_ci(m, "f1_factual", [r["f1"] for r in fa])
        _with_ci(m, "memorised_share", [float(r["memorised"]) for r in with_orig])
        m["memorised_n"] = len(with_orig)
        scored = cf if cf else records
    _with_ci(m, "score", [r["f1"] for r in scored])
    m["score_n"] = len(scored)
    m["item_scores"] = {str(r["id"]): 100.0 * float(r["f1"]) for r in scored if "id" in r}
    timed = [float(r["gen_seconds"]) for r in records if r.get("gen_seconds") is not None]
    m["gen_seconds"] = round(sum(timed), 3) if timed else None
    m["n_timed"] = len(timed)
    m["items_per_s"] = len(timed) / sum(timed) if timed and sum(timed) > 0 else None
    if care_style:
        per_item = [[q["match"] for q in r.get("quotes", [])] for r in records]
        nq = sum(len(labels) for labels in per_item)
        totals = [len(labels) for labels in per_item]
        _with_ci(m, "format_rate", [float(bool(r.get("well_formed"))) for r in records])
        m.update(quotes_per_item=(nq / n) if n else None, n_quotes=nq)
        _with_ratio_ci(m, "quote_exact_share", [labels.count("exact") for labels in per_item], totals)
        _with_ratio_ci(m, "quote_fuzzy_share", [labels.count("fuzzy") for labels in per_item], totals)
        _with_ratio_ci(m, "quote_in_context_share",
                       [labels.count("exact") + labels.count("fuzzy") for labels in per_item], totals)
        m.update(evidence_bleu=_mean([r.get("evidence_bleu") for r in records]),
                 evidence_rouge_l=_mean([r.get("evidence_rouge_l") for r in records]))
    else:
        m.update(quotes_per_item=None, n_quotes=None, evidence_bleu=None, evidence_rouge_l=None)
        for key in ("format_rate", "quote_exact_share", "quote_fuzzy_share", "quote_in_context_share"):
            m[key] = m[f"{key}_lo"] = m[f"{key}_hi"] = None
    return m


# --------------------------------------------------------------------------- run
@dataclass
class _Job:
    spec: MethodSpec
    dataset: DatasetFile
    appender: ShardedAppender
    items: list[tuple[QAExample, baselines.PreparedPrompt, list[int], bool]] = field(default_factory=list)


def _validate(config: EvalConfig) -> None:
    if not config.data:
        raise InputError("--data", "give at least one data file")
    if not config.methods:
        raise InputError("--method", "give at least one method")
    labels: set[str] = set()
    for spec in config.methods:
        if spec.method not in baselines.METHODS:
            raise InputError("--method", f"unknown method {spec.method!r}; use one of "
                                         f"{', '.join(baselines.METHODS)}")
        if spec.retriever not in baselines.RETRIEVERS:
            raise InputError("--retriever", f"unknown retriever {spec.retriever!r}; use bm25 or minilm")
        if spec.rag_k < 1:
            raise InputError("--rag-k", "must be at least 1")
        if _slug(spec.name) in labels:
            raise InputError("--method", f"label {spec.name!r} is used twice; give each method a distinct label")
        labels.add(_slug(spec.name))
    if config.engine not in ("hf", "vllm"):
        raise InputError("--engine", f"unknown engine {config.engine!r}; use hf or vllm")
    if config.max_new_tokens < 1 or config.batch_size < 1:
        raise InputError("config", "max_new_tokens and batch_size must be positive")


def _check_resume(config: EvalConfig, out: Path) -> None:
    """A run directory may be extended (more data, more methods) but not silently mixed with other settings."""
    path = out / "config.json"
    old = saved_settings(path)
    if not old:
        return
    check_same_settings(path, old, config, ("model", "max_new_tokens", "max_prompt_tokens", "dtype",
                                            "care_system_prompt"),
                        what="this run directory", hint="use a new --out, or the same setting to resume")
    old_specs = {m.get("label") or m.get("method"): m for m in old.get("methods", [])}
    for spec in config.methods:
        check_same_settings(path, old_specs.get(spec.name), spec, ("method", "adapter", "rag_k", "retriever"),
                            what=f"label {spec.name!r}", hint="use another label or a new --out")


def _previous_methods(out: Path) -> list[MethodSpec]:
    """The methods recorded in an existing run directory's config (empty when there is none)."""
    try:
        old = json.loads((out / "config.json").read_text())
        return [MethodSpec(**{k: m.get(k) for k in ("method", "label", "adapter", "rag_k", "retriever")
                              if k in m}) for m in old.get("methods", [])]
    except (OSError, json.JSONDecodeError, TypeError, AttributeError):
        return []


def _previous_data(out: Path) -> list[str]:
    """The data files recorded in an existing run directory's config that still exist (empty when there is none)."""
    try:
        old = json.loads((out / "config.json").read_text())
        return [str(p) for p in old.get("data", []) if Path(p).exists()]
    except (OSError, json.JSONDecodeError, TypeError, AttributeError):
        return []


def _eos_strings(tokenizer) -> tuple[str, ...]:
    eos = getattr(tokenizer, "eos_token", None)
    return (eos,) if isinstance(eos, str) and eos else ()


def run_eval(config: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Evaluate every method on every data file; returns the metrics dict also written to ``metrics.json``.

    Resumable: items already in a predictions file are skipped. Each distinct adapter (with the base
    model) is loaded once. Over-long inputs are middle-truncated by ``format.fit_context`` (one warning).
    Under a multi-process launch each process generates its share of the pending items and the main one
    merges them into the predictions files and writes everything else (``carelab.distributed``).
    """
    import torch

    from carelab import distributed
    from carelab.generation import GenerationSettings, chat_prompt_ids, generate_from_ids, merge_adapters
    from carelab.models import context_window, load_model

    _validate(config)
    vllm = _vllm_generator(config)  # None for the hf engine; refuses in one line where vLLM is absent
    out = Path(config.out)
    main = distributed.is_main()
    # Labels evaluated earlier in this directory stay in its metrics and report (nothing is regenerated).
    # So are the data files: a later call on a subset of them (e.g. one more method on two sets) keeps the others.
    current = {_slug(s.name) for s in config.methods}
    all_methods = [m for m in _previous_methods(out) if _slug(m.name) not in current] + list(config.methods)
    all_data = [p for p in _previous_data(out) if p not in config.data] + list(config.data)
    with distributed.main_process_first():  # the checks run everywhere; only the main process writes
        if main:
            out.mkdir(parents=True, exist_ok=True)
            _check_resume(config, out)
            save_config(replace(config, methods=all_methods, data=all_data), out)
    datasets = load_datasets(config.data, config.data_format, config.limit)
    outputs = [predictions_path(out, spec.name, ds.key) for spec in config.methods for ds in datasets]
    distributed.merge_all(outputs)  # records a killed multi-process run left in its part files count as done

    groups: dict[str | None, list[MethodSpec]] = {}
    for spec in config.methods:
        groups.setdefault(spec.adapter, []).append(spec)

    loaded: dict[str, Any] = {}

    def model_for(adapter: str | None):
        if vllm is not None:  # vLLM holds the weights; only the tokenizer is needed here
            if "tok" not in loaded:
                from carelab.models import load_tokenizer

                loaded.update(model=None, tok=load_tokenizer(config.model))
            return loaded["model"], loaded["tok"]
        if loaded.get("adapter", "<none>") != adapter or "model" not in loaded:
            loaded.clear()
            device = config.device or distributed.device() or ("cuda" if torch.cuda.is_available() else None)
            model, tok = load_model(config.model, adapter=adapter, dtype=config.dtype, device=device)
            # Evaluation never trains: fold the LoRA into the base weights (faster decoding, same tokens
            # up to float rounding).
            loaded.update(adapter=adapter, model=merge_adapters(model), tok=tok)
        return loaded["model"], loaded["tok"]

    # Prepare every pending prompt first (one truncation warning, one progress total).
    jobs: list[_Job] = []
    model, tok = model_for(next(iter(groups)))
    window = vllm.window if vllm is not None else context_window(model, tok)
    max_prompt = config.max_prompt_tokens or max(64, window - config.max_new_tokens)
    n_truncated = 0
    for adapter_specs in groups.values():
        for spec in adapter_specs:
            for ds in datasets:
                job = _Job(spec, ds, ShardedAppender(predictions_path(out, spec.name, ds.key)))
                for ex in ds.examples:
                    if ex.id in job.appender:
                        continue
                    prepared = baselines.build_prompt(spec.method, ex, rag_k=spec.rag_k, retriever=spec.retriever,
                                                      care_system_prompt=config.care_system_prompt)
                    try:
                        ctx, truncated = care_format.fit_context(tok, prepared.context, prepared.question,
                                                                 max_prompt, prepared.system_prompt)
                    except ValueError as exc:
                        raise InputError(ds.path, f"example {ex.id!r}: {exc}", field="question") from None
                    n_truncated += truncated
                    prepared.context = ctx
                    ids = chat_prompt_ids(tok, care_format.build_messages(ctx, prepared.question,
                                                                          prepared.system_prompt))
                    job.items.append((ex, prepared, ids, truncated))
                jobs.append(job)
    total = sum(len(j.items) for j in jobs)
    if n_truncated and main:
        warn(f"{n_truncated} of {total} prompts were middle-truncated to fit {max_prompt} tokens "
             "(the question is always kept)")

    torch.manual_seed(config.seed)
    settings = GenerationSettings(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                  seed=config.seed)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not (progress and main)) as bar:
        task = bar.add_task("care eval", total=total)
        # One generation call per method label over all its datasets: the continuous-batching engine keeps
        # its rows full across files instead of draining at the end of each one.
        by_label: dict[str, list[_Job]] = {}
        for job in jobs:
            if job.items:
                by_label.setdefault(job.spec.name, []).append(job)
        for label, label_jobs in by_label.items():
            model = None  # the previous method's weights are freed before the next load: one model resident, not two
            model, tok = model_for(label_jobs[0].spec.adapter)
            eos = _eos_strings(tok)
            bar.update(task, description=f"{label} · " + ", ".join(j.dataset.name for j in label_jobs))
            # each process generates its contiguous share (all of them without a launcher)
            items = distributed.shard([(job, item) for job in label_jobs for item in job.items])
            saved: dict[int, float] = {-1: time.perf_counter()}  # item index -> when it was saved

            def save(i: int, raw: str, items: list = items, eos: tuple = eos,
                     saved: dict[int, float] = saved) -> None:
                # Each record is saved the moment it is generated (a killed run loses only rows in flight);
                # gen_seconds = time since the previous save, so they sum to the label's generation wall time.
                now = time.perf_counter()
                job, (ex, prepared, ids, truncated) = items[i]
                rec = {"id": ex.id, "label": job.spec.name, "method": job.spec.method,
                       "adapter": job.spec.adapter, "dataset": job.dataset.key, "question": ex.question,
                       "answers": ex.answers, "raw": raw}
                rec.update(score_output(raw, ex, prepared.care_style, prepared.context, eos))
                rec.update(context=prepared.context, truncated=truncated, prompt_tokens=len(ids),
                           info=prepared.info, gen_seconds=round(now - max(saved.values()), 4))
                gold_facts = ex.supporting_sentences()
                if gold_facts:
                    rec["gold_facts"] = gold_facts
                job.appender.write(rec)
                saved[i] = now
                bar.advance(task, 1)

            prompts = [it[2] for _, it in items]
            if vllm is not None:
                texts = vllm.generate(prompts, config.max_new_tokens, label_jobs[0].spec.adapter, on_result=save)
            else:
                texts = generate_from_ids(model, tok, prompts, settings, on_result=save)
            for i, raw in enumerate(texts):
                if i not in saved:  # a generator that returns its texts without reporting them one by one
                    save(i, raw)
    loaded.clear()
    distributed.merge_all(outputs)
    if not main:
        return {}  # metrics and report are the main process's to write
    earlier = [p for p in all_data if p not in config.data]
    every_dataset = (load_datasets(earlier, config.data_format, config.limit) if earlier else []) + list(datasets)
    metrics = compute_metrics(replace(config, methods=all_methods, data=all_data), every_dataset, max_prompt)
    if config.report:
        from carelab.care.eval.results import write_report

        write_report([str(out)], str(out))
    return metrics


def _vllm_generator(config: EvalConfig):
    """vLLM's engine for ``--engine vllm`` (one process: vLLM parallelises itself), else ``None``."""
    if config.engine != "vllm":
        return None
    from carelab import distributed
    from carelab.vllm_support import VLLMGenerator, VLLMUnavailable, require_vllm

    require_vllm("--engine vllm")
    if distributed.launched_world_size() > 1:
        raise VLLMUnavailable("--engine vllm runs as one process (vLLM parallelises itself); launch it without "
                              "torchrun/accelerate")
    return VLLMGenerator(config.model, config.dtype, config.seed, [s.adapter for s in config.methods])


def compute_metrics(config: EvalConfig, datasets: Sequence[DatasetFile], max_prompt: int | None = None
                    ) -> dict[str, Any]:
    """Aggregate the predictions files of a run into ``metrics.json`` and ``metrics.csv``."""
    from carelab.report import write_csv

    out = Path(config.out)
    rows: list[dict[str, Any]] = []
    for spec in config.methods:
        for ds in datasets:
            path = predictions_path(out, spec.name, ds.key)
            if not path.exists():  # this label was never run on this file (e.g. added later on a subset)
                continue
            wanted = {ex.id for ex in ds.examples}
            by_id = {str(r["id"]): r for _, r in read_jsonl(path, skip_invalid=True)} if path.exists() else {}
            records = [by_id[i] for i in (ex.id for ex in ds.examples) if i in by_id and i in wanted]
            row = {"label": spec.name, "method": spec.method, "adapter": spec.adapter, "dataset": ds.key,
                   "dataset_name": ds.name, "kind": ds.kind, "data_file": ds.path,
                   "predictions": str(path.relative_to(out))}
            row.update(aggregate(records, ds.kind, spec.method in baselines.CARE_STYLE))
            rows.append(row)
    result = {"config": to_jsonable(asdict(config)), "max_prompt_tokens": max_prompt,
              "datasets": [{"key": d.key, "name": d.name, "kind": d.kind, "path": d.path, "n": len(d.examples)}
                           for d in datasets],
              "results": rows}
    (out / "metrics.json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
    write_csv(out / "metrics.csv", [{k: v for k, v in r.items() if k != "item_scores"} for r in rows])
    return result
