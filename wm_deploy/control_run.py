"""One `wm-control` run as a library call: a `ControlRequest` (the models, the environment, the planner's
settings, the episodes) in, `run_request` loads the models, runs the planner and the reference policies
(wm_deploy.control), writes the report (wm_deploy.control_report) and returns a `ControlRun`.

    from wm_deploy.control_run import ControlRequest, run_request
    run = run_request(ControlRequest(sources=(Path("runs/carracing/artifacts"),), episodes=1, steps=300))
    print(run.table)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wm_core import envs

from .control import DRIVERS, ControlResult, check_episode_folder, recording_policy, run_control, save_planner_episodes
from .control_report import check_report_destination, format_table, summary, write_report
from .ensemble import Ensemble
from .planner import PlannerSettings
from .rollout import Rollout


@dataclass(frozen=True)
class ControlRequest:
    """What one wm-control run does; each field is one of wm-control's arguments or options."""

    sources: tuple[Path, ...]
    """artifact folders (wm-export) or checkpoints; several (trained alike, e.g. with different seeds) are planned
    on as an ensemble"""
    env_id: str = "CarRacing-v3"
    """gymnasium environment id"""
    episodes: int = 3
    """episodes per policy"""
    steps: int = 1000
    """most controlled environment steps per episode (each decision is held for the model's action repeat)"""
    action_repeat: int | None = None
    """the action repeat the models must have been trained at (ValueError otherwise); None: theirs"""
    seed: int = 0
    """episode i uses environment seed seed + i; also the planner's seed (it replaces planner.seed)"""
    backend: str = "auto"
    """auto, torch, onnxruntime or tensorrt"""
    device: str = "auto"
    """auto (CUDA when torch sees one), cpu, cuda or cuda:N"""
    out_dir: Path | None = None
    """report folder; None: control/ beside the first artifact folder or checkpoint"""
    overwrite: bool = False
    """replace the report folder if it holds an earlier report (anything else is never replaced)"""
    planner: PlannerSettings = field(default_factory=PlannerSettings)
    """the planner's settings (its seed is `seed`)"""
    policy: str = "planner"
    """what drives the model's episodes: `planner` (the search) or `actor` (the actor alone, one forward pass per
    tick; a model trained with model.actor_critic)"""
    disagreement: float = 0.0
    """several models: a candidate's reward is the members' mean less this many times their std"""
    goal: Path | None = None
    """image file to plan towards (latent distance) instead of predicted rewards; needed without heads"""
    references: bool = True
    """also run the recording policy and the random policy on the same seeds"""
    reference_policy: str | None = None
    """the recording policy to compare with (a name in wm_core.envs.POLICIES); None: the training data's
    meta.json, else wm-collect's policy for the environment"""
    data: Path | None = None
    """episode folder whose meta.json names the recording policy; None: the training config's data.path"""
    save_episodes: Path | None = None
    """also write the planner's episodes as training episodes (planner_SEED.npz) into this folder"""
    exploration: float = 0.0
    """noise on the planner's actions, in half-ranges of the action bounds (wm_deploy.control.explore): what the
    planner's saved episodes are collected with; 0: none"""
    video: bool = True
    """record the first planner episode as a real | imagined GIF"""
    progress: bool = True
    """show a progress bar"""

    def check(self) -> None:
        """ValueError naming the first field out of its range (before any model is loaded)."""
        if not self.sources:
            raise ValueError("give at least one artifact folder or checkpoint")
        if self.episodes < 1 or self.steps < 1:
            raise ValueError(f"episodes and steps must be >= 1, got episodes={self.episodes} steps={self.steps}")
        if self.action_repeat is not None and self.action_repeat < 1:
            raise ValueError(f"--action-repeat must be >= 1, got {self.action_repeat}")
        if self.reference_policy is not None and self.reference_policy not in envs.POLICIES:
            raise ValueError(
                f"--reference-policy must be one of {sorted(envs.POLICIES)}, got {self.reference_policy!r}"
            )
        if not 0 <= self.disagreement < float("inf"):
            raise ValueError(f"--disagreement must be finite and >= 0, got {self.disagreement}")
        if not 0 <= self.exploration <= 1:
            raise ValueError(f"--exploration must be in [0, 1], got {self.exploration}")
        if self.policy not in DRIVERS:
            raise ValueError(f"--policy must be one of {DRIVERS}, got {self.policy!r}")
        if self.disagreement and len(self.sources) == 1:
            raise ValueError("--disagreement needs several models (an ensemble), got one")
        self.planner.check()


@dataclass
class ControlRun:
    """What `run_request` did."""

    result: ControlResult
    """the episodes, their returns and timings"""
    report_path: Path
    """control.json (returns.png and episode.gif beside it)"""
    saved_episodes: list[Path]
    """the planner's episodes written as training episodes (request.save_episodes), else empty"""

    @property
    def table(self) -> str:
        """Return and tick latency per policy, a few lines for the terminal."""
        return format_table(summary(self.result))


def run_request(request: ControlRequest) -> ControlRun:
    """Load the models of `request`, drive its environment with the planner and the reference policies, write
    the report -> a ControlRun. ValueError or FileNotFoundError (before any episode runs) for a request that
    cannot run: a setting out of range, a model that does not fit the environment, a goal that is not an image,
    a folder for the episodes that holds others."""
    from tqdm import tqdm

    request.check()
    sources = tuple(Path(source) for source in request.sources)
    if len(sources) == 1:
        rollout: Rollout | Ensemble = Rollout.load(
            sources[0], backend=request.backend, device=request.device, seed=request.seed
        )
    else:
        rollout = Ensemble.load(
            sources, request.backend, request.device, disagreement=request.disagreement, seed=request.seed
        )
    if request.action_repeat is not None and request.action_repeat != rollout.action_repeat:
        raise ValueError(
            f"--action-repeat {request.action_repeat} asked for, but {sources[0]} was trained on data recorded with "
            f"action_repeat {rollout.action_repeat}: each of its steps is {rollout.action_repeat} environment steps"
        )
    source = sources[0]  # where the recording policy is looked up and the report goes by default
    goal = None if request.goal is None else read_goal(request.goal, rollout.dims.frame[0])
    references: list[str] = []
    reference_from = ""
    if request.references:
        if request.reference_policy is not None:
            name, reference_from = request.reference_policy, "--reference-policy"
        else:
            name, reference_from = recording_policy(request.env_id, source, request.data)
        references = [name] + (["random"] if name != "random" else [])
    out_dir = request.out_dir if request.out_dir is not None else source.parent / "control"
    check_report_destination(out_dir, request.overwrite)  # before minutes of driving, not after
    seeds = range(request.seed, request.seed + request.episodes)
    if request.save_episodes is not None:
        frame_size = rollout.dims.frame[0]
        check_episode_folder(request.save_episodes, request.env_id, frame_size, seeds, rollout.action_repeat)
    total = request.episodes * request.steps * (1 + len(references))
    with tqdm(total=total, desc=f"control {request.env_id}", unit="step", disable=not request.progress) as bar:
        result = run_control(
            rollout,
            request.env_id,
            episodes=request.episodes,
            steps=request.steps,
            seed=request.seed,
            settings=dataclasses.replace(request.planner, seed=request.seed),
            goal=goal,
            references=references,
            reference_from=reference_from,
            record=request.video,
            keep_episodes=request.save_episodes is not None,
            source=", ".join(map(str, sources)),
            on_step=bar.update,
            policy=request.policy,
            exploration=request.exploration,
        )
    path = write_report(result, out_dir, request.overwrite)
    saved = [] if request.save_episodes is None else save_planner_episodes(result, request.save_episodes)
    return ControlRun(result, path, saved)


def read_goal(path: Path, size: int) -> np.ndarray:
    """An image file -> uint8 [size, size, 3]."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"goal image not found: {path}")
    try:
        frame = Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None
    return envs.resize(np.asarray(frame), size)
