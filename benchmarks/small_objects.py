"""Small objects: does each anti-collapse option make the latents keep a 3x3 dot on a white background?

Generates the dot scene of wm_train.scenes (the dot moved by 2-d actions; its position and pixel mask stored in
each episode), trains one run per option from the same seed and initial weights, and measures on the
validation episodes: reconstruction error (decoded posterior mean) inside the dot's pixels and elsewhere, the
probe R² for the dot's position (wm_train.probe), posterior collapse (wm_train.collapse), the action ratio
true/shuffled and the open-loop MSE at step 10 (wm-eval's functions).

    python benchmarks/small_objects.py --device cuda --workers 5 \
        --options "plain loss,free_nats=0.5,beta=0,recon_change_weight=20,default"
    python benchmarks/small_objects.py --quick         # smoke test, < 1 min
    python benchmarks/small_objects.py --device cuda --workers 5 --results docs/results/small_objects.json

The defaults of Args (400 episodes, 20 epochs = 5,000 optimiser steps per run) are the setting the results in
docs/evaluation.md ("Small objects") were measured at; with a much smaller budget no option keeps the dot. Five
runs side by side take minutes on one H100; on 2 CPU cores each run takes tens of minutes.

Drawing white where the dot is costs an error of 0.52 per pixel inside it: the "dot MSE" of a model that
ignores the dot. Timings depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wm_core.config import Config
from wm_core.losses import PLAIN_LOSS
from wm_train.data import to_batch
from wm_train.evaluate import evaluate_model
from wm_train.probe import fit_probe
from wm_train.scenes import write_dot_episodes
from wm_train.trainer import Trainer

from report import environment, markdown_table, save_results

PLAIN = dataclasses.asdict(PLAIN_LOSS)
# option name -> train-config overrides. "plain loss" is the original design's loss (PLAIN_LOSS); each option
# adds one anti-collapse setting to it; "default" is today's defaults (free_nats=0.5 and recon_change_weight=20).
OPTIONS: dict[str, dict[str, Any]] = {
    "plain loss": PLAIN,
    "free_nats=0.5": {**PLAIN, "free_nats": 0.5},
    "kl_warmup_steps=400": {**PLAIN, "kl_warmup_steps": 400},
    "beta=0.1": {**PLAIN, "beta": 0.1},
    "recon_change_weight=20": {**PLAIN, "recon_change_weight": 20.0},
    "default": {},
    "default + kl_warmup_steps=400": {"kl_warmup_steps": 400},
    "recon_change_weight=200": {**PLAIN, "recon_change_weight": 200.0},
    # Diagnostic: no KL at all (can this encoder and budget see the dot?)
    "beta=0": {**PLAIN, "beta": 0.0},
}


@dataclass
class Args:
    episodes: int = field(default=400, metadata={"help": "dot episodes generated"})
    steps: int = field(default=100, metadata={"help": "frames per episode"})
    epochs: int = field(default=20, metadata={"help": "passes over the training frames"})
    size: str = field(default="small", metadata={"help": "model preset"})
    seed: int = field(default=0, metadata={"help": "training seed (the same for every option)"})
    options: str = field(default=",".join(OPTIONS), metadata={"help": "comma-separated names of OPTIONS"})
    workers: int = field(default=2, metadata={"help": "runs in parallel processes, one torch thread each"})
    device: str = field(default="cpu", metadata={"help": "where the runs train: cpu, cuda or auto (measurements: cpu)"})
    out: str = field(default="runs/small_objects", metadata={"help": "output folder"})
    quick: bool = field(default=False, metadata={"help": "smoke test: tiny model, few frames, 1 epoch"})
    results: str = field(default="", metadata={"help": "also write the table as a results file here (docs/results/)"})


QUICK: dict[str, Any] = dict(episodes=6, steps=32, epochs=1, size="tiny", workers=1)


def run_config(args: Args, data: Path, option: str) -> Config:
    return Config.from_dict(
        {
            "data": {"path": str(data), "action_mode": "continuous", "seq_len": 8, "val_fraction": 0.2},
            "model": {"size": args.size, "action_dim": 2},
            "train": {
                "out_dir": str(Path(args.out) / "runs" / option.replace("=", "_").replace(" ", "_")),
                "epochs": args.epochs,
                "batch_size": 16,
                "seed": args.seed,
                "threads": 1,
                "device": args.device,
                **OPTIONS[option],
            },
        }
    )


@torch.no_grad()
def dot_errors(trainer: Trainer, data: Path) -> tuple[float, float]:
    """Per-pixel squared error of the decoded posterior mean on the validation frames: inside the dot, elsewhere."""
    model, inside, outside = trainer.model.eval(), [0.0, 0], [0.0, 0]
    for obs, actions in zip(trainer.val_set.obs, trainer.val_set.actions):
        mask = torch.from_numpy(_mask_of(data, obs))  # [T, H, W]
        frames, _ = to_batch([(obs, actions)], trainer.codec)
        mean, _ = model.encode(frames)
        error = (model.decode(mean) - frames).pow(2).mean(2)[0]  # [1, T, C, H, W] -> [T, H, W]
        inside[0] += float(error[mask].sum())
        inside[1] += int(mask.sum())
        outside[0] += float(error[~mask].sum())
        outside[1] += int((~mask).sum())
    return inside[0] / inside[1], outside[0] / outside[1]


def _mask_of(data: Path, obs: Any) -> np.ndarray:
    """The stored mask of the episode whose frames are `obs` (episodes are told apart by their frames)."""
    masks = _masks_by_frames(data)
    key = hashlib.sha1(np.asarray(obs).tobytes()).hexdigest()
    if key not in masks:
        raise AssertionError("validation episode not found in the data folder")
    return masks[key]


@functools.cache
def _masks_by_frames(data: Path) -> dict[str, np.ndarray]:
    """Every episode's mask, keyed by a hash of its frames (read once per process)."""
    masks = {}
    for path in sorted(data.glob("*.npz")):
        with np.load(path) as episode:
            masks[hashlib.sha1(episode["obs"].tobytes()).hexdigest()] = episode["mask"]
    return masks


def run(job: tuple[Args, Path, str]) -> dict:
    args, data, option = job
    start = time.perf_counter()
    cfg = run_config(args, data, option)
    trainer = Trainer(cfg, progress=False)
    history = trainer.fit()
    trained = time.perf_counter() - start
    trainer.model.cpu()  # the measurements below run on the CPU
    inside, outside = dot_errors(trainer, data)
    trainer.train_set, trainer.val_set, _ = _with_position(cfg)
    probe = fit_probe(trainer.model, trainer.codec, trainer.train_set, trainer.val_set, "position")
    report = evaluate_model(
        trainer.model,
        cfg,
        trainer.codec,
        {"train": trainer.train_set, "val": trainer.val_set},
        context=5,
        horizon=10,
        max_sequences=32,
        progress=False,
    )
    val = report.splits["val"]
    return dict(
        option=option,
        train_seconds=trained,
        dot_mse=inside,
        background_mse=outside,
        position_r2=probe.r2,
        position_r2_train=probe.train_r2,
        position_r2_z=probe.z_r2,
        active_dims=val.latents.active_dims,
        latent_dim=val.latents.latent_dim,
        collapsed=val.latents.collapsed,
        kld=history[-1].val["kld"],
        rec=history[-1].val["recon_loss"],
        ratio_shuffled=val.actions.ratio_shuffled,
        mse10=report.pixel_mse_at("val", 10),
        copy_last10=val.open_loop.copy_last_mse[-1],
    )


def _with_position(cfg: Config):
    from wm_train.data import load_splits

    return load_splits(cfg, per_step=("position",))


# (column of the table, key of a run's row)
COLUMNS = (
    ({"name": "option"}, "option"),
    ({"name": "dot MSE", "format": ".3f"}, "dot_mse"),
    ({"name": "background MSE", "format": ".1e"}, "background_mse"),
    ({"name": "position R² val", "format": ".3f"}, "position_r2"),
    ({"name": "(train)", "format": ".3f"}, "position_r2_train"),
    ({"name": "on z alone", "format": ".3f"}, "position_r2_z"),
    ({"name": "active dims"}, "active"),
    ({"name": "kld", "format": ".2f"}, "kld"),
    ({"name": "collapsed"}, "collapsed"),
    ({"name": "action ratio", "format": ".3f"}, "ratio_shuffled"),
    ({"name": "MSE@10", "format": ".4f"}, "mse10"),
    ({"name": "train s", "format": ".0f"}, "train_seconds"),
)


def table_rows(rows: list[dict]) -> list[list]:
    shown = (
        {**row, "active": f"{row['active_dims']}/{row['latent_dim']}", "collapsed": "yes" if row["collapsed"] else "no"}
        for row in rows
    )
    return [[row[key] for _, key in COLUMNS] for row in shown]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Args):
        kind = f.type if not isinstance(f.type, str) else eval(f.type)  # noqa: S307 - our own annotations
        if kind is bool:
            parser.add_argument(f"--{f.name}", action="store_true", help=f.metadata["help"])
        else:
            parser.add_argument(f"--{f.name}", type=kind, default=f.default, help=f.metadata["help"])
    args = Args(**vars(parser.parse_args()))
    if args.quick:
        args = dataclasses.replace(args, **QUICK, out=str(Path(args.out) / "quick"))
    data = Path(args.out) / "data"
    write_dot_episodes(data, args.episodes, args.steps, seed=0)
    options = [o for o in args.options.split(",") if o]
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SystemExit(f"unknown option(s) {unknown}; expected some of {list(OPTIONS)}")
    jobs = [(args, data, option) for option in options]
    rows: list[dict] = []
    results = Path(args.out) / "results.json"
    # spawned workers: CUDA cannot be used in a forked child; results are written as each run ends
    context = multiprocessing.get_context("spawn" if args.device != "cpu" else None)
    pool = ProcessPoolExecutor(args.workers, mp_context=context) if args.workers > 1 else None
    with pool or contextlib.nullcontext():
        for row in (pool.map if pool else map)(run, jobs):
            rows.append(row)
            print(f"{row['option']}: done in {row['train_seconds']:.0f} s", flush=True)
            results.write_text(json.dumps({"args": dataclasses.asdict(args), "rows": rows}, indent=1))
    columns = [column for column, _ in COLUMNS]
    print(markdown_table(columns, table_rows(rows)))
    if args.results:
        title = (
            f"Small objects: a 3x3 dot, {args.episodes} episodes of {args.steps} frames, {args.epochs} epochs of the "
            f"`{args.size}` model per option, seed {args.seed}; measured on the validation episodes"
        )
        save_results(Path(args.results), title, columns, table_rows(rows), environment(args.device), runs=rows)


if __name__ == "__main__":
    main()
