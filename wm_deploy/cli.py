"""`wm-control`: a thin click wrapper over wm_deploy.control_run. Its planner options are made from the fields of
PlannerSettings (name, type, default and docstring); errors become one line and an exit code (wm_core.errors)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from wm_core.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, exit_codes_epilog, one_line_errors

from .control_run import ControlRequest, run_request
from .planner import PlannerSettings

REQUEST_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ControlRequest)}
PLANNER_OPTIONS = tuple(f for f in dataclasses.fields(PlannerSettings) if f.name != "seed")
"""the PlannerSettings fields that become options, each --NAME-WITH-DASHES; --seed sets the planner's seed"""


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under the field in the class body of the dataclass `cls`, on one
    line."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = typing.cast(ast.ClassDef, tree.body[0]).body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def planner_options(command: Callable) -> Callable:
    """Add one option per field of PLANNER_OPTIONS: --horizon, --samples, ..., --action-penalty. The field's
    type is the option's (a Literal becomes a choice), its default the option's default, its docstring the
    option's help. The command receives them as keyword arguments named after the fields."""
    types = typing.get_type_hints(PlannerSettings)
    docs = field_docs(PlannerSettings)
    for f in reversed(PLANNER_OPTIONS):
        kind = types[f.name]
        if typing.get_origin(kind) is typing.Literal:
            kind = click.Choice(typing.get_args(kind))
        help_text = docs[f.name][0].upper() + docs[f.name][1:] + "."
        command = click.option(f"--{f.name.replace('_', '-')}", f.name, type=kind, default=f.default, help=help_text)(
            command
        )
    return command


@click.command(context_settings={"show_default": True}, epilog=exit_codes_epilog(EXIT_OK, EXIT_ERROR, EXIT_USAGE))
@click.argument("sources", metavar="ARTIFACTS_OR_CKPT...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--env", "env_id", default=REQUEST_DEFAULTS["env_id"], help="Gymnasium environment id.")
@click.option(
    "--episodes", type=click.IntRange(min=1), default=REQUEST_DEFAULTS["episodes"], help="Episodes per policy."
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=REQUEST_DEFAULTS["steps"],
    help="Most controlled environment steps per episode, whatever the model's action repeat.",
)
@click.option(
    "--action-repeat",
    type=click.IntRange(min=1),
    default=None,
    help="Refuse a model trained at another action repeat. Default: the model's own (each decision is held for "
    "that many environment steps).",
)
@click.option(
    "--seed",
    type=int,
    default=REQUEST_DEFAULTS["seed"],
    help="Episode i uses environment seed SEED + i; seeds the planner.",
)
@click.option("--backend", default=REQUEST_DEFAULTS["backend"], help="auto, torch, onnxruntime or tensorrt.")
@click.option(
    "--device", default=REQUEST_DEFAULTS["device"], help="auto (CUDA when torch sees one), cpu, cuda or cuda:N."
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Report folder. Default: control/ beside the artifact folder or checkpoint.",
)
@click.option(
    "--policy",
    type=click.Choice(["planner", "actor"]),
    default=REQUEST_DEFAULTS["policy"],
    help="What drives the model's episodes: the planner, or the actor alone (one forward pass per tick; a model "
    "trained with model.actor_critic). control.json says which.",
)
@planner_options
@click.option(
    "--disagreement",
    type=click.FloatRange(min=0),
    default=REQUEST_DEFAULTS["disagreement"],
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
@click.option(
    "--exploration",
    type=click.FloatRange(0, 1),
    default=REQUEST_DEFAULTS["exploration"],
    show_default=True,
    help="Noise on the planner's actions, in half-ranges of the action bounds (continuous: Gaussian std; discrete: "
    "probability of a random action), for episodes to retrain on (--save-episodes); PlaNet uses 0.3.",
)
@click.option(
    "--video/--no-video",
    default=REQUEST_DEFAULTS["video"],
    help="Record the first planner episode as real | imagined GIF.",
)
@click.option("--overwrite", is_flag=True, help="Replace the report folder if it holds an earlier report.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@one_line_errors
def control_command(
    sources: tuple[Path, ...],
    env_id: str,
    episodes: int,
    steps: int,
    action_repeat: int | None,
    seed: int,
    backend: str,
    device: str,
    out_dir: Path | None,
    policy: str,
    disagreement: float,
    goal: Path | None,
    no_references: bool,
    reference_policy: str | None,
    data: Path | None,
    save_episodes: Path | None,
    exploration: float,
    video: bool,
    overwrite: bool,
    progress: bool,
    **planner: Any,
) -> None:
    """Drive a gymnasium environment with the world-model planner (MPPI/CEM on imagined rollouts) and compare it
    with the random policy and the policy that recorded the training data on the same seeds. Writes control.json
    (returns, lengths, per-tick latency split into observe / plan / env), returns.png and episode.gif. Several
    models (trained alike, e.g. with different seeds) are planned on as an ensemble: their mean predicted reward, less
    --disagreement times their std."""
    settings = PlannerSettings(**planner, seed=seed)
    try:
        settings.check()
    except ValueError as error:  # a planner option out of its range: a bad command line, like --episodes 0
        raise click.UsageError(str(error)) from None
    request = ControlRequest(
        sources=sources,
        env_id=env_id,
        episodes=episodes,
        steps=steps,
        action_repeat=action_repeat,
        seed=seed,
        backend=backend,
        device=device,
        out_dir=out_dir,
        planner=settings,
        policy=policy,
        disagreement=disagreement,
        goal=goal,
        references=not no_references,
        reference_policy=reference_policy,
        data=data,
        save_episodes=save_episodes,
        exploration=exploration,
        video=video,
        overwrite=overwrite,
        progress=progress,
    )
    run = run_request(request)
    click.echo(run.table)
    if save_episodes is not None:
        click.echo(f"wrote {len(run.saved_episodes)} planner episode(s) to {save_episodes}")
    click.echo(f"wrote {run.report_path}")


if __name__ == "__main__":
    control_command()
