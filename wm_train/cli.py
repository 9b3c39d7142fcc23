"""Command-line entry points: thin click wrappers over the library functions.

The console scripts `wm-train`, `wm-collect`, `wm-eval` and `wm-store` are the commands below; `python -m
wm_train.cli train|collect|eval|store ...` runs the same commands, which is how torchrun starts one training
process per GPU:

    torchrun --nproc-per-node 4 -m wm_train.cli train configs/carracing.yaml
"""

from __future__ import annotations

import os

import click

from wm_core.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, exit_codes_epilog, one_line_errors

EPILOG = exit_codes_epilog(EXIT_OK, EXIT_ERROR, EXIT_USAGE)


@click.command(context_settings={"show_default": True}, epilog=EPILOG)
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a config value, e.g. --set train.epochs=3 (repeatable).",
)
@click.option("--resume", is_flag=True, help="Continue the run in train.out_dir from its last.pt.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar while an epoch runs.")
@one_line_errors
def train_command(config_path, overrides, resume, progress):
    """Train a gradient-isolated world model on the episodes named by CONFIG.yaml."""
    from wm_core.config import load_config

    from .trainer import train

    cfg = load_config(config_path, overrides)
    history = train(cfg, resume=resume, progress=progress)
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun, rank 0 speaks for the run
        return
    last = history[-1]
    click.echo(
        f"done: {last.epoch} epochs, val loss {last.val['loss']:.2f}, "
        f"{last.frames_per_s:.0f} frames/s; checkpoints in {cfg.train.out_dir}"
    )


@click.command(context_settings={"show_default": True}, epilog=EPILOG)
@click.argument("env_id")
@click.option(
    "-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the episode files."
)
@click.option("--episodes", default=20, help="Number of episodes.")
@click.option("--steps", default=200, help="Recorded steps (decisions) per episode (fewer if the episode ends).")
@click.option(
    "--action-repeat",
    default=1,
    type=click.IntRange(min=1),
    help="Hold each action for K environment steps, summing their rewards, and record every K-th frame "
    "(on top of a frameskip of the environment's own: ALE's v5 environments already repeat 4).",
)
@click.option("--seed", default=0, help="Episode i uses seed SEED + i.")
@click.option("--frame-size", default=64, help="Frames are resized to FRAME_SIZE x FRAME_SIZE.")
@click.option("--workers", default=2, help="Processes recording episodes in parallel.")
@click.option("--store", is_flag=True, help="Write an episode store (see wm-store) at OUT instead of .npz files.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is an earlier collection (or store, with --store).")
@click.option(
    "--append",
    is_flag=True,
    help="Add the episodes to the collection in OUT, numbered after its last; its meta.json must record the same "
    "environment, action space, frame size, policy and seed.",
)
@click.option(
    "--policy",
    default=None,
    help="The policy that acts, a name in wm_core.envs.POLICIES (carracing-driver, carracing-explorer, random). "
    "Default: the lane-following driver for CarRacing, random held actions elsewhere.",
)
@click.option("--progress/--no-progress", default=True)
@one_line_errors
def collect_command(
    env_id,
    out_dir,
    episodes,
    steps,
    action_repeat,
    seed,
    frame_size,
    workers,
    store,
    overwrite,
    append,
    policy,
    progress,
):
    """Record episodes from the gymnasium environment ENV_ID (e.g. CarRacing-v3, ALE/Pong-v5)."""
    from .collect import collect, collect_to_store

    args = (env_id, out_dir, episodes, steps, seed, frame_size, workers, progress, policy, action_repeat)
    if store:
        if append:
            raise click.UsageError("--append adds to an episode folder; append there, then convert it with wm-store")
        count = collect_to_store(*args, overwrite)
        click.echo(f"wrote {count} episodes to the store {out_dir}")
        return
    paths = collect(*args, overwrite, append)
    click.echo(f"wrote {len(paths)} episodes to {out_dir}")


@click.command(context_settings={"show_default": True}, epilog=EPILOG)
@click.argument("source", metavar="NPZ_DIR", type=click.Path(file_okay=False))
@click.option(
    "-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder of the episode store."
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is an earlier episode store.")
@one_line_errors
def store_command(source, out_dir, overwrite):
    """Convert the *.npz episodes in NPZ_DIR into an episode store (frames read from disk on demand; point
    data.path at it to train on datasets larger than memory)."""
    from .data import npz_to_store

    count = npz_to_store(source, out_dir, overwrite)
    click.echo(f"wrote {count} episodes to the store {out_dir}")


@click.command(context_settings={"show_default": True}, epilog=EPILOG)
@click.argument("checkpoint", metavar="CKPT", type=click.Path(dir_okay=False))
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder of episode files; split into train/val exactly as training split it.",
)
@click.option(
    "--split",
    type=click.Choice(["val", "train"]),
    default="val",
    help="Split shown by the summary and the strips (the report holds both).",
)
@click.option("--context", default=5, help="Real frames the RSSM observes before imagining.")
@click.option("--horizon", default=30, help="Steps imagined open loop with the true actions.")
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Report folder: report.json, error_vs_horizon.png, strip_*.png.",
)
@click.option("--max-sequences", default=64, help="Sequences evaluated per split, at most.")
@click.option("--action-samples", default=8, help="Action sequences compared from each state for the spread.")
@click.option("--seed", default=0, help="Seeds the shuffled and random actions.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu")
@click.option("--threads", default=0, help="Torch threads on CPU; 0 keeps torch's default.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is an earlier report.")
@click.option(
    "--probe",
    "probes",
    multiple=True,
    metavar="KEY",
    help="Fit a ridge probe on [h, z] of the train split to predict the per-step array KEY of the episode files; "
    "report its R² on val (repeatable).",
)
@click.option("--progress/--no-progress", default=True)
@one_line_errors
def eval_command(
    checkpoint,
    data_dir,
    split,
    context,
    horizon,
    out_dir,
    max_sequences,
    action_samples,
    seed,
    device,
    threads,
    overwrite,
    probes,
    progress,
):
    """Evaluate the world model in CKPT: open-loop prediction, action identifiability, train/val gap, posterior
    collapse, and probes of what the latents carry."""
    from .eval_report import summary_lines
    from .evaluate import run_eval

    report = run_eval(
        checkpoint,
        data_dir,
        out_dir,
        overwrite,
        split=split,
        context=context,
        horizon=horizon,
        max_sequences=max_sequences,
        action_samples=action_samples,
        seed=seed,
        device=device,
        threads=threads,
        progress=progress,
        probes=probes,
    )
    for line in summary_lines(report):
        click.echo(line)
    click.echo(f"report in {out_dir}")


@click.group()
def main():
    """wm_train's commands, for `python -m wm_train.cli` (torchrun runs modules, not console scripts)."""


main.add_command(train_command, "train")
main.add_command(collect_command, "collect")
main.add_command(eval_command, "eval")
main.add_command(store_command, "store")

if __name__ == "__main__":
    main()
