"""Isolation ablation: the package's gradient-isolated world model against the coupled baseline it replaced.

Both variants train on the same episodes, from the same initial weights, with the same seed, optimiser and
number of steps; both are then measured by `wm_train.evaluate` (the functions behind `wm-eval`). The table
holds, per variant (mean ± std over seeds): final train and validation losses and their gap, open-loop pixel
MSE on validation episodes at horizons 1, 5, 10 and 30, and the action identifiability ratio.

    python benchmarks/isolation_ablation.py                    # records CarRacing-v3 itself; ~20 min, 2 CPU cores
    python benchmarks/isolation_ablation.py --data data/carracing
    python benchmarks/isolation_ablation.py --quick            # smoke test: tiny model, 1 seed, < 1 min

Timings include everything the script does (recording, training, evaluation) and depend on what else the
machine runs; the script prints them as measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wm_core.checkpoint import load_checkpoint
from wm_core.config import Config
from wm_core.losses import WorldModelOutput, gaussian_kl, reconstruction_loss
from wm_core.model import WorldModel
from wm_train.eval_report import HEADLINE_STEPS, EvalReport
from wm_train.evaluate import evaluate_model, write_report
from wm_train.trainer import Trainer

VARIANTS = ("isolated", "coupled")


@dataclass
class Args:
    data: str = field(default="", metadata={"help": "episode folder; empty: record --env into OUT/data"})
    env: str = field(default="CarRacing-v3", metadata={"help": "environment recorded when --data is empty"})
    episodes: int = field(default=40, metadata={"help": "episodes recorded"})
    steps: int = field(default=150, metadata={"help": "steps per recorded episode"})
    seeds: int = field(default=3, metadata={"help": "training seeds per variant (0 .. seeds-1)"})
    epochs: int = field(default=12, metadata={"help": "passes over the training frames, for both variants"})
    size: str = field(default="small", metadata={"help": "model preset (wm_core.config.MODEL_PRESETS)"})
    seq_len: int = field(
        default=8,
        metadata={"help": "frames per training window (8: twice the optimiser steps of 16 for the same frames)"},
    )
    batch_size: int = field(default=16, metadata={"help": "windows per optimiser step"})
    val_fraction: float = field(default=0.2, metadata={"help": "fraction of episodes held out for validation"})
    context: int = field(default=5, metadata={"help": "real frames observed before imagining"})
    horizon: int = field(default=30, metadata={"help": "steps imagined open loop"})
    max_sequences: int = field(default=64, metadata={"help": "evaluated sequences per split, at most"})
    workers: int = field(
        default=2,
        metadata={
            "help": "runs trained in parallel processes, one torch thread each "
            "(on a busy 2-core machine faster than one run on 2 threads)"
        },
    )
    out: str = field(default="runs/isolation_ablation", metadata={"help": "output folder"})
    quick: bool = field(default=False, metadata={"help": "smoke test: tiny model, 4 short episodes, 1 seed, 1 epoch"})


QUICK = dict(
    episodes=4,
    steps=24,
    seeds=1,
    epochs=1,
    size="tiny",
    seq_len=8,
    batch_size=4,
    val_fraction=0.25,
    context=3,
    horizon=5,
    max_sequences=8,
    workers=1,
)


class CoupledWorldModel(WorldModel):
    """The baseline gradient isolation replaced: one graph from pixels through the RSSM back to pixels.

    The RSSM reads posterior samples that are not detached; its KL to the posterior is not detached either, so it
    also trains the encoder; and the prior mean at t+1 is decoded and reconstructs x_t+1, so the pixel loss trains
    the RSSM, the decoder and, through the RSSM's inputs, the encoder. Same architecture and parameters as
    WorldModel: its checkpoints load as a WorldModel and are evaluated as one.
    """

    def forward(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        beta: float = 1.0,
        rssm_scale: float = 1.0,
        overshooting: int = 1,
        free_nats: float = 0.0,
        recon_change_weight: float = 0.0,
        rewards: torch.Tensor | None = None,
        continues: torch.Tensor | None = None,
    ):
        if overshooting != 1 or free_nats or recon_change_weight:
            raise ValueError(
                "the coupled baseline trains the seed's loss: overshooting must be 1, free_nats and "
                "recon_change_weight 0"
            )
        mean, std = self.encode(obs)
        z = mean + std * torch.randn_like(std)
        recon_loss = reconstruction_loss(self.decode(z), obs)
        kld = gaussian_kl(mean[:, 0], std[:, 0], torch.zeros_like(mean[:, 0]), torch.ones_like(std[:, 0])).mean()
        prior_mean, prior_std, hs = self.rssm.observe(z, actions, states=True)
        rssm_loss = gaussian_kl(mean[:, 1:], std[:, 1:], prior_mean, prior_std).mean()
        predicted = self.decode(prior_mean)  # [B, T-1, S] -> [B, T-1, C, H, W]
        prediction_loss = reconstruction_loss(predicted, obs[:, 1:])
        with torch.no_grad():
            one_step = (predicted - obs[:, 1:]).pow(2).mean()
        # The heads (model.heads) learn on detached features as in WorldModel, so that both variants' heads are
        # fitted alike for the closed-loop comparison.
        reward_loss, cont_loss = self.head_losses(hs, prior_mean, rewards, continues)
        loss = recon_loss + beta * kld + rssm_scale * (rssm_loss + prediction_loss) + reward_loss + cont_loss
        zero = torch.zeros((), device=obs.device)
        return WorldModelOutput(loss, recon_loss, kld, rssm_loss, one_step, zero, reward_loss, cont_loss)


def make_trainer(cfg: Config, variant: str) -> Trainer:
    """A Trainer for `variant`; the coupled one starts from the isolated one's initial weights."""
    trainer = Trainer(cfg, progress=False)
    if variant == "coupled":
        with torch.random.fork_rng(devices=[]):  # building it must not move the RNG both variants then share
            coupled = CoupledWorldModel(cfg.model)
        coupled.load_state_dict(trainer.model.state_dict())
        trainer.model = coupled.to(trainer.device)
        t = cfg.train
        trainer.optimizer = torch.optim.AdamW(coupled.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    return trainer


def run_config(args: Args, data: Path, action_mode: str, action_dim: int, variant: str, seed: int) -> Config:
    return Config.from_dict(
        {
            "data": {
                "path": str(data),
                "action_mode": action_mode,
                "seq_len": args.seq_len,
                "val_fraction": args.val_fraction,
            },
            "model": {"size": args.size, "action_dim": action_dim},
            "train": {
                "out_dir": str(Path(args.out) / "runs" / f"{variant}_seed{seed}"),
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "seed": seed,
                "threads": 1,
            },
        }
    )


def train_and_evaluate(job: tuple[Args, Config, str]) -> dict:
    """One run: train `variant` with `cfg`, evaluate its last checkpoint, write the wm-eval report beside it."""
    args, cfg, variant = job
    start = time.perf_counter()
    trainer = make_trainer(cfg, variant)
    history = trainer.fit()
    trained = time.perf_counter()
    model, _, extras = load_checkpoint(Path(cfg.train.out_dir) / "last.pt")  # a plain WorldModel either way
    report = evaluate_model(
        model,
        cfg,
        extras["action_codec"],
        {"train": trainer.train_set, "val": trainer.val_set},
        args.context,
        args.horizon,
        "val",
        args.max_sequences,
        seed=0,
        checkpoint=str(Path(cfg.train.out_dir) / "last.pt"),
        progress=False,
    )
    write_report(report, Path(cfg.train.out_dir) / "eval", overwrite=True)
    return dict(
        variant=variant,
        seed=cfg.train.seed,
        train_seconds=trained - start,
        seconds=time.perf_counter() - start,
        objective=dict(train=history[-1].train, val=history[-1].val),
        metrics=table_metrics(report),
        report=report.to_dict(),
    )


def table_metrics(report: EvalReport) -> dict[str, float | None]:
    """The numbers the table shows, from one wm-eval report (None: an MSE step beyond the horizon)."""
    train, val = report.splits["train"], report.splits["val"]
    ol_train, ol_val = float(np.mean(train.open_loop.pixel_mse)), float(np.mean(val.open_loop.pixel_mse))
    metrics: dict[str, float | None] = {
        "loss_train": train.losses["loss"],
        "loss_val": val.losses["loss"],
        "loss_gap_pct": 100 * report.gap["loss_relative"],
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


def prepare_data(args: Args) -> Path:
    """--data, or episodes recorded once into OUT/data (reused while the recording settings are the same)."""
    if args.data:
        return Path(args.data)
    from wm_train.collect import collect

    folder = Path(args.out) / "data"
    settings = dict(env=args.env, episodes=args.episodes, steps=args.steps, seed=0)
    marker = folder / ".complete.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return folder
    collect(args.env, folder, args.episodes, args.steps, seed=0, workers=max(1, args.workers))
    marker.write_text(json.dumps(settings))
    return folder


def action_space_of(data: Path) -> tuple[str, int]:
    """(action_mode, action_dim) of the episodes in `data`; a discrete width is the largest action + 1."""
    from wm_train.data import episode_paths

    actions = [np.load(p)["action"] for p in episode_paths(data)]
    if actions[0].dtype.kind in "iu":
        return "discrete", int(max(a.max() for a in actions)) + 1
    return "continuous", int(actions[0].shape[1])


def summarise(runs: list[dict]) -> dict[str, dict[str, list[float]]]:
    """variant -> metric -> [mean, std] over seeds (std 0 for one seed)."""
    summary = {}
    for variant in VARIANTS:
        rows = [r["metrics"] for r in runs if r["variant"] == variant]
        summary[variant] = {
            name: [float(np.mean([r[name] for r in rows])), float(np.std([r[name] for r in rows]))]
            for name in rows[0]
            if rows[0][name] is not None
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
)


def markdown(summary: dict, runs: list[dict], args: Args, data: Path, seconds: float) -> str:
    def table(columns) -> list[str]:
        rows = [f"| variant | {' | '.join(c[0] for c in columns)} |", "|---|" + "---|" * len(columns)]
        for v in VARIANTS:
            cells = [cell(v, name, digits) + unit for _, name, digits, unit in columns]
            rows.append(f"| {v} | {' | '.join(cells)} |")
        return rows

    def cell(variant: str, name: str, digits: int) -> str:
        if name not in summary[variant]:
            return "–"
        mean, std = summary[variant][name]
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if args.seeds > 1 else f"{mean:.{digits}f}"

    steps = [s for s in HEADLINE_STEPS if s <= args.horizon]
    open_loop_columns = [(f"MSE@{s}", f"mse@{s}", 4, "") for s in steps]
    open_loop_columns += [(f"repeat-last@{args.horizon}", "copy_last_val", 4, ""), *ACTION_COLUMNS]
    lines = [
        f"Data: {data} ({len(list(data.glob('*.npz')))} episodes; validation = {args.val_fraction:.0%} of them, "
        f"never trained on). Model preset `{args.size}`, {args.epochs} epochs, batch {args.batch_size} x "
        f"{args.seq_len} frames, {args.seeds} seed(s) per variant (mean ± std over seeds). Open loop: "
        f"{args.context} context frames, {args.horizon} imagined steps. Total time {seconds / 60:.1f} min.",
        "",
        "**Train vs validation** (teacher-forced losses of the isolated objective, evaluated on both splits with the "
        "final weights; gap = (val - train) / train)",
        "",
        *table(GAP_COLUMNS),
        "",
        "**Open loop on validation episodes** (pixel MSE per pixel at horizon step k; repeat-last = the last context "
        "frame repeated; action ratio = MSE with true / with shuffled actions over the horizon, 1 = actions ignored)",
        "",
        *table(open_loop_columns),
        "",
        "**The claims, side by side** (isolated vs coupled, mean over seeds; how many seeds favour isolation)",
        "",
        *claim_lines(runs, args.seeds, steps[-1]),
        "",
        "**Per seed** (isolated / coupled)",
        "",
        "| seed | rssm gap % | open-loop gap % | MSE@last | action ratio | run minutes |",
        "|---|---|---|---|---|---|",
    ]
    per_seed = (
        ("rssm_gap_pct", ".1f"),
        ("open_loop_gap_pct", ".1f"),
        (f"mse@{steps[-1]}", ".4f"),
        ("ratio_shuffled", ".3f"),
    )
    for seed in range(args.seeds):
        pair = {r["variant"]: r for r in runs if r["seed"] == seed}
        cells = [" / ".join(f"{pair[v]['metrics'][name]:{fmt}}" for v in VARIANTS) for name, fmt in per_seed]
        cells.append(" / ".join(f"{pair[v]['seconds'] / 60:.1f}" for v in VARIANTS))
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# (claim, metric, what the metric is); lower is better for every one, gaps count by their size
CLAIMS = (
    ("validation tracks training", "rssm_gap_pct", "|rssm_loss gap| (val - train) / train, %"),
    ("validation tracks training", "loss_gap_pct", "|loss gap| (val - train) / train, %"),
    ("rollouts stay stable", "mse@{last}", "validation pixel MSE at the last horizon step"),
    ("rollouts stay stable", "vs_copy_last_val", "that MSE / the repeat-last-frame MSE (< 1: better than no model)"),
    ("actions are identifiable", "ratio_shuffled", "pixel MSE with true / with shuffled actions (< 1: uses them)"),
    ("actions are identifiable", "latent_ratio_shuffled", "the same ratio on latents"),
)


def claim_lines(runs: list[dict], seeds: int, last_step: int) -> list[str]:
    """One line per claim metric: both variants' means and the seeds on which isolation scores lower."""
    lines = []
    for claim, metric, meaning in CLAIMS:
        metric = metric.format(last=last_step)
        size = abs if metric.endswith("_gap_pct") else float
        values = {v: {r["seed"]: size(r["metrics"][metric]) for r in runs if r["variant"] == v} for v in VARIANTS}
        wins = sum(values["isolated"][s] < values["coupled"][s] for s in values["isolated"])
        means = [float(np.mean(list(values[v].values()))) for v in VARIANTS]
        lines.append(f"- {claim}: {meaning}: {means[0]:.4g} vs {means[1]:.4g}; isolation lower on {wins}/{seeds} seeds")
    return lines


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Args):
        name = f"--{f.name.replace('_', '-')}"
        annotation = str(f.type)  # a string: this module postpones annotations (from __future__)
        if annotation == "bool":
            parser.add_argument(name, action="store_true", default=None, help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float, "str": str}[annotation]
            parser.add_argument(name, type=kind, default=None, help=f"{f.metadata['help']} (default: {f.default})")
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    if given.get("quick"):  # quick replaces the defaults only: a flag given explicitly still wins
        given = {**QUICK, "out": "runs/isolation_ablation_quick", **given}
    return Args(**given)


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args)
    recorded = time.perf_counter()
    action_mode, action_dim = action_space_of(data)
    jobs = [
        (args, run_config(args, data, action_mode, action_dim, v, seed), v)
        for seed in range(args.seeds)
        for v in VARIANTS
    ]
    for _, cfg, _ in jobs:  # a run folder from an earlier invocation would make the Trainer refuse to start
        for name in ("last.pt", "best.pt", "metrics.jsonl"):
            (Path(cfg.train.out_dir) / name).unlink(missing_ok=True)
    print(f"data ready in {recorded - start:.0f} s: {data}; {len(jobs)} runs on {args.workers} worker(s)", flush=True)
    runs = []
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for run in pool.map(train_and_evaluate, jobs):
                runs.append(run)
                print(f"{run['variant']} seed {run['seed']}: {run['seconds']:.0f} s", flush=True)
    else:
        for job in jobs:
            runs.append(train_and_evaluate(job))
            print(f"{runs[-1]['variant']} seed {runs[-1]['seed']}: {runs[-1]['seconds']:.0f} s", flush=True)
    seconds = time.perf_counter() - start
    summary = summarise(runs)
    table = markdown(summary, runs, args, data, seconds)
    (out / "results.md").write_text(table)
    results = dict(
        args=dataclasses.asdict(args),
        data=str(data),
        seconds=seconds,
        record_seconds=recorded - start,
        cpu_count=os.cpu_count(),
        summary=summary,
        runs=runs,
    )
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table)
    print(f"wrote {out / 'results.md'} and {out / 'results.json'} in {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
