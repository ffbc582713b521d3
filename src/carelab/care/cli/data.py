"""``carelab data …``, ``carelab care sft-data`` and ``carelab serve``: thin Typer wrappers.

Each command turns options into a config dataclass, calls the library function that does the work,
and turns a user error (``InputError``, a bad spec) into a one-line message and exit code 2. Heavy
imports happen inside the commands so ``carelab --help`` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from carelab.cli_errors import fail

data_app = typer.Typer(no_args_is_help=True)


@data_app.command("synth", help="Write an offline synthetic dataset in a native format (hotpotqa, 2wiki, musique, "
                                "drop, msmarco, longbench, cofca).")
def synth_command(
    kind: str = typer.Option(..., "--kind", help="hotpotqa | 2wiki | musique | drop | msmarco | longbench | cofca"),
    n: int = typer.Option(100, "--n", help="Number of questions."),
    seed: int = typer.Option(0, "--seed"),
    split: str = typer.Option("train", "--split", help="train | test (their worlds never share a name)."),
    out: Path = typer.Option(..., "--out", help="Output file (native format: .json or .jsonl)."),
    context_words: int | None = typer.Option(None, "--context-words", help="Minimum words of context per item."),
    distractors: int | None = typer.Option(None, "--distractors", help="Distractor passages per item."),
    hops: str | None = typer.Option(None, "--hops", help="Hops for multi-hop kinds: N or MIN-MAX (e.g. 2-4)."),
    style: str = typer.Option("default", "--style", help="Wording: default | mixed (varied train-family "
                              "phrasings, for SFT) | heldout (unseen context style and question templates, for "
                              "generalisation tests; use with --split test)."),
) -> None:
    from carelab.care.data import synth

    if kind not in synth.KINDS:
        fail(f"--kind must be one of {', '.join(synth.KINDS)}, got {kind!r}")
    if split not in synth.SPLITS:
        fail(f"--split must be train or test, got {split!r}")
    if style not in synth.STYLES:
        fail(f"--style must be one of {', '.join(synth.STYLES)}, got {style!r}")
    opts: dict = {"context_words": context_words, "distractors": distractors}
    if hops:
        try:
            lo, _, hi = hops.partition("-")
            opts["hops"] = (int(lo), int(hi or lo))
        except ValueError:
            fail(f"--hops must be N or MIN-MAX, got {hops!r}")
    path = synth.write(kind, n, seed, out, split=split, style=style, **opts)
    typer.echo(f"wrote {n} {kind} {split} items (seed {seed}, style {style}) to {path}")


@data_app.command("convert", help="Load a native dataset file (validating every row) and write carelab JSONL.")
def convert_command(
    input: Path = typer.Option(..., "--input", help="Native dataset file."),
    format: str | None = typer.Option(None, "--format", help="Dataset format; detected from content if omitted."),
    out: Path = typer.Option(..., "--out", help="Output carelab JSONL."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip malformed rows (and report how many)."),
    limit: int | None = typer.Option(None, "--limit"),
) -> None:
    from carelab.care.data.loaders import load_examples_with_report
    from carelab.runs import InputError, write_jsonl

    try:
        examples, report = load_examples_with_report(input, format, skip_invalid=skip_invalid, limit=limit)
    except (InputError, FileNotFoundError) as exc:
        fail(str(exc))
    write_jsonl(out, [e.to_dict() for e in examples])
    typer.echo(report.summary())
    for r in report.reasons[:5]:
        typer.echo(f"  skipped: {r}")


@data_app.command("hub", help="Load a real dataset through 🤗 datasets (hub id, short name, save_to_disk folder or "
                               "local file) and write carelab JSONL.")
def hub_command(
    source: str = typer.Option(..., "--source", help="Short name (longbench-hotpotqa, longbench-2wikimqa, "
                               "longbench-musique, longbench-multifieldqa_en, hotpotqa, 2wiki, musique, drop, "
                               "msmarco), a hub id, a save_to_disk folder or a .json/.jsonl/.parquet file."),
    out: Path = typer.Option(..., "--out", help="Output carelab JSONL."),
    format: str | None = typer.Option(None, "--format", help="Row shape (default: the short name's); needed "
                                      "for other sources, e.g. cofca."),
    split: str | None = typer.Option(None, "--split", help="Split (default: the short name's, else validation)."),
    config: str | None = typer.Option(None, "--config", help="Hub config, e.g. a LongBench subset."),
    limit: int | None = typer.Option(None, "--limit"),
) -> None:
    from carelab.care.data.hub import load
    from carelab.runs import InputError, write_jsonl

    try:
        examples = load(source, format, split, config, limit)
    except (InputError, FileNotFoundError) as exc:
        fail(str(exc))
    write_jsonl(out, [e.to_dict() for e in examples])
    typer.echo(f"{source}: {len(examples)} examples -> {out}")


@data_app.command("check-facts", help="Measure which built-in facts a model knows closed-book, and how often it "
                                      "follows long counterfactual contexts.")
def check_facts_command(
    model: str = typer.Option("smollm2-135m-instruct", "--model"),
    adapter: str | None = typer.Option(None, "--adapter", help="PEFT adapter folder, or none."),
    out: Path = typer.Option(Path("runs/check-facts"), "--out", help="Output folder."),
    context_words: int = typer.Option(450, "--context-words"),
    batch_size: int = typer.Option(16, "--batch-size"),
    limit: int | None = typer.Option(None, "--limit", help="Check only the first N candidate facts."),
    context_sample: int = typer.Option(48, "--context-sample",
                                       help="Known facts asked with context (seeded sample; 0 = all)."),
    write_known: Path | None = typer.Option(None, "--write-known",
                                            help="Also write the ids of known facts to this JSON file."),
) -> None:
    from rich.progress import Progress

    from carelab.care.data.fact_check import CheckFactsConfig, check_facts
    from carelab.care.data.facts import candidate_facts
    from carelab.models import ModelSpecError, load_model
    from carelab.runs import save_config, write_jsonl

    cfg = CheckFactsConfig(model=model, adapter=adapter, context_words=context_words, batch_size=batch_size,
                           limit=limit, context_sample=context_sample)
    try:
        m, tok = load_model(model, adapter=adapter)
    except ModelSpecError as exc:
        fail(str(exc))
    n = min(limit or 10**9, len(candidate_facts()))
    with Progress() as bar:
        task = bar.add_task("check-facts", total=n + 3 * min(n, context_sample or n))
        rows, summary = check_facts(m, tok, cfg, progress=lambda k: bar.advance(task, k))
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    write_jsonl(out / "facts.jsonl", rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if write_known:
        write_known.parent.mkdir(parents=True, exist_ok=True)
        write_known.write_text(json.dumps({"model": model, "measured_with": "carelab data check-facts",
                                           "summary": summary,
                                           "known": [r["id"] for r in rows if r["known"]]}, indent=1) + "\n")
    for k, v in summary.items():
        typer.echo(f"{k}: {v}")


def sft_data_command(
    input: Path = typer.Option(..., "--input", help="Dataset file (any supported native format)."),
    format: str | None = typer.Option(None, "--format", help="Dataset format; detected from content if omitted."),
    reasoner: str = typer.Option("rule", "--reasoner", help="rule | hf:<model spec> | openai:<model>"),
    injector: str = typer.Option("rule", "--injector", help="rule | hf:<model spec> | openai:<model>"),
    out: Path = typer.Option(..., "--out", help="Output SFT JSONL (stats/config/cache are written beside it)."),
    limit: int | None = typer.Option(None, "--limit"),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip malformed input rows (and report them)."),
    metric: str = typer.Option("f1", "--metric", help="Stage-1 correctness metric: f1 | em."),
    threshold: float = typer.Option(0.8, "--threshold", help="Stage-1 keep threshold on the metric (0-1)."),
    completeness: str = typer.Option("verbatim", "--completeness", help="Stage-2 filter: verbatim | similarity."),
    similarity: float = typer.Option(0.9, "--similarity", help="Stage-2 similarity threshold (similarity mode)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Items per batch (model backends batch generation)."),
    max_new_tokens: int = typer.Option(384, "--max-new-tokens", help="Generation budget of model backends."),
    base_url: str | None = typer.Option(None, "--base-url", help="OpenAI-compatible base URL (or OPENAI_BASE_URL)."),
    api_key: str | None = typer.Option(None, "--api-key", help="API key (or OPENAI_API_KEY)."),
    concurrency: int = typer.Option(4, "--concurrency", help="Parallel API requests (openai backend)."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds per API request."),
    retries: int = typer.Option(4, "--retries", help="Retries per API request (the openai SDK's max_retries: backoff, honours Retry-After)."),
    item_delay: float = typer.Option(0.0, "--item-delay", help="Pause after each item (rate-limited APIs)."),
) -> None:
    """Three-stage SFT data pipeline: reason -> keep correct -> inject evidence -> keep complete -> tag."""
    from carelab.care.sft.backends import BackendError
    from carelab.care.sft.pipeline import SftDataConfig, run_pipeline
    from carelab.models import ModelSpecError
    from carelab.runs import InputError

    cfg = SftDataConfig(input=str(input), format=format, reasoner=reasoner, injector=injector, out=str(out),
                        limit=limit, skip_invalid=skip_invalid, metric=metric, threshold=threshold,
                        completeness=completeness, similarity=similarity, batch_size=batch_size,
                        max_new_tokens=max_new_tokens, base_url=base_url, api_key=api_key, concurrency=concurrency,
                        timeout=timeout, retries=retries, item_delay=item_delay)
    try:
        stats = run_pipeline(cfg, echo=typer.echo)
    except (InputError, FileNotFoundError, ValueError, BackendError, ModelSpecError) as exc:
        fail(str(exc))
    from carelab.distributed import is_main

    if is_main():  # one summary for the whole job
        typer.echo(json.dumps(stats["stages"], indent=1))


def serve_command(
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="Model spec to serve."),
    adapter: str = typer.Option("auto", "--adapter", help="PEFT adapter folder; 'auto' = the bundled CARE adapter "
                                "for the embedded model when present; 'none' = the plain model."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default)."),
    port: int = typer.Option(8000, "--port"),
    name: str | None = typer.Option(None, "--name", help="Model name reported by /v1/models (default: the spec)."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="Default and cap for max_tokens."),
    max_queue: int = typer.Option(8, "--max-queue", min=0, help="Requests that may wait while one generates; "
                                  "more get HTTP 429."),
    engine: str = typer.Option("hf", "--engine", help="hf (carelab's server) or vllm (vLLM's OpenAI server with "
                               "the adapter as LoRA module `care`, behind carelab's quote check; GPU)."),
    max_model_len: int | None = typer.Option(None, "--max-model-len", help="vllm engine: context length."),
) -> None:
    """OpenAI-compatible chat server (/v1/models, /v1/chat/completions) for any model spec (+adapter)."""
    from carelab.care.serve.server import serve
    from carelab.models import ModelSpecError
    from carelab.vllm_support import ENGINES, VLLMUnavailable

    if engine not in ENGINES:
        fail(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    try:
        from carelab.care.shipped import resolve_adapter

        resolved = resolve_adapter(adapter, model)
        if engine == "vllm":
            from carelab.care.serve import vllm_proxy

            vllm_proxy.serve(model, resolved, host, port, name or model, max_model_len=max_model_len)
            return
        serve(model, adapter=resolved, host=host, port=port, model_name=name,
              max_new_tokens=max_new_tokens, max_queue=max_queue)
    except (ModelSpecError, VLLMUnavailable) as exc:
        fail(str(exc))
