"""Are diverse token orders the source of MDM's data efficiency? AR trained on k orders on the repetition grid.

The study notes (after Prabhudesai et al.) attribute diffusion's resistance to repetition to the many token
orders masking exposes the model to. The test: an AR model (``ar-k<k>``) trained on k fixed orders — left to
right plus k−1 random permutations, each step's target position given to the model so every order is a proper
factorisation — on the same U and epochs grid as plain AR and MDM. If orders are the source, more orders should
move AR's repetition curve toward MDM's: a smaller turn-up after its best epoch, a later best epoch.

All AR-family losses are exact left-to-right NLLs of the held-out plays (the one order every k shares); MDM's is
its ELBO bound. Per-sequence losses give 95 % bootstrap intervals and paired differences over the same sequences.
"""

from __future__ import annotations

import json
from pathlib import Path

from carelab.diffusion.objectives import parse_objective


def objectives_for(orders: list[int], references: list[str]) -> list[str]:
    """The sweep's objectives: ``ar-k<k>`` for every k, then the references (``ar``, ``mdm``)."""
    return [f"ar-k{k}" for k in orders] + [r for r in references if r not in {f"ar-k{k}" for k in orders}]


def per_sequence_losses(sweep_dir: Path, rows: list[dict], show_progress: bool = True,
                        skip: frozenset[str] = frozenset()) -> dict[str, list[float]]:
    """Validation loss of every finished run on each validation sequence, cached in ``val_per_sequence.jsonl``.

    Runs of the objectives in ``skip`` are not re-evaluated when the sweep did not save their losses (MDM's
    32-sample ELBO is the costly one); the report then shows their mean without an interval.
    """
    from rich.progress import Progress

    from carelab.diffusion.corpus import CorpusConfig, build_corpus
    from carelab.diffusion.model import load_run_model
    from carelab.diffusion.objectives import evaluate_per_sequence
    from carelab.diffusion.sweep import SweepConfig, val_rows
    from carelab.runs import JsonlAppender, read_json, read_jsonl

    cache_path = sweep_dir / "val_per_sequence.jsonl"
    cache = JsonlAppender(cache_path, key="id")
    for r in rows:  # written by the sweep itself at the end of each run
        saved = sweep_dir / "runs" / r["id"] / "val_per_sequence.json"
        if r["id"] not in cache and saved.exists():
            cache.write({"id": r["id"], "losses": json.loads(saved.read_text())})
    todo = [r for r in rows if r["id"] not in cache and r["objective"] not in skip]
    if todo:
        raw = read_json(sweep_dir / "config.json")
        cfg = SweepConfig(**{**raw, "corpus": CorpusConfig(**raw["corpus"])})
        vrows = val_rows(build_corpus(cfg.corpus), cfg)
        with Progress(disable=not show_progress) as progress:
            for r in progress.track(todo, description="per-sequence validation losses"):
                model = load_run_model(sweep_dir / "runs" / r["id"])
                losses = evaluate_per_sequence(r["objective"], model, vrows, n_t=cfg.final_t_samples, seed=cfg.seed)
                cache.write({"id": r["id"], "losses": losses.tolist()})
    return {r["id"]: r["losses"] for _, r in read_jsonl(cache_path, skip_invalid=True)}


def grid_ids(config: dict) -> list[str]:
    """Run ids of the grid a sweep's ``config.json`` names (objective × size × U × epochs)."""
    from carelab.diffusion.sweep import RunSpec

    return [RunSpec(o, s, u, e).run_id for o in config.get("objectives", []) for s in config.get("model_sizes", [])
            for u in config.get("unique_tokens", []) for e in config.get("epochs", [])]


def missing_cells(config: dict, rows: list[dict]) -> list[str]:
    """Run ids of the configured grid with no finished run, so a partial grid's report names its gaps."""
    done = {r["id"] for r in rows}
    return [run_id for run_id in grid_ids(config) if run_id not in done]


def _label(objective: str) -> str:
    kind, k = parse_objective(objective)
    return {"ar": "AR (left to right)", "mdm": "MDM"}.get(kind, f"AR, {k} order{'s' if k > 1 else ''}")


def _sort_key(objective: str) -> tuple[int, int]:
    kind, k = parse_objective(objective)
    return ({"ar": 0, "ordered": 1, "mdm": 2}[kind], k)


def write_orders_report(sweep_dir, out_dir=None, bootstrap: int = 2000, show_progress: bool = True,
                        skip: frozenset[str] = frozenset()) -> dict:
    """Tables (loss by epochs with CIs, turn-up after the best epoch, k orders vs one), plot and ``report.md``."""
    from carelab.diffusion.scaling import COLORS, load_results
    from carelab.report import markdown_table, new_figure, save_figure, write_csv
    from carelab.stats import Estimate, bootstrap_ci, paired_difference_ci

    sweep_dir = Path(sweep_dir)
    out = Path(out_dir) if out_dir else sweep_dir / "orders-report"
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = sweep_dir / "config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    in_grid = set(grid_ids(config))
    # the report covers the grid the command names; other runs in the folder (a longer or wider grid) stay out
    rows = [r for r in load_results(sweep_dir) if not in_grid or r["id"] in in_grid]
    losses = per_sequence_losses(sweep_dir, rows, show_progress, skip)
    mean_of = {r["id"]: r["val_loss"] for r in rows}
    B = bootstrap

    def one(run_id: str) -> Estimate:  # the run's loss with its interval (none without per-sequence losses)
        return bootstrap_ci(losses[run_id], B) if run_id in losses else Estimate(mean_of[run_id], None, None, 0)

    def paired(a: str, b: str) -> Estimate:
        if a in losses and b in losses:
            return paired_difference_ci(losses[a], losses[b], B)
        return Estimate(mean_of[a] - mean_of[b], None, None, 0)

    ci = lambda e: f"{e.mean:.3f} " + (f"[{e.lo:.3f}, {e.hi:.3f}]" if e.n else "(no CI)")  # noqa: E731
    dci = lambda e: f"{e.mean:+.3f} " + (f"[{e.lo:+.3f}, {e.hi:+.3f}]" if e.n else "(no CI)")  # noqa: E731
    groups: dict[tuple[str, str, int], dict[int, dict]] = {}
    for r in rows:
        groups.setdefault((r["objective"], r["size"], r["unique_tokens"]), {})[r["epochs"]] = r
    keys = sorted(groups, key=lambda g: (g[1], g[2], _sort_key(g[0])))
    missing = missing_cells(config, rows)
    epochs_all = sorted({r["epochs"] for r in rows} | set(config.get("epochs", [])))

    loss_rows, curve_rows, csv_rows = [], [], []
    for key in keys:
        obj, size, U = key
        by_e = groups[key]
        row = {"objective": _label(obj), "id": obj, "size": size, "U": f"{U:,}"}
        for e in epochs_all:
            if e in by_e:
                est = one(by_e[e]["id"])
                row[f"E={e}"] = f"{est.mean:.3f}"
                csv_rows.append({"objective": obj, "size": size, "unique_tokens": U, "epochs": e, "n": est.n,
                                 "val_loss": est.mean, "ci_lo": est.lo, "ci_hi": est.hi,
                                 "train_loss": by_e[e].get("train_loss")})
            else:
                row[f"E={e}"] = None
        loss_rows.append(row)
        es = sorted(by_e)
        best_e = min(es, key=lambda e: by_e[e]["val_loss"])
        last = es[-1]
        up = paired(by_e[last]["id"], by_e[best_e]["id"])
        tail = paired(by_e[last]["id"], by_e[es[-2]]["id"]) if len(es) > 1 else None
        # fixed column names: objectives whose largest finished E differs share one table (a partial grid)
        curve_rows.append({
            "objective": _label(obj), "size": size, "U": f"{U:,}", "best E": best_e,
            "best val [95% CI]": ci(one(by_e[best_e]["id"])), "E_max": last,
            "turn-up L(E_max) − L(best) [95% CI]": dci(up) if best_e != last else None,
            "previous E": es[-2] if len(es) > 1 else None,
            "last step L(E_max) − L(previous E) [95% CI]": dci(tail) if tail else None,
            "train loss at E_max": by_e[last].get("train_loss"),
        })

    diff_rows, exposure_rows = [], []
    for size, U in sorted({(k[1], k[2]) for k in keys}):
        objs = [k[0] for k in keys if k[1] == size and k[2] == U]
        base = "ar-k1" if "ar-k1" in objs else ("ar" if "ar" in objs else None)
        if base is None:
            continue
        for obj in objs:
            if obj == base:
                continue
            row = {"comparison": f"{_label(obj)} − {_label(base)}", "size": size, "U": f"{U:,}"}
            for e in epochs_all:
                a, b = groups[(obj, size, U)].get(e), groups[(base, size, U)].get(e)
                row[f"E={e}"] = dci(paired(a["id"], b["id"])) if a is not None and b is not None else None
            diff_rows.append(row)
        # k orders at E vs one order at E/k: each row draws one of k orders, so both saw the left-to-right order
        # equally often; < 0 means the other orders added something beyond diluting it (not only a slower clock)
        one_order = groups.get(("ar-k1", size, U), {})
        for obj in objs:
            kind, k = parse_objective(obj)
            if kind != "ordered" or k < 2:
                continue
            for e, r in sorted(groups[(obj, size, U)].items()):
                if e % k == 0 and e // k in one_order:
                    exposure_rows.append({
                        "comparison": f"{_label(obj)} at E={e} − AR, 1 order at E={e // k}", "size": size,
                        "U": f"{U:,}", "difference [95% CI]": dci(paired(r["id"], one_order[e // k]["id"])),
                    })
    write_csv(out / "orders.csv", csv_rows,
              ["objective", "size", "unique_tokens", "epochs", "n", "val_loss", "ci_lo", "ci_hi", "train_loss"])

    new_figure()
    import matplotlib.pyplot as plt

    plt.close("all")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    ordered = [k for k in keys if parse_objective(k[0])[0] == "ordered"]
    for key in keys:
        obj = key[0]
        kind, k = parse_objective(obj)
        color = COLORS.get(kind) or plt.cm.Greens(
            0.45 + 0.5 * ordered.index(key) / max(1, len(ordered) - 1))
        es = sorted(groups[key])
        ests = [one(groups[key][e]["id"]) for e in es]
        means = [x.mean for x in ests]
        label = f"{_label(obj)} ({key[1]}, U={key[2] / 1e3:.0f}K)"
        style = "--" if kind == "ar" else "-"
        axes[0].plot(es, means, style, marker="o", color=color, label=label)
        axes[0].fill_between(es, [x.mean if x.lo is None else x.lo for x in ests],
                             [x.mean if x.hi is None else x.hi for x in ests], color=color, alpha=0.15)
        axes[1].plot(es, [m - min(means) for m in means], style, marker="o", color=color, label=label)
        if kind != "mdm":  # each of k orders gets E/k of the passes: does k only slow the clock?
            axes[2].plot([e / max(k, 1) for e in es], means, style, marker="o", color=color, label=label)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("epochs over the U unique tokens")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation loss (nats/byte; AR family: exact L→R NLL, MDM: ELBO)")
    axes[0].set_title("validation loss (95 % CI over sequences)")
    axes[1].set_ylabel("loss above the curve's own best")
    axes[1].set_title("repetition curve shape: turn-up after the best epoch")
    axes[2].set_xlabel("passes in the left-to-right order (E / k)")
    axes[2].set_ylabel("left-to-right validation loss (nats/byte)")
    axes[2].set_title("AR family at equal left-to-right exposure")
    axes[0].legend(fontsize=7)
    save_figure(fig, out / "orders_val_loss.png")

    cfg_text = cfg_path.read_text() if cfg_path.exists() else "{}"
    gaps = (f"**Missing cells** ({len(missing)} of the configured grid have no finished run; their entries show "
            f"–): {', '.join(missing)}.\n" if missing else "All cells of the configured grid finished.\n")
    n_seq = len(next(iter(losses.values()))) if losses else 0
    md = [
        f"# AR over k token orders vs plain AR vs MDM on the repetition grid ({sweep_dir})\n",
        f"{len(rows)} finished runs. Validation: {n_seq} held-out sequences; AR family = exact left-to-right NLL "
        "(ordered AR models are scored in the left-to-right order, one of their k), MDM = Monte-Carlo ELBO bound. "
        f"Intervals: 95 % percentile bootstrap over the validation sequences ({B} resamples); differences are "
        "paired over the same sequences. Units: nats per token.\n", gaps,
        "## Validation loss by epochs\n", markdown_table(loss_rows, digits=3),
        "\n## Shape of each repetition curve\n", markdown_table(curve_rows, digits=3),
        "\nturn-up > 0: the loss rose after the best epoch (over-fitting); – : the best epoch is the largest run, "
        "no turn-up within the grid. Last step < 0: still improving at the largest epoch count.\n",
        "## k orders minus one order, same epochs (paired over sequences; < 0 = more orders better)\n",
        markdown_table(diff_rows) if diff_rows else "(no one-order baseline in this sweep)\n",
        "\n## k orders at E minus one order at E/k: the same number of passes in the left-to-right order\n",
        "Each training row draws one of the k orders, so over E epochs each order is seen about E/k times. "
        "< 0: the other orders helped beyond diluting the left-to-right one; ≈ 0: more orders only slowed the "
        "clock (the turn-up would then come k times later).\n",
        markdown_table(exposure_rows) if exposure_rows else "(no matching epoch pairs in this sweep)\n",
        "\n![validation loss vs epochs](orders_val_loss.png)\n",
        "## Sweep config\n", "```json\n" + cfg_text + "```\n",
    ]
    (out / "report.md").write_text("\n".join(md))
    return {"out": out, "rows": rows, "curves": curve_rows, "diffs": diff_rows, "exposure": exposure_rows,
            "missing": missing}

