"""``carelab care …`` commands and the top-level ``carelab demo``; rendering of checked CARE answers."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from carelab.care.data_cli import sft_data_command

app = typer.Typer(no_args_is_help=True)
console = Console()
err = Console(stderr=True)

MATCH_STYLE = {"exact": "bold green", "fuzzy": "bold yellow", "none": "bold red"}
MATCH_LABEL = {"exact": "exact", "fuzzy": "fuzzy", "none": "not in context"}

app.command("sft-data", help="Three-stage SFT data pipeline: reason -> keep correct -> inject evidence -> tag.")(
    sft_data_command
)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the Exit to raise (no traceback for user errors)."""
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


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
    if context == "-":
        return sys.stdin.read()
    path = Path(context)
    if not path.exists():
        raise fail(f"{context}: no such file (use --context - to read standard input)")
    if path.is_dir():
        raise fail(f"{context}: is a directory, expected a text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise fail(f"{context}: not UTF-8 text") from None


def _resolve_adapter(adapter: str | None) -> str | None:
    """'auto' -> the bundled CARE adapter for the embedded model when present; 'none' -> no adapter."""
    if adapter is None or adapter.lower() == "none":
        return None
    if adapter == "auto":
        from carelab.care.shipped import default_adapter

        return default_adapter()
    return adapter


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
    from carelab.care.ask import ask_many
    from carelab.models import ModelSpecError, load_model
    from carelab.runs import to_jsonable

    text = _read_context(context)
    prompt = None
    if system_prompt is not None:
        if not system_prompt.exists():
            raise fail(f"{system_prompt}: no such file")
        prompt = system_prompt.read_text(encoding="utf-8").strip()
    adapter_dir = _resolve_adapter(adapter) if model == "smollm2-135m-instruct" or adapter != "auto" else None
    try:
        mdl, tok = load_model(model, adapter=adapter_dir)
    except ModelSpecError as exc:
        raise fail(str(exc)) from None
    with warnings.catch_warnings(record=True):
        try:
            result = ask_many(mdl, tok, [(text, question, gold)], max_new_tokens=max_new_tokens, system_prompt=prompt)[0]
        except ValueError as exc:
            raise fail(str(exc)) from None
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

    from carelab.care.ask import ask_many
    from carelab.models import load_model
    from carelab.runs import read_jsonl

    path = resources.files("carelab") / "data" / "demo.jsonl"
    items = [obj for _, obj in read_jsonl(str(path))]
    adapter_dir = _resolve_adapter(adapter) if model == "smollm2-135m-instruct" or adapter != "auto" else None
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
