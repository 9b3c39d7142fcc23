"""Closed-loop control in a real gymnasium environment (`wm-control`): episodes driven by the planner
(wm_deploy.planner) and, as references on the same seeds, by the random policy and by the policy that recorded
the training data; every tick timed, split into observe / plan / environment.

A planner tick: the environment's frame is resized to the model's frame size and `observe`d (encoder and one
prior step) -- "observe"; `Planner.act` -- "plan"; `env.step` -- "env". A reference policy's tick: reading the
frame -- "observe"; the policy's call on the frame at the environment's resolution -- "plan"; `env.step`.
Episodes start with the environment's uncontrolled steps (CarRacing zooms in for 50 frames: wm_core.envs
SKIP_START), taken with a neutral action for every policy alike; an episode's return counts every reward from
reset on, those steps included, and its length counts the controlled environment steps.

The environment is made with the model's action repeat K (Rollout.action_repeat, the training data's): each
decision (a tick) is held for K environment steps, the last one of an episode for what is left of `steps`; the
reference policies decide at the same rate. `steps` counts environment steps whatever K, so returns compare
across models of different K (1000 environment steps are 250 decisions at K = 4).

This module computes and returns a `ControlResult`; wm_deploy.control_report writes it out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wm_core import envs
from wm_core.dataset_meta import META, dataset_action_repeat, read_meta
from wm_core.episode_file import save_episode

from .ensemble import Ensemble
from .planner import ActorPolicy, Planner, PlannerSettings
from .rollout import Rollout

PARTS = ("observe", "plan", "env")
"""the timed parts of a tick, the columns of `Episode.seconds`"""

PLANNER = "planner"
"""the name the planner's episodes go under in a ControlResult (also when the actor drove them: see `policy`)"""
DRIVERS = ("planner", "actor")
EXPLORATION_STREAM = 7
"""second word of the seed of an episode's exploration noise ([episode seed, 7]), apart from the planner's"""
"""what can drive the model's episodes: the planner, or the actor alone (a model with model.actor_critic)"""


@dataclass
class Episode:
    policy: str
    seed: int
    episode_return: float
    """sum of the rewards from reset on (the uncontrolled start included)"""
    length: int
    """controlled environment steps (each tick holds its action for up to action_repeat of them)"""
    terminated: bool
    """the environment ended the episode (not a time limit, not --steps)"""
    seconds: np.ndarray
    """[ticks, 3] seconds of each tick's PARTS"""
    frames: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    """recorded planner episode only: per tick (real frame, decoded imagined frame at the planner's horizon),
    uint8 [H, W, 3] each at the model's frame size"""
    transitions: dict[str, np.ndarray] | None = None
    """planner episodes of run_control(keep_episodes=True): the arrays of an episode file (wm_core.episode_file),
    obs at the model's frame size, action, reward, terminated"""


@dataclass
class ControlResult:
    env_id: str
    source: str
    backend: str
    backend_detail: str
    settings: PlannerSettings
    objective: str
    """Planner.objective"""
    steps: int
    """most controlled environment steps per episode"""
    seed: int
    skip_start: int
    action_repeat: int
    """environment steps each decision is held for (the model's)"""
    reference_policy: str | None
    reference_from: str
    """where the name of the recording policy came from"""
    episodes: dict[str, list[Episode]]
    """policy name -> its episodes; the planner's under PLANNER, first"""
    policy: str = "planner"
    """what drove the episodes under PLANNER: `planner` (the search) or `actor` (the actor alone)"""


def recording_policy(env_id: str, source: str | Path, data: str | Path | None = None) -> tuple[str, str]:
    """The name (in wm_core.envs.POLICIES) of the policy that recorded the model's training data, and where the
    name came from: the meta.json of `data`, else of the data folder named in the training config of `source`
    (a checkpoint, or the checkpoint an artifact folder was exported from) when it is still there, else the policy
    wm-collect uses for `env_id`."""
    folders = [Path(data)] if data is not None else _training_data(Path(source))
    for folder in folders:
        meta, file = read_meta(folder), folder / META
        if meta is not None:
            name = meta.get("policy")
            if name not in envs.POLICIES:
                raise ValueError(f"{file}: policy {name!r} is not one of {sorted(envs.POLICIES)}")
            return name, f"{file}"
        if data is not None:
            raise FileNotFoundError(f"{file}: no meta.json in the data folder (written by wm-collect)")
    return envs.policy_for(env_id), f"wm-collect's policy for {env_id} (no meta.json found)"


def _training_data(source: Path) -> list[Path]:
    from wm_core.checkpoint import read_checkpoint
    from wm_core.manifest import load_manifest

    try:
        checkpoint = Path(load_manifest(source)["checkpoint"]["path"]) if source.is_dir() else source
        if not checkpoint.is_file():
            return []
        return [Path(read_checkpoint(checkpoint)["config"]["data"]["path"])]
    except (OSError, ValueError, KeyError, TypeError):
        return []  # the training data cannot be traced: fall back to wm-collect's policy


def planner_bounds(env, rollout: Rollout | Ensemble) -> tuple[np.ndarray, np.ndarray] | None:
    """Check that the model's actions are the environment's -> the bounds to give the Planner: None when the
    action codec records them (equal to the environment's), the environment's when it records none. ValueError
    naming both on a mismatch of kind, width or bounds."""
    space, codec = env.action_space, rollout.codec
    discrete = hasattr(space, "n")
    if discrete != (codec.mode == "discrete"):
        raise ValueError(f"the model takes {codec.mode} actions, the environment's action space is {space}")
    if discrete:
        if int(space.n) != codec.dim:
            raise ValueError(f"the model takes {codec.dim} discrete actions, the environment has {space.n}")
        return None
    low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
    if low.shape != (codec.dim,):
        raise ValueError(f"the model takes actions of width {codec.dim}, the environment's are {list(low.shape)}")
    if not codec.low:
        return low, high
    recorded = np.asarray(codec.low, np.float32), np.asarray(codec.high, np.float32)
    if not (np.allclose(recorded[0], low) and np.allclose(recorded[1], high)):
        raise ValueError(
            f"action-bound mismatch: the model was trained on actions in low={recorded[0].tolist()} "
            f"high={recorded[1].tolist()}, the environment's space is low={low.tolist()} high={high.tolist()}"
        )
    return None


def run_control(
    rollout: Rollout | Ensemble,
    env_id: str,
    *,
    episodes: int,
    steps: int,
    seed: int,
    settings: PlannerSettings | None = None,
    goal=None,
    references: Sequence[str] = (),
    reference_from: str = "",
    record: bool = True,
    keep_episodes: bool = False,
    source: str | Path = "",
    on_step: Callable[[int], None] | None = None,
    policy: str = "planner",
    exploration: float = 0.0,
) -> ControlResult:
    """`episodes` planner episodes of at most `steps` controlled environment steps with seeds seed, seed + 1, ...,
    each decision held for the model's action repeat, then the same episodes for each policy named in `references`
    (keys of wm_core.envs.POLICIES; the first one is reported as the recording policy). The planner is reseeded
    with the episode's seed at its start, so a run is repeatable. `record`: keep the first planner episode's
    (real, imagined) frames for a video (needs the decoder). `keep_episodes`: keep the planner episodes'
    transitions (Episode.transitions) to train on.
    `on_step(n)` is called after every decision with the environment steps it took (a progress bar). `policy`:
    `actor` drives with the actor alone (ActorPolicy) instead of the planner. `exploration`: noise on the planner's
    actions (`explore`), for episodes to train on; 0: none."""
    if policy not in DRIVERS:
        raise ValueError(f"policy must be one of {DRIVERS}, got {policy!r}")
    if episodes < 1 or steps < 1:
        raise ValueError(f"episodes and steps must be >= 1, got episodes={episodes} steps={steps}")
    if not 0 <= exploration <= 1:
        raise ValueError(f"exploration must be in [0, 1], got {exploration}")
    unknown = [name for name in references if name not in envs.POLICIES]
    if unknown:
        raise ValueError(f"unknown reference policy {unknown}; expected one of {sorted(envs.POLICIES)}")
    settings = settings or PlannerSettings()
    env = envs.make_env(env_id, rollout.action_repeat)
    try:
        planner: Planner | ActorPolicy
        if policy == "actor":
            planner_bounds(env, rollout)  # the same check that the model's actions are the environment's
            planner = ActorPolicy(rollout, settings)
        else:
            planner = Planner(rollout, settings, bounds=planner_bounds(env, rollout), goal=goal)
        planner.warmup()
        rollout.warmup(1, 1)
        record = record and rollout.has_decoder and policy == "planner"  # the actor imagines nothing to show
        skip = envs.skip_start(env_id)
        results: dict[str, list[Episode]] = {PLANNER: []}
        for i in range(episodes):
            episode = planner_episode(
                env, rollout, planner, seed + i, steps, skip, record and i == 0, on_step, keep_episodes, exploration
            )
            results[PLANNER].append(episode)
        for name in references:
            results[name] = [policy_episode(env, name, seed + i, steps, skip, on_step) for i in range(episodes)]
    finally:
        env.close()
    return ControlResult(
        env_id=env_id,
        source=str(source),
        backend=rollout.backend_name,
        backend_detail=rollout.backend_detail,
        settings=planner.settings,
        objective=planner.objective,
        steps=steps,
        seed=seed,
        skip_start=skip,
        action_repeat=rollout.action_repeat,
        reference_policy=references[0] if references else None,
        reference_from=reference_from,
        episodes=results,
        policy=policy,
    )


def _start(env, seed: int, skip: int) -> tuple[object, float, bool]:
    """Reset with `seed` and take `skip` neutral actions (zeros within the box, or action 0) -> the observation,
    the reward so far and whether the episode already ended."""
    observation, _ = env.reset(seed=seed)
    space = env.action_space
    neutral = 0 if hasattr(space, "n") else np.clip(np.zeros(space.shape, np.float32), space.low, space.high)
    total = 0.0
    for _ in range(skip):  # environment steps, whatever the action repeat
        observation, reward, terminated, truncated, _ = env.hold(neutral, 1)
        total += float(reward)
        if terminated or truncated:
            return observation, total, True
    return observation, total, False


def planner_episode(
    env,
    rollout: Rollout | Ensemble,
    planner: Planner | ActorPolicy,
    seed: int,
    steps: int,
    skip: int,
    record: bool = False,
    on_step: Callable[[int], None] | None = None,
    keep: bool = False,
    exploration: float = 0.0,
) -> Episode:
    """One episode driven by `planner` (see the module docstring for what each part of a tick times); `keep`:
    with its transitions; `exploration`: noise on each action (`explore`), drawn from a stream of `seed`."""
    size = rollout.dims.frame[0]
    observation, total, done = _start(env, seed, skip)
    planner.reset(seed=seed)
    noise = np.random.default_rng([seed, EXPLORATION_STREAM])
    state, previous = rollout.initial(1), None
    seconds: list[tuple[float, float, float]] = []
    frames: list[tuple[np.ndarray, np.ndarray]] = []
    kept: list[tuple[np.ndarray, object, float, bool]] = []
    terminated, length = False, 0
    while not done and length < steps:
        t0 = time.perf_counter()
        frame = envs.resize(envs.render_frame(env, observation), size)
        state = rollout.observe(state, frame[None], previous)
        t1 = time.perf_counter()
        action = explore(planner.act(state), env.action_space, exploration, noise)
        t2 = time.perf_counter()
        observation, reward, terminated, truncated, info = env.hold(action, min(env.repeat, steps - length))
        t3 = time.perf_counter()
        length += info["frames"]
        seconds.append((t1 - t0, t2 - t1, t3 - t2))
        total += float(reward)
        done = terminated or truncated
        previous = np.asarray([action])  # [1, A] float32 or [1] int
        if record:
            frames.append((frame, imagined_frame(rollout, planner)))
        if keep:
            kept.append((frame, action, float(reward), bool(terminated)))
        if on_step is not None:
            on_step(info["frames"])
    transitions = None
    if keep:
        obs, actions, rewards, ends = zip(*kept) if kept else ((), (), (), ())
        transitions = {
            "obs": np.asarray(obs, np.uint8).reshape(-1, size, size, 3),
            "action": np.asarray(actions, np.int64 if rollout.codec.mode == "discrete" else np.float32),
            "reward": np.asarray(rewards, np.float32),
            "terminated": np.asarray(ends, bool),
        }
    return Episode(PLANNER, seed, total, length, bool(terminated), _seconds(seconds), frames, transitions)


def explore(action, space, scale: float, rng: np.random.Generator):
    """The action taken instead of the planner's `action`, the one recorded and observed next: continuous actions
    plus Gaussian noise of std `scale` half-ranges of each dimension's bounds, clipped to them (PlaNet's 0.3);
    discrete ones replaced by a uniformly drawn action with probability `scale`. `scale` 0: `action` itself."""
    if scale == 0:
        return action
    if hasattr(space, "n"):
        return int(rng.integers(space.n)) if rng.random() < scale else action
    low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
    noisy = action + scale * (high - low) / 2 * rng.standard_normal(low.shape)
    return np.clip(noisy, low, high).astype(np.float32)


def episode_file_name(seed: int) -> str:
    """The file a kept planner episode of environment seed `seed` goes to (beside wm-collect's episode_NNNNN)."""
    return f"planner_{seed:05d}.npz"


def check_episode_folder(
    folder: Path, env_id: str, frame_size: int, seeds: Sequence[int], action_repeat: int = 1
) -> None:
    """Before any episode runs: ValueError when `folder` holds episodes of another environment, frame size or
    action repeat (its meta.json), or already holds the file of one of `seeds`."""
    meta = read_meta(folder)
    if meta is not None and (meta.get("env_id"), meta.get("frame_size")) != (env_id, frame_size):
        raise ValueError(
            f"{folder / META}: episodes of {meta.get('env_id')} at {meta.get('frame_size')} px, not {env_id} at "
            f"{frame_size} px; save into another folder"
        )
    if meta is not None and dataset_action_repeat(folder) != action_repeat:
        raise ValueError(
            f"{folder / META}: episodes recorded with action_repeat {dataset_action_repeat(folder)}, the model "
            f"holds each action {action_repeat} environment steps; save into another folder"
        )
    taken = [name for name in map(episode_file_name, seeds) if (folder / name).exists()]
    if taken:
        raise ValueError(f"{folder} already holds {', '.join(taken)}; use other seeds or another folder")


def save_planner_episodes(result: ControlResult, folder: Path) -> list[Path]:
    """Write the kept planner episodes of `result` into `folder` as episode files, one per seed. A meta.json
    there is left as it is (it describes the recording the folder started from)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for episode in result.episodes[PLANNER]:
        assert episode.transitions is not None, "run_control(keep_episodes=True) keeps them"
        path = folder / episode_file_name(episode.seed)
        save_episode(path, **episode.transitions)
        paths.append(path)
    return paths


def imagined_frame(rollout: Rollout | Ensemble, planner: Planner | ActorPolicy) -> np.ndarray:
    """The decoded latent at the horizon of the plan just chosen: uint8 [H, W, 3]."""
    assert planner.last_plan is not None  # called after act
    decoded = rollout.decode(planner.last_plan.z[-1:])  # [1, S] -> [1, H, W, 3] in [0, 1]
    return (np.clip(decoded[0], 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def policy_episode(
    env, name: str, seed: int, steps: int, skip: int, on_step: Callable[[int], None] | None = None
) -> Episode:
    """One episode driven by the policy `name` of wm_core.envs.POLICIES, seeded with the episode's seed, deciding
    at the environment's action repeat as the planner does."""
    observation, total, done = _start(env, seed, skip)
    env_id = env.spec.id if env.spec is not None else ""
    policy = envs.POLICIES[name](env_id, env.action_space, np.random.default_rng(seed))
    seconds: list[tuple[float, float, float]] = []
    terminated, length = False, 0
    while not done and length < steps:
        t0 = time.perf_counter()
        frame = envs.render_frame(env, observation)
        t1 = time.perf_counter()
        action = policy(frame)
        t2 = time.perf_counter()
        observation, reward, terminated, truncated, info = env.hold(action, min(env.repeat, steps - length))
        t3 = time.perf_counter()
        length += info["frames"]
        seconds.append((t1 - t0, t2 - t1, t3 - t2))
        total += float(reward)
        done = terminated or truncated
        if on_step is not None:
            on_step(info["frames"])
    return Episode(name, seed, total, length, bool(terminated), _seconds(seconds))


def _seconds(rows: list[tuple[float, float, float]]) -> np.ndarray:
    return np.asarray(rows, np.float64).reshape(-1, len(PARTS))
