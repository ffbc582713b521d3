"""The ``carelab care eval`` and ``carelab care report`` commands, as plain Typer-annotated functions.

Kept apart from ``cli/main.py`` so the harness owns its options and error handling; the CARE CLI mounts
these two functions. User mistakes (a bad file, an unknown method, a missing run directory) become one
line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from carelab.care.eval.baselines import METHODS
from carelab.cli_errors import fail


def parse_method(text: str, default_adapter: str | None = None, rag_k: int = 3, retriever: str = "bm25"):
    """Parse ``METHOD``, ``LABEL=METHOD`` or ``LABEL=METHOD@ADAPTER_DIR`` into a :class:`MethodSpec`.

    ``--adapter`` is the default adapter of ``care`` entries that name none.

    >>> parse_method("SFT-only=care@runs/sft/adapter")
    MethodSpec(method='care', label='SFT-only', adapter='runs/sft/adapter', rag_k=3, retriever='bm25')
    """
    from carelab.care.eval.harness import MethodSpec
    from carelab.runs import InputError

    label, _, rest = text.partition("=") if "=" in text else ("", "", text)
    method, _, adapter = rest.partition("@")
    method = method.strip()
    if method not in METHODS:
        raise InputError("--method", f"unknown method {method!r} in {text!r}; use one of {', '.join(METHODS)} "
                                     "(optionally LABEL=METHOD or LABEL=METHOD@ADAPTER_DIR)")
    adapter = adapter.strip() or (default_adapter if method == "care" else None)
    if adapter and adapter.lower() == "none":
        adapter = None
    return MethodSpec(method=method, label=label.strip() or None, adapter=adapter, rag_k=rag_k, retriever=retriever)


def eval_command(
    data: Annotated[list[str], typer.Option("--data", "-d", help="Data file (repeatable): HotpotQA, 2Wiki, MuSiQue, "
                                            "DROP, MS MARCO, LongBench, CofCA or carelab JSONL.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Run directory (resumed if it exists).")],
    method: Annotated[list[str] | None, typer.Option(
        "--method", "-m", help=f"Method (repeatable): {', '.join(METHODS)}; as METHOD, LABEL=METHOD or "
                               "LABEL=METHOD@ADAPTER_DIR (default: original).")] = None,
    model: Annotated[str, typer.Option("--model", help="Model spec: smollm2-135m-instruct, an HF folder/id, "
                                       "tiny-random-qwen2.")] = "smollm2-135m-instruct",
    adapter: Annotated[str | None, typer.Option("--adapter", help="PEFT adapter for `care` methods that name "
                                                "none.")] = None,
    data_format: Annotated[str | None, typer.Option("--format", help="Force the data format (default: detect).")
                           ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Evaluate only the first N examples per file.")
                     ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 512,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    max_prompt_tokens: Annotated[int | None, typer.Option(
        "--max-prompt-tokens", help="Prompt budget; longer inputs are middle-truncated (default: window - "
                                    "max new tokens).")] = None,
    rag_k: Annotated[int, typer.Option("--rag-k", help="Passages kept by `rag`.")] = 3,
    retriever: Annotated[str, typer.Option("--retriever", help="bm25 or minilm (rag and crag).")] = "bm25",
    dtype: Annotated[str, typer.Option("--dtype")] = "float32",
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N (default: CUDA if available).")
                      ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    system_prompt_file: Annotated[Path | None, typer.Option(
        "--system-prompt-file", help="Text file with the CARE system prompt (e.g. the official wording).")] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip report.md/chart/viewer.")] = False,
    engine: Annotated[str, typer.Option("--engine", help="hf (transformers, any device) or vllm (GPU; adapters as "
                                        "LoRA requests; `pip install vllm`).")] = "hf",
) -> None:
    """Evaluate methods on QA files: predictions JSONL, metrics JSON/CSV, report and HTML evidence viewer."""
    from carelab.care.eval.harness import EvalConfig, run_eval
    from carelab.care.eval.results import results_text
    from carelab.distributed import is_main
    from carelab.models import ModelSpecError
    from carelab.runs import InputError, read_text_file

    try:
        specs = [parse_method(m, adapter, rag_k, retriever) for m in (method or ["original"])]
        prompt = None
        if system_prompt_file is not None:
            if not system_prompt_file.exists():
                raise InputError(system_prompt_file, "no such file", field="--system-prompt-file")
            prompt = read_text_file(system_prompt_file).strip()
        config = EvalConfig(data=list(data), methods=specs, out=out, model=model, data_format=data_format,
                            limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            max_prompt_tokens=max_prompt_tokens, dtype=dtype, device=device, seed=seed,
                            care_system_prompt=prompt, report=not no_report, engine=engine)
        run_eval(config)
    except (InputError, ModelSpecError, FileNotFoundError, RuntimeError) as exc:
        fail(exc)
    if not is_main():
        return  # one summary, from the process that wrote the metrics
    typer.echo(results_text([out]))
    typer.echo(f"metrics: {Path(out) / 'metrics.json'}")
    if not no_report:
        typer.echo(f"report:  {Path(out) / 'report.md'}\nviewer:  {Path(out) / 'viewer.html'}")


def report_command(
    run_dirs: Annotated[list[str], typer.Argument(help="One or more `carelab care eval` output directories.")],
    out: Annotated[str | None, typer.Option("--out", "-o", help="Report directory (default: the run directory "
                                            "when there is one).")] = None,
    max_examples: Annotated[int, typer.Option("--max-examples", help="Viewer items per dataset (every method shown side by side for each).")
                            ] = 20,
) -> None:
    """Rebuild the Markdown tables, bar chart and HTML evidence viewer from one or more runs."""
    from carelab.care.eval.results import results_text, write_report
    from carelab.runs import InputError

    try:
        if out is None:
            if len(run_dirs) != 1:
                raise InputError("--out", "give --out when reporting on several runs")
            out = run_dirs[0]
        paths = write_report(run_dirs, out, max_viewer_examples=max_examples)
        typer.echo(results_text(run_dirs))
    except (InputError, FileNotFoundError) as exc:
        fail(exc)
    typer.echo(f"report: {paths['markdown']}\nviewer: {paths['viewer']}")
