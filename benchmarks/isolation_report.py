"""The isolation ablation's report: the numbers of each run, their summary over seeds, the markdown table, the
study's targets checked against them, and the open-loop MSE-vs-horizon plot. The runs themselves are trained
and evaluated by benchmarks/isolation_ablation.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wm_train.eval_report import HEADLINE_STEPS, EvalReport

from report import markdown_table, new_axes, save_figure

VARIANTS = ("isolated", "overshooting", "coupled")
ISOLATED_VARIANTS = ("isolated", "overshooting")


def label(variant: str, overshooting: int) -> str:
    """How tables and plots name a variant."""
    return f"isolated + overshooting K={overshooting}" if variant == "overshooting" else variant


def table_metrics(report: EvalReport) -> dict[str, float | None]:
    """The numbers the table shows, from one wm-eval report (None: an MSE step beyond the horizon)."""
    train, val = report.splits["train"], report.splits["val"]
    ol_train, ol_val = float(np.mean(train.open_loop.pixel_mse)), float(np.mean(val.open_loop.pixel_mse))
    loss_train, loss_val = world_model_loss(train.losses), world_model_loss(val.losses)
    metrics: dict[str, float | None] = {
        "loss_train": loss_train,
        "loss_val": loss_val,
        "loss_gap_pct": 100 * (loss_val - loss_train) / abs(loss_train),
        "rssm_train": train.losses["rssm_loss"],
        "rssm_val": val.losses["rssm_loss"],
        "rssm_gap_pct": 100 * report.gap["rssm_loss_relative"],
        "open_loop_train": ol_train,
        "open_loop_val": ol_val,
        "open_loop_gap_pct": 100 * (ol_val - ol_train) / ol_train,
        "recon_val": val.open_loop.recon_mse,
        "copy_last_val": val.open_loop.copy_last_mse[-1],
        "growth_val": val.open_loop.growth,
        "vs_copy_last_val": val.open_loop.vs_copy_last,
        "ratio_shuffled": val.actions.ratio_shuffled,
        "ratio_random": val.actions.ratio_random,
        "latent_ratio_shuffled": val.actions.latent_ratio_shuffled,
        "spread": val.actions.spread_mean,
    }
    for step in HEADLINE_STEPS:
        metrics[f"mse@{step}"] = report.pixel_mse_at("val", step)
    return metrics


def world_model_loss(losses: dict[str, float]) -> float:
    """The loss without the reward and continuation heads' terms (trained for the closed-loop column only), so
    the loss columns mean the same with and without them."""
    return losses["loss"] - losses.get("reward_loss", 0.0) - losses.get("cont_loss", 0.0)


def summarise(runs: list[dict]) -> dict[str, dict[str, list[float]]]:
    """variant -> metric -> [mean, std] over seeds (std 0 for one seed); metrics None in a run are left out."""
    summary = {}
    for variant in VARIANTS:
        rows = [r["metrics"] for r in runs if r["variant"] == variant]
        summary[variant] = {
            name: [float(np.mean([r[name] for r in rows])), float(np.std([r[name] for r in rows]))]
            for name in rows[0]
            if all(r[name] is not None for r in rows)
        }
    return summary


# Table columns: (header, metric, digits, unit)
GAP_COLUMNS = (
    ("loss train", "loss_train", 1, ""),
    ("loss val", "loss_val", 1, ""),
    ("gap", "loss_gap_pct", 1, "%"),
    ("rssm_loss train", "rssm_train", 2, ""),
    ("rssm_loss val", "rssm_val", 2, ""),
    ("gap", "rssm_gap_pct", 1, "%"),
    ("open-loop MSE train", "open_loop_train", 4, ""),
    ("open-loop MSE val", "open_loop_val", 4, ""),
    ("gap", "open_loop_gap_pct", 1, "%"),
)
ACTION_COLUMNS = (
    ("reconstruction", "recon_val", 4, ""),
    ("action ratio (shuffled)", "ratio_shuffled", 3, ""),
    ("(random)", "ratio_random", 3, ""),
    ("latent ratio (shuffled)", "latent_ratio_shuffled", 3, ""),
    ("spread", "spread", 3, ""),
    ("closed-loop return", "closed_loop_return", 1, ""),
)


def markdown(results: dict) -> str:
    """The whole report of one invocation (one environment and regime) as markdown."""
    args, summary, runs = results["args"], results["summary"], results["runs"]
    seeds, K = args["seeds"], args["overshooting"]

    def table(columns) -> list[str]:
        header = [{"name": "variant"}] + [{"name": c[0]} for c in columns]
        rows = [[label(v, K)] + [cell(v, name, digits) + unit for _, name, digits, unit in columns] for v in VARIANTS]
        return markdown_table(header, rows).splitlines()

    def cell(variant: str, name: str, digits: int) -> str:
        if name not in summary[variant]:
            return "–"
        mean, std = summary[variant][name]
        digits = max(digits, enough_digits(name))
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if seeds > 1 else f"{mean:.{digits}f}"

    def enough_digits(name: str) -> int:
        """Decimals that show the column's smallest mean to 2 significant digits (Pong's pixel MSEs are ~4e-4,
        where CarRacing's 4 decimals would hide every difference)."""
        means = [abs(summary[v][name][0]) for v in VARIANTS if name in summary[v] and summary[v][name][0]]
        return 1 - int(np.floor(np.log10(min(means)))) if means else 0

    steps = [s for s in HEADLINE_STEPS if s <= args["horizon"]]
    open_loop_columns = [(f"MSE@{s}", f"mse@{s}", 4, "") for s in steps]
    open_loop_columns += [(f"repeat-last@{args['horizon']}", "copy_last_val", 4, ""), *ACTION_COLUMNS]
    lines = [
        f"{args['env']}, regime `{args['regime']}`. Data: {results['data']} ({results['episodes']} episodes of at "
        f"most {args['steps']} frames; {results['val_episodes']} held out for validation, never trained on; the "
        f"split depends on the seed). Model preset `{args['size']}`, {args['epochs']} epochs = "
        f"{results['optimiser_steps']} optimiser steps of {args['batch_size']} x {args['seq_len']} frames, "
        f"{seeds} seed(s) per variant (mean ± std over seeds). Open loop: {args['context']} context frames, "
        f"{args['horizon']} imagined steps. Total time {results['seconds'] / 60:.1f} min on "
        f"{results['cpu_count']} CPU(s), {args['workers']} worker(s).",
        "",
        "**Train vs validation** (teacher-forced losses of the one-step isolated objective, the same for every "
        "variant, evaluated on both splits with the final weights; gap = (val - train) / train)",
        "",
        *table(GAP_COLUMNS),
        "",
        "**Open loop on validation episodes** (pixel MSE per pixel at horizon step k; repeat-last = the last context "
        "frame repeated; action ratio = MSE with true / with shuffled actions over the horizon, 1 = actions "
        "ignored; closed-loop return: " + closed_loop_note(results) + ")",
        "",
        *table(open_loop_columns),
        "",
        f"Plot: `{results['plot']}` (validation pixel MSE against horizon step, mean ± std over seeds)."
        if results.get("plot")
        else "Plot: not drawn (matplotlib missing).",
        "",
        "**Targets** (means over seeds; in brackets: on how many seeds the comparison holds)",
        "",
        *[f"- {t['text']}" for t in targets(results)],
        "",
        "**Per seed** (" + " / ".join(label(v, K) for v in VARIANTS) + ")",
        "",
    ]
    seed_columns = ["seed", "loss gap %", "rssm gap %", "open-loop gap %", "MSE@last", "action ratio", "run minutes"]
    per_seed = (
        ("loss_gap_pct", ".1f"),
        ("rssm_gap_pct", ".1f"),
        ("open_loop_gap_pct", ".1f"),
        (f"mse@{steps[-1]}", ""),
        ("ratio_shuffled", ".3f"),
    )
    seed_rows = []
    for seed in range(seeds):
        row = {r["variant"]: r for r in runs if r["seed"] == seed}
        cells = [" / ".join(number(row[v]["metrics"][name], fmt) for v in VARIANTS) for name, fmt in per_seed]
        cells.append(" / ".join(f"{row[v]['seconds'] / 60:.1f}" for v in VARIANTS))
        seed_rows.append([str(seed), *cells])
    lines.append(markdown_table([{"name": name} for name in seed_columns], seed_rows))
    return "\n".join(lines) + "\n"


def number(value: float, fmt: str) -> str:
    """`value` in format `fmt`; an empty fmt: 3 significant digits in fixed point (0.0144, 0.000467)."""
    if fmt:
        return f"{value:{fmt}}"
    decimals = max(0, 2 - int(np.floor(np.log10(abs(value))))) if value else 0
    return f"{value:.{decimals}f}"


def closed_loop_note(results: dict) -> str:
    args = results["args"]
    if not args["closed_loop_episodes"]:
        return "not measured (--closed-loop-episodes 0)"
    references = ", ".join(f"{name} {value:.1f}" for name, value in results.get("closed_loop_references", {}).items())
    return (
        f"mean return of wm_deploy's planner at its default settings over {args['closed_loop_episodes']} episodes "
        f"of {args['closed_loop_steps']} steps, seeds from 100; on the same episodes: {references}"
    )


def _per_seed(runs: list[dict], variant: str, metric: str, by_size: bool) -> dict[int, float]:
    """seed -> the metric of `variant` (its absolute value with `by_size`: a gap counts by its size)."""
    return {
        r["seed"]: abs(r["metrics"][metric]) if by_size else r["metrics"][metric]
        for r in runs
        if r["variant"] == variant
    }


def _compare(runs: list[dict], better: str, worse: str, metric: str, by_size: bool) -> tuple[float, float, int, int]:
    """(mean of `better`, mean of `worse`, seeds on which `better` is lower, seeds) on `metric`."""
    a, b = _per_seed(runs, better, metric, by_size), _per_seed(runs, worse, metric, by_size)
    return float(np.mean(list(a.values()))), float(np.mean(list(b.values()))), sum(a[s] < b[s] for s in a), len(a)


def targets(results: dict) -> list[dict]:
    """The study's targets for this regime, each {name, met, text}; met compares means over seeds. Budget:
    isolated + overshooting below coupled on MSE@30 and on the action ratio, and its validation loss still below
    coupled's. Small data: each isolated variant's validation gap (of the loss, and of the open-loop MSE) smaller
    in size than coupled's."""
    runs, K = results["runs"], results["args"]["overshooting"]
    last = max(s for s in HEADLINE_STEPS if s <= results["args"]["horizon"])
    if results["args"]["regime"] == "budget":
        checks = [
            ("overshooting beats coupled on MSE@{last}", "overshooting", f"mse@{last}", False, ""),
            (
                "overshooting beats coupled on the action ratio (true/shuffled)",
                "overshooting",
                "ratio_shuffled",
                False,
                ".3f",
            ),
            ("overshooting keeps a lower validation loss than coupled", "overshooting", "loss_val", False, ".1f"),
        ]
    else:
        checks = [
            (f"{v} has a smaller validation gap than coupled ({what})", v, metric, True, ".1f")
            for v in ISOLATED_VARIANTS
            for what, metric in (("loss, |gap| %", "loss_gap_pct"), ("open-loop MSE, |gap| %", "open_loop_gap_pct"))
        ]
    found = []
    for name, variant, metric, by_size, fmt in checks:
        name = name.format(last=last).replace("overshooting", label("overshooting", K), 1)
        ours, coupled, wins, seeds = _compare(runs, variant, "coupled", metric, by_size)
        met = ours < coupled
        verdict = "met" if met else "NOT met"
        text = f"{name}: {verdict}, {number(ours, fmt)} vs {number(coupled, fmt)} ({wins}/{seeds} seeds)"
        found.append(dict(name=name, met=met, ours=ours, coupled=coupled, wins=wins, seeds=seeds, text=text))
    return found


def plot_open_loop(results: dict, path: Path) -> Path | None:
    """Validation pixel MSE against horizon step per variant (mean ± std over seeds), with repeat-last-frame as
    the no-dynamics reference; None where matplotlib is missing (the tables do not need it)."""
    try:
        figure, axes = new_axes((6.4, 4.2))
    except ImportError:
        return None
    runs, K = results["runs"], results["args"]["overshooting"]
    for variant in VARIANTS:
        curves = np.array([r["open_loop_val"] for r in runs if r["variant"] == variant])  # [seeds, horizon]
        steps = np.arange(1, curves.shape[1] + 1)
        mean, std = curves.mean(0), curves.std(0)
        axes.plot(steps, mean, label=label(variant, K))
        axes.fill_between(steps, mean - std, mean + std, alpha=0.2)
    copy_last = np.array([r["copy_last_val"] for r in runs]).mean(0)
    axes.plot(np.arange(1, len(copy_last) + 1), copy_last, "k--", label="repeat last context frame")
    axes.set_xlabel("open-loop step")
    axes.set_ylabel("validation pixel MSE")
    axes.set_title(f"{results['args']['env']}, {results['args']['regime']}: {results['args']['seeds']} seed(s)")
    axes.legend()
    return save_figure(figure, path, dpi=110)
