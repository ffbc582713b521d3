"""``carelab care …`` commands and the top-level ``carelab demo``; rendering of checked CARE answers."""

from __future__ import annotations

import inspect
import json
import sys
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from carelab.care.cli.data import sft_data_command
from carelab.care.cli.eval import eval_command, report_command
from carelab.care.shipped import resolve_adapter
from carelab.care.train.config import GRPORunConfig, SFTRunConfig
from carelab.cli_errors import fail
from carelab.distributed import is_main
from carelab.options import flag_parameters, with_signature

app = typer.Typer(no_args_is_help=True)
console = Console()
err = Console(stderr=True)

MATCH_STYLE = {"exact": "bold green", "fuzzy": "bold yellow", "none": "bold red"}
MATCH_LABEL = {"exact": "exact", "fuzzy": "fuzzy", "none": "not in context"}

app.command("eval", help="Evaluate methods (original, care-prompt, care, rag, crag) on QA files; resumable.")(
    eval_command
)
app.command("report", help="Tables, bar chart and HTML evidence viewer from one or more eval runs.")(report_command)
app.command("sft-data", help="Three-stage SFT data pipeline: reason -> keep correct -> inject evidence -> tag.")(
    sft_data_command
)


def render_reasoning(result) -> Text:
    """The reasoning with every quote highlighted and labelled exact / fuzzy / not in context."""
    from carelab.care import format as care_format

    text = Text()
    remaining = result.think
    for quote in result.quotes:
        # locate the quote's source text in the reasoning (whitespace may differ; fall back to append)
        idx = care_format.collapse_ws(remaining).find(quote.text)
        plain = care_format.collapse_ws(remaining)
        if idx < 0:
            continue
        text.append(plain[:idx])
        text.append(f"«{quote.text}»", style=MATCH_STYLE[quote.match])
        text.append(f" [{MATCH_LABEL[quote.match]}]", style="dim")
        remaining = plain[idx + len(quote.text):]
    text.append(care_format.collapse_ws(remaining) if result.quotes else result.think)
    return text


def _read_context(context: str) -> str:
    """The context text (``-`` = standard input) through the shared reader, so errors name file and line."""
    from carelab.runs import InputError, read_text_file

    if context == "-":
        return sys.stdin.read()
    try:
        return read_text_file(context)
    except FileNotFoundError:
        fail(f"{context}: no such file (use --context - to read standard input)")
    except InputError as exc:
        fail(str(exc))


@app.command("ask")
def ask_command(
    question: str = typer.Option(..., "--question", "-q", help="The question to answer."),
    context: str = typer.Option(..., "--context", "-c", help="Context file, or - for standard input."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Model spec, HF id or folder."),
    adapter: str = typer.Option("auto", "--adapter", help="PEFT adapter folder; 'auto' = bundled CARE adapter "
                                "for the embedded model when present; 'none' = plain model."),
    max_new_tokens: int = typer.Option(384, "--max-new-tokens", min=1),
    gold: str | None = typer.Option(None, "--gold", help="Gold answer, to include the accuracy reward."),
    system_prompt: Path | None = typer.Option(None, "--system-prompt", help="File with a custom system prompt."),
    as_json: bool = typer.Option(False, "--json", help="Print the parsed structure and reward breakdown as JSON."),
) -> None:
    """Answer a question over a document; show the reasoning with each quote checked against the document."""
    from carelab.care.serve.ask import ask_many
    from carelab.models import ModelSpecError, load_model
    from carelab.runs import to_jsonable

    text = _read_context(context)
    prompt = None
    if system_prompt is not None:
        from carelab.runs import InputError, read_text_file

        try:
            prompt = read_text_file(system_prompt).strip()
        except (FileNotFoundError, InputError) as exc:
            fail(str(exc))
    adapter_dir = resolve_adapter(adapter, model)
    try:
        mdl, tok = load_model(model, adapter=adapter_dir)
    except ModelSpecError as exc:
        fail(str(exc))
    with warnings.catch_warnings(record=True):
        try:
            result = ask_many(mdl, tok, [(text, question, gold)], max_new_tokens=max_new_tokens, system_prompt=prompt)[0]
        except ValueError as exc:
            fail(str(exc))
    if result.truncated:
        err.print("[yellow]warning:[/] the context was longer than the model's window; its middle was cut "
                  "so the question fits")
    if as_json:
        payload = to_jsonable(result)
        payload["model"], payload["adapter"] = model, adapter_dir
        print(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    console.rule("[bold]Reasoning")
    if result.think:
        console.print(render_reasoning(result))
    else:
        console.print(Text("(no <think> block: the model did not follow the CARE format; raw response below)",
                           style="dim"))
        console.print(result.raw.strip())
    console.rule("[bold]Answer")
    console.print(Text(result.answer or "(no 'Answer:' line)", style="bold"))
    counts = {k: sum(q.match == k for q in result.quotes) for k in MATCH_STYLE}
    console.print(f"quotes: {len(result.quotes)} (exact {counts['exact']}, fuzzy {counts['fuzzy']}, "
                  f"not in context {counts['none']}) · well-formed: {result.well_formed} · "
                  + " · ".join(f"{k} {v:.2f}" for k, v in result.rewards.items()))


def demo_command(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    adapter: str = typer.Option("auto", "--adapter", help="'auto' (bundled CARE adapter if present), 'none' or a folder."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
) -> None:
    """The model answers bundled context/question pairs (multi-hop, counterfactual) with the CARE prompt."""
    from importlib import resources

    from rich.progress import Progress

    from carelab.care.serve.ask import ask_many
    from carelab.models import load_model
    from carelab.runs import read_jsonl

    path = resources.files("carelab") / "data" / "demo.jsonl"
    items = [obj for _, obj in read_jsonl(str(path))]
    adapter_dir = resolve_adapter(adapter, model)
    mdl, tok = load_model(model, adapter=adapter_dir)
    console.print(f"model: [bold]{model}[/] adapter: {adapter_dir or 'none'} · {len(items)} bundled questions")
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("answering", total=len(items))
        results = ask_many(mdl, tok, [(it["context"], it["question"], it["answer"]) for it in items],
                           max_new_tokens=max_new_tokens, progress=lambda n: bar.advance(task, n))
    table = Table(title="CARE demo: answers and rewards (0.7·accuracy + 0.1·format + 0.2·retrieval)")
    for col in ("kind", "question", "gold", "answer", "quotes", "acc", "fmt", "ret", "total"):
        table.add_column(col, overflow="fold")
    for it, res in zip(items, results, strict=True):
        console.rule(f"[bold]{it['id']} ({it['kind']})")
        console.print(f"[bold]Q:[/] {it['question']}")
        console.print(render_reasoning(res) if res.think else Text(res.raw.strip()[:400], style="dim"))
        console.print(f"[bold]Answer:[/] {res.answer or '(none)'}   [dim]gold: {it['answer']}[/]")
        quotes = f"{sum(q.match != 'none' for q in res.quotes)}/{len(res.quotes)}"
        r = res.rewards
        table.add_row(it["kind"], it["question"], it["answer"], res.answer[:40], quotes, f"{r['accuracy']:.2f}",
                      f"{r['format']:.0f}", f"{r['retrieval']:.2f}", f"{r['total']:.2f}")
    console.print(table)
    mean = sum(r.rewards["total"] for r in results) / len(results)
    console.print(f"mean total reward {mean:.3f} · well-formed {sum(r.well_formed for r in results)}/{len(results)}")


def _preset_section(preset: str | None, section: str) -> tuple[dict, str]:
    from carelab.presets import load_preset

    if not preset:
        return {}, "flags"
    return load_preset(preset).get(section) or {}, preset


def _run_user_job(fn, cfg):
    """Run a training job, turning user errors into one-line messages (finished checkpoints stay on disk)."""
    from carelab.models import ModelSpecError
    from carelab.runs import InputError
    from carelab.vllm_support import VLLMUnavailable

    try:
        return fn(cfg)
    except (InputError, ModelSpecError, FileNotFoundError, ValueError, VLLMUnavailable) as exc:
        fail(str(exc))


_PRESET = inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, annotation=str | None, default=typer.Option(
    None, "--preset", help="cpu-quick | cpu-full | paper-qwen2.5-7b | YAML file; flags given override it"))


def _config_from_flags(cls, section_name: str, flags: dict):
    """The run config: the preset's section, then the flags given (all derived from ``cls``'s fields)."""
    from carelab.options import FlagError, flag_values
    from carelab.presets import build_config

    preset = flags.pop("preset", None)
    section, source = _preset_section(preset, section_name)
    try:
        overrides = flag_values(cls, flags, section)
        return build_config(cls, {k: v for k, v in section.items() if k != "data"}, overrides, source)
    except FlagError as exc:
        fail(exc)
    except TypeError as exc:
        fail(f"missing setting: {exc}")
    except ValueError as exc:
        fail(exc)


@with_signature([_PRESET, *flag_parameters(SFTRunConfig)])
def sft_command(**flags) -> None:
    """SFT on CARE-format reasoning traces (loss on the assistant turn only).

    Every option is a field of SFTRunConfig (also a preset's `sft:` key); any other TRL SFTConfig field is
    reachable with --trl key=value or a preset's `trl:` mapping.
    """
    from carelab.care.train.sft import run_sft

    cfg = _config_from_flags(SFTRunConfig, "sft", flags)
    metrics = _run_user_job(run_sft, cfg)
    if is_main():
        console.print(f"[bold green]SFT done[/] loss {metrics['first_loss']} -> {metrics['last_loss']} "
                      f"({metrics['steps']} steps) · adapter in {cfg.out}")


@with_signature([_PRESET, *flag_parameters(GRPORunConfig)])
def grpo_command(**flags) -> None:
    """GRPO with the accuracy/format/retrieval rewards and the easy→hard curriculum.

    β = 0 (--beta 0) loads and runs no reference model. Every option is a field of GRPORunConfig (also a
    preset's `grpo:` key); every other TRL GRPOConfig field (scale_rewards, epsilon_high,
    mask_truncated_completions, log_completions, …) is reachable with --trl key=value or a preset's
    `trl:` mapping, checked by name before anything is loaded.
    """
    from carelab.care.train.grpo import run_grpo

    cfg = _config_from_flags(GRPORunConfig, "grpo", flags)
    metrics = _run_user_job(run_grpo, cfg)
    if is_main():
        console.print(f"[bold green]GRPO done[/] reward {metrics['first_reward']} -> {metrics['last_reward']} "
                      f"({metrics['steps']} steps) · adapter in {metrics['final_adapter']}")


app.command("sft")(sft_command)
app.command("grpo")(grpo_command)


@app.command("reproduce")
def reproduce_command(
    preset: str = typer.Option("cpu-quick", "--preset", help="cpu-quick | cpu-full | paper-qwen2.5-7b | YAML file"),
    out: str | None = typer.Option(None, "--out", help="Run folder (default runs/<preset>)."),
    model: str | None = typer.Option(None, "--model", "-m"),
    seed: int | None = typer.Option(None, "--seed"),
    ablations: bool | None = typer.Option(None, "--ablations/--no-ablations", help="Also train the ablations."),
    base_run: str | None = typer.Option(None, "--base-run", help="Reuse this finished run's data, SFT and CARE "
                                        "(train and evaluate only the ablations)."),
    stop_after: str | None = typer.Option(None, "--stop-after", help="End after this stage: data | sft | grpo | "
                                          "eval. The same command without it resumes where this one stopped."),
) -> None:
    """The whole CARE chain in one resumable command: data → SFT data → SFT → GRPO → eval → report."""
    from carelab.care.eval.results import results_text
    from carelab.care.reproduce import reproduce
    from carelab.models import ModelSpecError
    from carelab.runs import InputError

    try:
        eval_dir = reproduce(preset, out=out, model=model, seed=seed, ablations=ablations, base_run=base_run,
                             stop_after=stop_after)
    except (InputError, ModelSpecError, FileNotFoundError) as exc:
        fail(str(exc))
    if not is_main():
        return
    if eval_dir is None:
        console.print(f"Stopped after {stop_after}; the same command without --stop-after resumes with the next "
                      "stage.")
        return
    console.rule("[bold]Results (F1 ×100)")
    console.print(results_text([str(eval_dir)]))
    for name in ("report.md", "viewer.html"):
        path = eval_dir / name
        if path.exists():
            console.print(f"{name}: [bold]{path.resolve()}[/]")


@app.command("ship")
def ship_command(
    run_dir: str = typer.Argument(..., help="A `carelab care reproduce` run folder (with eval/ and grpo/)."),
    out: str | None = typer.Option(None, "--out", help="Destination (default: the package's bundled adapter)."),
    force: bool = typer.Option(False, "--force", help="Package even if CARE does not beat Original in that run."),
) -> None:
    """Package a reproduce run's CARE adapter (bf16 + model card) as the bundled default adapter."""
    from carelab.care.shipped import ship_from_run
    from carelab.runs import InputError

    try:
        dest = ship_from_run(run_dir, out, force=force)
    except (InputError, ValueError) as exc:
        fail(str(exc))
    size = sum(p.stat().st_size for p in dest.iterdir()) / 1e6
    console.print(f"[bold green]shipped[/] {dest} ({size:.1f} MB) · model card: {dest / 'README.md'}")
