"""Isolation ablation: the package's gradient-isolated world model, with and without latent overshooting, against
the coupled baseline it replaced.

Three variants -- isolated (one-step RSSM loss), isolated + overshooting (train.overshooting = K) and coupled --
train on the same episodes, from the same initial weights, with the same seed, optimiser and number of steps;
all are then measured by `wm_train.evaluate` (the functions behind `wm-eval`). Per variant (mean ± std over
seeds): final train and validation losses and their gap, open-loop pixel MSE on validation episodes at horizons
1, 5, 10 and 30, the action identifiability ratio, and with --closed-loop-episodes N the mean return of the
planner driving the environment with each model. One invocation covers one environment and one data regime:

    python benchmarks/isolation_ablation.py --env CarRacing-v3 --regime budget   # ~10 min on 2 CPU cores
    python benchmarks/isolation_ablation.py --env CarRacing-v3 --regime small    # ~12-16 min
    python benchmarks/isolation_ablation.py --env ALE/Pong-v5 --regime budget
    python benchmarks/isolation_ablation.py --env ALE/Pong-v5 --regime small
    python benchmarks/isolation_ablation.py --closed-loop-episodes 3                # + closed loop, ~15 min
    python benchmarks/isolation_ablation.py --policy carracing-explorer             # recorded by another policy
    python benchmarks/isolation_ablation.py --data data/carracing                  # your own episodes
    python benchmarks/isolation_ablation.py --quick                                # smoke test, < 1 min

Regimes: `budget` records 40 episodes of 150 steps (8 held out) and trains 12 epochs, the budget of the first
study; `small` records 12 (4 held out, so 8 trained on) and trains 80 epochs (each frame seen 80 times against
12), where a model has a chance to memorise its few episodes. Explicit flags override a regime's values. The
outputs (results.json, results.md, open_loop.png, a wm-eval report per run) go to --out, by default
runs/isolation_ablation/<env>_<regime>.

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
from isolation_report import VARIANTS, markdown, plot_open_loop, summarise, table_metrics

from wm_core.checkpoint import load_checkpoint
from wm_core.config import Config
from wm_core.losses import PLAIN_LOSS
from wm_core.model import WorldModel
from wm_train.coupled import CoupledWorldModel
from wm_train.evaluate import evaluate_model, write_report
from wm_train.trainer import Trainer

REGIMES = ("budget", "small")
SMALL_MAX_TRAIN_EPISODES = 8
REWARD_WINDOW = 10
"""the heads' reward target, the mean reward of the next 10 steps, as in configs/carracing.yaml and pong.yaml"""
CLOSED_LOOP_SEED = 100
"""closed-loop episodes use seeds 100, 101, ...: the control benchmark's (docs/control.md), none recorded"""


@dataclass
class Args:
    env: str = field(default="CarRacing-v3", metadata={"help": "environment recorded (CarRacing-v3, ALE/Pong-v5)"})
    regime: str = field(
        default="budget",
        metadata={
            "help": "budget (40 episodes, 12 epochs) or small (8 trained on, 80 epochs); sets the defaults below"
        },
    )
    data: str = field(default="", metadata={"help": "episode folder; empty: record --env into OUT/data"})
    policy: str = field(
        default="",
        metadata={"help": "the recording policy (wm_core.envs.POLICIES); empty: wm-collect's for --env"},
    )
    episodes: int = field(default=40, metadata={"help": "episodes recorded"})
    steps: int = field(default=150, metadata={"help": "steps per recorded episode"})
    seeds: int = field(default=3, metadata={"help": "training seeds per variant (0 .. seeds-1)"})
    epochs: int = field(default=12, metadata={"help": "passes over the training frames, for every variant"})
    overshooting: int = field(
        default=5,
        metadata={"help": "K of the isolated + overshooting variant (5: the study's pick, docs/isolation_study.md)"},
    )
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
    closed_loop_episodes: int = field(
        default=0,
        metadata={
            "help": "episodes the planner drives with each model (0: no closed-loop column); every variant then "
            "trains reward and continuation heads"
        },
    )
    closed_loop_steps: int = field(default=1000, metadata={"help": "controlled steps per closed-loop episode"})
    workers: int = field(
        default=3,
        metadata={
            "help": "runs trained in parallel processes, one torch thread each (on a busy 2-core machine faster "
            "than one run on 2 threads; 3 for the 9 runs of 3 seeds: 3 rounds that finish together, where 2 "
            "workers leave the ninth run alone on one core)"
        },
    )
    out: str = field(default="", metadata={"help": "output folder (empty: runs/isolation_ablation/<env>_<regime>)"})
    quick: bool = field(default=False, metadata={"help": "smoke test: tiny model, 4 short episodes, 1 seed, 1 epoch"})


# What --regime small changes: at most 8 training episodes, trained for many more epochs (a third of 12 held
# out keeps enough validation sequences of 35 frames for the open-loop and action measures).
SMALL: dict[str, object] = dict(episodes=12, val_fraction=1 / 3, epochs=80)

QUICK: dict[str, object] = dict(
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


def make_trainer(cfg: Config, variant: str) -> Trainer:
    """A Trainer for `variant`; every variant starts from the same initial weights (the coupled one copies the
    isolated model's), and the isolated ones differ by cfg.train.overshooting only. With heads (the closed-loop
    column) every other initial weight and the training noise are those of the run without heads."""
    without_heads = rng_without_heads(cfg) if cfg.model.heads else None
    trainer = Trainer(cfg, progress=False)
    if without_heads is not None:
        torch.set_rng_state(without_heads)
    if variant == "coupled":
        with torch.random.fork_rng(devices=[]):  # building it must not move the RNG both variants then share
            coupled = CoupledWorldModel(cfg.model)
        coupled.load_state_dict(trainer.model.state_dict())
        trainer.model = coupled.to(trainer.device)
        # What train_step runs forward and backward (the Trainer's model, or DDP around it): it must be the
        # coupled model too, or the optimiser below would step parameters that never receive a gradient.
        if trainer.dist.enabled:
            raise ValueError("the coupled baseline trains in one process; run the ablation without torchrun")
        trainer.train_model = coupled
        t = cfg.train
        trainer.optimizer = torch.optim.AdamW(coupled.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    return trainer


def rng_without_heads(cfg: Config) -> torch.Tensor:
    """The torch RNG state in which a Trainer leaves a model built for `cfg` without heads. The heads are built
    last and draw their weights from the stream the training then reads its noise from: restoring this state
    after them keeps the closed-loop runs' other numbers those of the runs without heads."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        WorldModel(dataclasses.replace(cfg.model, heads=False))
        return torch.get_rng_state()


def run_config(args: Args, data: Path, action_mode: str, action_dim: int, variant: str, seed: int) -> Config:
    return Config.from_dict(
        {
            "data": {
                "path": str(data),
                "action_mode": action_mode,
                "seq_len": args.seq_len,
                "val_fraction": args.val_fraction,
            },
            "model": {"size": args.size, "action_dim": action_dim, "heads": args.closed_loop_episodes > 0},
            "train": {
                "out_dir": str(Path(args.out) / "runs" / f"{variant}_seed{seed}"),
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "seed": seed,
                "threads": 1,
                **dataclasses.asdict(PLAIN_LOSS),  # every design on the plain loss: the coupled one has no other
                "overshooting": args.overshooting if variant == "overshooting" else 1,
                "reward_window": REWARD_WINDOW,
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
    checkpoint = Path(cfg.train.out_dir) / "last.pt"
    model, _, extras = load_checkpoint(checkpoint)  # a plain WorldModel whatever the variant
    # Every variant's losses are read under the same objective, the one-step isolated one: with K > 1 the
    # training objective also averages in the overshooting KLs, which would not compare.
    one_step = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, overshooting=1))
    report = evaluate_model(
        model,
        one_step,
        extras["action_codec"],
        {"train": trainer.train_set, "val": trainer.val_set},
        args.context,
        args.horizon,
        "val",
        args.max_sequences,
        seed=0,
        checkpoint=str(checkpoint),
        progress=False,
    )
    write_report(report, Path(cfg.train.out_dir) / "eval", overwrite=True)
    metrics = table_metrics(report)
    closed_loop = closed_loop_return(checkpoint, args.env, args.closed_loop_episodes, args.closed_loop_steps)
    if closed_loop is not None:
        metrics["closed_loop_return"] = closed_loop
    val = report.splits["val"].open_loop
    return dict(
        variant=variant,
        seed=cfg.train.seed,
        train_seconds=trained - start,
        seconds=time.perf_counter() - start,
        optimiser_steps=trainer.steps_per_epoch * cfg.train.epochs,
        episodes=dict(train=len(trainer.train_set.obs), val=len(trainer.val_set.obs)),
        objective=dict(train=history[-1].train, val=history[-1].val),
        metrics=metrics,
        open_loop_val=val.pixel_mse,
        copy_last_val=val.copy_last_mse,
        report=report.to_dict(),
    )


def closed_loop_return(checkpoint: Path, env: str, episodes: int, steps: int) -> float | None:
    """The closed-loop column: the mean return over `episodes` episodes of `env` (at most `steps` controlled steps,
    seeds CLOSED_LOOP_SEED, ...) when wm_deploy's planner, at its default settings for every variant, acts on the
    model of `checkpoint` (torch backend, this process's threads). None when episodes is 0."""
    if episodes == 0:
        return None
    from wm_deploy import Rollout
    from wm_deploy.control import PLANNER, run_control

    rollout = Rollout.load(checkpoint, backend="torch", device="cpu")
    result = run_control(rollout, env, episodes=episodes, steps=steps, seed=CLOSED_LOOP_SEED, record=False)
    return float(np.mean([e.episode_return for e in result.episodes[PLANNER]]))


def check_closed_loop_env(env: str, action_mode: str, action_dim: int) -> None:
    """Before any training: the environment the planner will drive takes the data's actions (--env names it; with
    --data, the episodes may come from another one)."""
    from wm_core import envs

    game = envs.make_env(env)
    space = game.action_space
    game.close()
    mode, dim = ("discrete", int(space.n)) if hasattr(space, "n") else ("continuous", int(space.shape[0]))
    if (mode, dim) != (action_mode, action_dim):
        raise ValueError(
            f"--env {env} takes {mode} actions of width {dim}, the episodes hold {action_mode} actions of width "
            f"{action_dim}: name the environment they were recorded in"
        )


def reference_returns(env: str, data: Path, episodes: int, steps: int) -> dict[str, float]:
    """Mean returns of the random policy and of the policy that recorded `data`, on the closed-loop episodes."""
    from wm_core import envs
    from wm_core.dataset_meta import read_meta
    from wm_deploy.control import policy_episode

    recorder = (read_meta(data) or {}).get("policy", envs.policy_for(env))
    game, skip = envs.make_env(env), envs.skip_start(env)
    try:
        returns = {
            name: [
                policy_episode(game, name, CLOSED_LOOP_SEED + i, steps, skip).episode_return for i in range(episodes)
            ]
            for name in dict.fromkeys(["random", recorder])
        }
    finally:
        game.close()
    return {name: float(np.mean(values)) for name, values in returns.items()}


def prepare_data(args: Args) -> Path:
    """--data, or episodes recorded once into OUT/data (reused while the recording settings are the same)."""
    if args.data:
        return Path(args.data)
    from wm_train.collect import collect

    folder = Path(args.out) / "data"
    settings = dict(env=args.env, episodes=args.episodes, steps=args.steps, seed=0)
    if args.policy:  # only then: folders recorded before the option stay valid
        settings["policy"] = args.policy
    marker = folder / ".complete.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return folder
    marker.unlink(missing_ok=True)  # ours: collect replaces only a folder holding nothing but its episodes
    collect(
        args.env,
        folder,
        args.episodes,
        args.steps,
        seed=0,
        workers=max(1, args.workers),
        progress=False,
        policy=args.policy or None,
        overwrite=True,
    )
    marker.write_text(json.dumps(settings))
    return folder


def action_space_of(data: Path) -> tuple[str, int]:
    """(action_mode, action_dim) of the episodes in `data`; a discrete width is the largest action + 1."""
    from wm_train.data import episode_paths

    actions = [np.load(p)["action"] for p in episode_paths(data)]
    if actions[0].dtype.kind in "iu":
        return "discrete", int(max(a.max() for a in actions)) + 1
    return "continuous", int(actions[0].shape[1])


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
    regime = given.get("regime", Args.regime)
    if regime not in REGIMES:
        raise ValueError(f"--regime must be one of {REGIMES}, got {regime!r}")
    # A regime, then --quick, replace the defaults only: a flag given explicitly still wins.
    defaults = SMALL if regime == "small" else {}
    if given.get("quick"):
        defaults = {**defaults, **QUICK}
    args = Args(**{**defaults, **given})
    if not args.out:
        slug = args.env.split("/")[-1].split("-")[0].lower()  # CarRacing-v3 -> carracing, ALE/Pong-v5 -> pong
        policy = f"_{args.policy}" if args.policy else ""
        args.out = f"runs/isolation_ablation/{slug}_{args.regime}{policy}" + ("_quick" if args.quick else "")
    return args


def check_regime(args: Args, data: Path) -> None:
    """The small regime promises at most SMALL_MAX_TRAIN_EPISODES training episodes; --episodes, --val-fraction
    or --data could break that promise, which the table would then misreport."""
    from wm_train.data import episode_paths, split_episodes

    train, _ = split_episodes(list(range(len(episode_paths(data)))), args.val_fraction, seed=0)  # sizes only
    if args.regime == "small" and len(train) > SMALL_MAX_TRAIN_EPISODES:
        raise ValueError(
            f"regime small trains on at most {SMALL_MAX_TRAIN_EPISODES} episodes, got {len(train)}: "
            f"lower --episodes or raise --val-fraction"
        )


def run_all(args: Args, jobs: list[tuple[Args, Config, str]]) -> list[dict]:
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
    return runs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args)
    recorded = time.perf_counter()
    check_regime(args, data)
    action_mode, action_dim = action_space_of(data)
    if args.closed_loop_episodes:
        check_closed_loop_env(args.env, action_mode, action_dim)
    jobs = [
        (args, run_config(args, data, action_mode, action_dim, v, seed), v)
        for seed in range(args.seeds)
        for v in VARIANTS
    ]
    for _, cfg, _ in jobs:  # a run folder from an earlier invocation would make the Trainer refuse to start
        for name in ("last.pt", "best.pt", "metrics.jsonl"):
            (Path(cfg.train.out_dir) / name).unlink(missing_ok=True)
    print(f"data ready in {recorded - start:.0f} s: {data}; {len(jobs)} runs on {args.workers} worker(s)", flush=True)
    references = (
        reference_returns(args.env, data, args.closed_loop_episodes, args.closed_loop_steps)
        if args.closed_loop_episodes
        else {}
    )
    runs = run_all(args, jobs)
    results = dict(
        args=dataclasses.asdict(args),
        data=str(data),
        seconds=time.perf_counter() - start,
        record_seconds=recorded - start,
        cpu_count=os.cpu_count(),
        episodes=runs[0]["episodes"]["train"] + runs[0]["episodes"]["val"],
        val_episodes=runs[0]["episodes"]["val"],
        optimiser_steps=runs[0]["optimiser_steps"],
        summary=summarise(runs),
        closed_loop_references=references,
        runs=runs,
    )
    plot = plot_open_loop(results, out / "open_loop.png")
    results["plot"] = str(plot) if plot else None
    table = markdown(results)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table)
    print(f"wrote {out / 'results.md'}, {out / 'results.json'} and the plot in {results['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
