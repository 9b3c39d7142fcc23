"""`wm-control`: a thin click wrapper over wm_deploy.control and wm_deploy.control_report; bad input becomes one
line `error: ...` and exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from wm_core.errors import error_line

from .planner import PRIORS, PlannerSettings

EXIT_BAD_INPUT = 2
"""a path, an option, a model that does not fit the environment, a failed write: one line on stderr"""

DEFAULTS = PlannerSettings()


@click.command(
    context_settings={"show_default": True},
    epilog=f"Exit codes: 0 success; {EXIT_BAD_INPUT} bad input or a failed write (one line on stderr).",
)
@click.argument("sources", metavar="ARTIFACTS_OR_CKPT...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--env", "env_id", default="CarRacing-v3", help="Gymnasium environment id.")
@click.option("--episodes", type=click.IntRange(min=1), default=3, help="Episodes per policy.")
@click.option("--steps", type=click.IntRange(min=1), default=1000, help="Most controlled steps per episode.")
@click.option("--seed", type=int, default=0, help="Episode i uses environment seed SEED + i; seeds the planner.")
@click.option("--backend", default="auto", help="auto, torch, onnxruntime or tensorrt.")
@click.option("--device", default="auto", help="auto (CUDA when torch sees one), cpu, cuda or cuda:N.")
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Report folder. Default: control/ beside the artifact folder or checkpoint.",
)
@click.option("--horizon", type=click.IntRange(min=1), default=DEFAULTS.horizon, help="Imagined steps per candidate.")
@click.option("--samples", type=click.IntRange(min=2), default=DEFAULTS.samples, help="Candidates per iteration.")
@click.option("--iterations", type=click.IntRange(min=1), default=DEFAULTS.iterations, help="Refits per tick.")
@click.option("--elites", type=click.IntRange(min=1), default=DEFAULTS.elites, help="Candidates refit to.")
@click.option("--replay", type=click.IntRange(min=0), default=DEFAULTS.replay, help="Shifted elites replayed.")
@click.option("--temperature", type=float, default=DEFAULTS.temperature, help="Elite weights exp(T (v - best)).")
@click.option("--discount", type=float, default=DEFAULTS.discount, help="Discount of predicted rewards.")
@click.option(
    "--action-penalty",
    type=float,
    default=DEFAULTS.action_penalty,
    help="Continuous actions: value lost per step and squared training std beyond 2 stds of the training actions.",
)
@click.option(
    "--prior",
    type=click.Choice(PRIORS),
    default=DEFAULTS.prior,
    help="Continuous actions: start the search at the training actions (data) or the whole box (bounds).",
)
@click.option(
    "--disagreement",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Several models: a candidate's reward is the members' mean less this many times their std.",
)
@click.option(
    "--goal",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Image file to plan towards (latent distance) instead of predicted rewards; needed without heads.",
)
@click.option("--no-references", is_flag=True, help="Skip the random and recording policies.")
@click.option(
    "--reference-policy",
    default=None,
    help="The recording policy to compare with (a name in wm_core.envs.POLICIES). Default: the training data's "
    "meta.json, else wm-collect's policy for the environment.",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Episode folder whose meta.json names the recording policy. Default: the training config's data.path.",
)
@click.option(
    "--save-episodes",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Also write the planner's episodes as training episodes (planner_SEED.npz: frames, actions, rewards, "
    "terminations) into this folder, e.g. a copy of the training data, to retrain on what the planner did.",
)
@click.option("--video/--no-video", default=True, help="Record the first planner episode as real | imagined GIF.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def control_command(
    sources: tuple[Path, ...],
    env_id: str,
    episodes: int,
    steps: int,
    seed: int,
    backend: str,
    device: str,
    out_dir: Path | None,
    horizon: int,
    samples: int,
    iterations: int,
    elites: int,
    replay: int,
    temperature: float,
    discount: float,
    action_penalty: float,
    prior: str,
    disagreement: float,
    goal: Path | None,
    no_references: bool,
    reference_policy: str | None,
    data: Path | None,
    save_episodes: Path | None,
    video: bool,
    progress: bool,
) -> None:
    """Drive a gymnasium environment with the world-model planner (MPPI/CEM on imagined rollouts) and compare it
    with the random policy and the policy that recorded the training data on the same seeds. Writes control.json
    (returns, lengths, per-tick latency split into observe / plan / env), returns.png and episode.gif. Several
    models (trained alike, e.g. with different seeds) are planned on as an ensemble: their mean predicted reward, less
    --disagreement times their std."""
    settings = dict(
        horizon=horizon,
        samples=samples,
        iterations=iterations,
        elites=elites,
        replay=replay,
        temperature=temperature,
        discount=discount,
        action_penalty=action_penalty,
        prior=prior,
        seed=seed,
    )
    try:
        report_path, table = _run(
            sources, env_id, episodes, steps, seed, backend, device, out_dir, settings, disagreement, goal,
            no_references, reference_policy, data, save_episodes, video, progress,
        )  # fmt: skip
    except (OSError, ValueError, ImportError) as error:
        click.echo(f"error: {error_line(error)}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(table)
    click.echo(f"wrote {report_path}")


def _run(
    sources, env_id, episodes, steps, seed, backend, device, out_dir, settings, disagreement, goal,
    no_references, reference_policy, data, save_episodes, video, progress,
) -> tuple[Path, str]:  # fmt: skip
    import json

    from tqdm import tqdm

    from wm_core import envs

    from .control import check_episode_folder, recording_policy, run_control, save_planner_episodes
    from .control_report import format_table, write_report
    from .ensemble import Ensemble
    from .rollout import Rollout

    if reference_policy is not None and reference_policy not in envs.POLICIES:
        raise ValueError(f"--reference-policy must be one of {sorted(envs.POLICIES)}, got {reference_policy!r}")
    if disagreement and len(sources) == 1:
        raise ValueError("--disagreement needs several models (an ensemble), got one")
    if len(sources) == 1:
        rollout: Rollout | Ensemble = Rollout.load(sources[0], backend=backend, device=device, seed=seed)
    else:
        rollout = Ensemble.load(sources, backend, device, disagreement=disagreement, seed=seed)
    source = sources[0]  # where the recording policy is looked up and the report goes by default
    goal_frame = None if goal is None else _read_goal(goal, rollout.dims.frame[0])
    references: list[str] = []
    reference_from = ""
    if not no_references:
        if reference_policy is not None:
            name, reference_from = reference_policy, "--reference-policy"
        else:
            name, reference_from = recording_policy(env_id, source, data)
        references = [name] + (["random"] if name != "random" else [])
    if save_episodes is not None:
        check_episode_folder(save_episodes, env_id, rollout.dims.frame[0], range(seed, seed + episodes))
    total = episodes * steps * (1 + len(references))
    with tqdm(total=total, desc=f"control {env_id}", unit="step", disable=not progress) as bar:
        result = run_control(
            rollout,
            env_id,
            episodes=episodes,
            steps=steps,
            seed=seed,
            settings=PlannerSettings(**settings),
            goal=goal_frame,
            references=references,
            reference_from=reference_from,
            record=video,
            keep_episodes=save_episodes is not None,
            source=", ".join(map(str, sources)),
            on_step=bar.update,
        )
    path = write_report(result, out_dir if out_dir is not None else source.parent / "control")
    table = format_table(json.loads(path.read_text()))
    if save_episodes is not None:
        saved = save_planner_episodes(result, save_episodes)
        table += f"\nwrote {len(saved)} planner episode(s) to {save_episodes}"
    return path, table


def _read_goal(path: Path, size: int):
    """An image file -> uint8 [size, size, 3]."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from wm_core.envs import resize

    if not path.is_file():
        raise FileNotFoundError(f"goal image not found: {path}")
    try:
        frame = Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None
    return resize(np.asarray(frame), size)


if __name__ == "__main__":
    control_command()
