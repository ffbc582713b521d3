"""`carelab watermark` commands: the robustness experiment plus small detect/transform/sandbox utilities.

Heavy imports live inside the commands so ``carelab --help`` stays instant; user mistakes become a
one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from carelab.cli_errors import fail

app = typer.Typer(no_args_is_help=True)


def _read_source(file: Path) -> str:
    """The file's text (``-`` = standard input) via the shared reader; a bad file is one line naming it."""
    from carelab.runs import InputError, read_text_file

    try:
        return sys.stdin.read() if str(file) == "-" else read_text_file(file)
    except (InputError, FileNotFoundError) as exc:
        fail(str(exc))


def parse_depths(text: str) -> list[int]:
    """``"1..5"`` -> [1, 2, 3, 4, 5]; ``"5"`` -> [5]; ``"1,3,5"`` -> [1, 3, 5]."""
    text = text.strip()
    try:
        if ".." in text:
            a, b = text.split("..", 1)
            lo, hi = int(a), int(b)
            if lo < 1 or hi < lo:
                raise ValueError
            return list(range(lo, hi + 1))
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--depth {text!r}: use N, A..B or a comma list of integers >= 1") from None
    if not values or values[0] < 1:
        raise ValueError(f"--depth {text!r}: depths must be >= 1")
    return values


def parse_transforms(text: str) -> list[str]:
    from carelab.watermark.transforms import TRANSFORMS

    if text.strip() == "all":
        return list(TRANSFORMS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TRANSFORMS]
    if bad or not names:
        raise ValueError(f"--transforms: unknown {bad}; choose from all, {', '.join(TRANSFORMS)}")
    return names


def parse_schemes(text: str) -> list[str]:
    """``both`` = kgw,unigram (the paper's pair); ``all`` adds sweet; or a comma list."""
    from carelab.watermark.robustness import SCHEMES

    if text == "both":
        return ["kgw", "unigram"]
    if text == "all":
        return list(SCHEMES)
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or any(n not in SCHEMES for n in names):
        raise ValueError(f"--scheme {text!r}: use both, all or a comma list of {', '.join(SCHEMES)}")
    return names


def parse_scheme_values(text: str, option: str) -> dict[str, float]:
    """``kgw=8,unigram=4`` -> {"kgw": 8.0, "unigram": 4.0}."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{option} {text!r}: use name=number pairs, e.g. kgw=8,unigram=4") from None
    return out


def parse_floats(text: str, option: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise ValueError(f"{option} {text!r}: use a comma list of numbers")
    return values


@app.command("robustness")
def robustness_command(
    out: Path = typer.Option(..., "--out", help="Run directory (resumable: rerun to continue)."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="Model spec (carelab.models)."),
    scheme: str = typer.Option("both", "--scheme", help="both (kgw,unigram) | all (+ sweet) | a comma list"),
    transforms: str = typer.Option("all", "--transforms", help="all, or a comma list of transform names"),
    depth: str = typer.Option("1..5", "--depth", help="Edits d: N, A..B or a comma list"),
    limit: int | None = typer.Option(None, "--limit", help="First N problems of the split (default: all)."),
    split: str = typer.Option("all", "--split", help="all | dev | test (dev: a fixed quarter of HumanEval)"),
    sweet_entropy: float = typer.Option(0.9, "--sweet-entropy", help="SWEET's entropy threshold (nats)."),
    windowed: bool = typer.Option(True, "--windowed/--no-windowed",
                                  help="Also score kgw/unigram code with the windowed (WinMax) detector."),
    min_window: int = typer.Option(8, "--min-window", help="WinMax: smallest window (scored tokens)."),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens"),
    temperature: float = typer.Option(0.7, "--temperature"),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(16, "--batch-size"),
    prompt_style: str = typer.Option("chat", "--prompt-style", help="chat | completion"),
    z_threshold: float = typer.Option(3.0, "--z-threshold"),
    gamma: float = typer.Option(0.25, "--gamma"),
    delta: float = typer.Option(2.0, "--delta"),
    scheme_deltas: str = typer.Option("", "--scheme-deltas",
                                      help="Per-scheme delta, e.g. kgw=8,unigram=4 (overrides --delta)."),
    keep: str = typer.Option("executes", "--keep", help="Programs scored: executes | passes | all"),
    workers: int = typer.Option(2, "--workers", help="Parallel sandbox processes."),
    threads: int | None = typer.Option(None, "--threads", help="torch threads for generation."),
    problems: Path | None = typer.Option(None, "--problems", help="HumanEval JSONL(.gz); default: bundled."),
    no_isolation: bool = typer.Option(False, "--no-isolation",
                                      help="Run generated code even without OS isolation (bubblewrap). Unsafe."),
) -> None:
    """Watermarked vs plain HumanEval code before/after semantics-preserving edits: TPR/FPR, AUC, pass@1."""
    from carelab.models import ModelSpecError
    from carelab.runs import InputError
    from carelab.watermark.robustness import RobustnessConfig, run
    from carelab.watermark.sandbox import IsolationUnavailable

    try:
        cfg = RobustnessConfig(out=str(out), model=model, schemes=parse_schemes(scheme),
                               transforms=parse_transforms(transforms), depths=parse_depths(depth), limit=limit,
                               split=split, sweet_entropy=sweet_entropy, windowed=windowed, min_window=min_window,
                               scheme_deltas=parse_scheme_values(scheme_deltas, "--scheme-deltas"),
                               max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                               batch_size=batch_size, prompt_style=prompt_style, z_threshold=z_threshold,
                               gamma=gamma, delta=delta, keep=keep, workers=workers, threads=threads,
                               problems_path=str(problems) if problems else None, no_isolation=no_isolation)
        cfg.validate()
        result = run(cfg)
    except (ValueError, InputError, ModelSpecError, IsolationUnavailable) as exc:
        fail(str(exc))
        return
    typer.echo(result["table"])
    typer.echo(f"kept programs: {result['kept']}; report: {Path(result['out']) / 'report.md'}")


@app.command("select")
def select_command(
    out: Path = typer.Option(..., "--out", help="Directory of the dev runs (resumable)."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="Model spec (carelab.models)."),
    scheme: str = typer.Option("all", "--scheme", help="both | all | a comma list"),
    deltas: str = typer.Option("4,8", "--deltas", help="Bias values to try, weakest first."),
    gammas: str = typer.Option("0.25", "--gammas", help="Green-list fractions to try."),
    limit: int | None = typer.Option(None, "--limit", help="First N problems of the dev split."),
    target_tpr: float = typer.Option(0.6, "--target-tpr", help="TPR wanted at z > 2.33 (nominal 1 % FPR)."),
    min_kept: int = typer.Option(5, "--min-kept", help="Kept watermarked programs a TPR must rest on."),
    temperature: float = typer.Option(0.7, "--temperature"),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens"),
    batch_size: int = typer.Option(16, "--batch-size"),
    threads: int | None = typer.Option(None, "--threads", help="torch threads for generation."),
    workers: int = typer.Option(2, "--workers", help="Parallel sandbox processes."),
    no_isolation: bool = typer.Option(False, "--no-isolation",
                                      help="Run generated code even without OS isolation (bubblewrap). Unsafe."),
) -> None:
    """Pick delta/gamma on the dev split so unedited watermarked code reaches the target TPR at 1 % FPR."""
    from carelab.models import ModelSpecError
    from carelab.runs import InputError
    from carelab.watermark.robustness import RobustnessConfig, select_settings
    from carelab.watermark.sandbox import IsolationUnavailable

    try:
        grid = [{"delta": d, "gamma": g} for g in parse_floats(gammas, "--gammas")
                for d in parse_floats(deltas, "--deltas")]
        cfg = RobustnessConfig(out=str(out), model=model, schemes=parse_schemes(scheme), split="dev", limit=limit,
                               temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               threads=threads, workers=workers, no_isolation=no_isolation)
        cfg.validate()
        result = select_settings(cfg, grid, target_tpr=target_tpr, min_kept=min_kept)
    except (ValueError, InputError, ModelSpecError, IsolationUnavailable) as exc:
        fail(str(exc))
        return
    typer.echo((Path(out) / "dev.md").read_text())
    typer.echo(json.dumps(result["chosen"]))


@app.command("detect")
def detect_command(
    file: Path = typer.Argument(..., help="Text/code file to test ('-' for stdin)."),
    scheme: str = typer.Option("kgw", "--scheme", help="kgw | kgw-selfhash | unigram (sweet needs the model)"),
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="Tokenizer/model spec."),
    z_threshold: float = typer.Option(3.0, "--z-threshold"),
    gamma: float = typer.Option(0.25, "--gamma"),
    key: int | None = typer.Option(None, "--key", help="hash key (KGW) or key (Unigram)."),
) -> None:
    """z-test a text for a watermark; prints JSON."""
    from carelab.models import ModelSpecError, load_tokenizer
    from carelab.watermark.schemes import make_scheme

    text = _read_source(file)
    try:
        tok = load_tokenizer(model)
        opts: dict = {"gamma": gamma, "z_threshold": z_threshold}
        if key is not None:
            opts["key" if scheme == "unigram" else "hash_key"] = key
        wm = make_scheme(scheme, _vocab_size(model, tok), **opts)
        det = wm.detect(tok(text, add_special_tokens=False)["input_ids"])
    except (ValueError, ModelSpecError) as exc:
        fail(str(exc))
        return
    typer.echo(json.dumps({"z": det.z, "p_value": det.p_value, "green": det.green, "scored": det.scored,
                           "watermarked": det.prediction}))


def _vocab_size(model: str, tok) -> int:
    """The model config's vocab size (what the generator's logits had), falling back to len(tokenizer)."""
    try:
        from transformers import AutoConfig

        from carelab.models import embedded_model_dir, resolve_spec

        r = resolve_spec(model)
        src = str(embedded_model_dir()) if r.kind == "embedded" else r.source
        if r.kind != "tiny":
            return int(AutoConfig.from_pretrained(src).vocab_size)
    except Exception:  # noqa: BLE001 - any failure: fall back to the tokenizer size
        pass
    return len(tok)


@app.command("transform")
def transform_command(
    file: Path = typer.Argument(..., help="Python file to edit."),
    name: str = typer.Option("mixed", "--name", help="add_dead_code | rename | insert_print | wrap_try_catch | mixed"),
    seed: int = typer.Option(0, "--seed"),
    depth: int = typer.Option(5, "--depth", help="Edits for mixed (others: applied this many times)."),
    target: str | None = typer.Option(None, "--target", help="Only edit inside this top-level function."),
) -> None:
    """Print a semantics-preserving edit of a Python file."""
    from carelab.watermark.transforms import TransformError, apply

    code = _read_source(file)
    try:
        times = 1 if name == "mixed" else depth
        typer.echo(apply(code, name, seed, target=target, depth=depth, times=times), nl=False)
    except (TransformError, ValueError) as exc:
        fail(f"{file}: {exc}")


@app.command("sandbox")
def sandbox_command(
    file: Path = typer.Argument(..., help="Python program to run contained."),
    wall_s: float = typer.Option(10.0, "--wall"),
    memory_mb: int = typer.Option(1024, "--memory-mb"),
    no_isolation: bool = typer.Option(False, "--no-isolation",
                                      help="Run even without OS isolation (bubblewrap): rlimits only. Unsafe."),
) -> None:
    """Run a program in the sandbox; prints status, detail and the active containment layers as JSON."""
    from carelab.watermark.sandbox import IsolationUnavailable, Limits, run_program

    code = _read_source(file)
    try:
        r = run_program(code, Limits(wall_s=wall_s, cpu_s=max(1, int(wall_s)), memory_mb=memory_mb,
                                     allow_unisolated=no_isolation))
    except IsolationUnavailable as exc:
        fail(str(exc))
    typer.echo(json.dumps({"status": r.status, "detail": r.detail, "seconds": round(r.duration_s, 3),
                           "contained": r.contained, "stdout_tail": r.stdout[-500:]}))
