"""Gymnasium environments as the package sees them: making one, reading its frame, and the scripted policies
that record data. Shared by `wm-collect` (wm_train.collect) and the closed-loop controller (wm_deploy), which
must not import the trainer; gymnasium and ale-py are imported only when an environment is made.

Every environment made here is wrapped in wm_core.action_repeat.ActionRepeat: `step` holds an action for the
environment's action repeat K (1 unless asked for), `hold(action, frames)` for a given number of environment
steps (CarRacing's zoom at the start is skipped in environment steps, whatever K).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .actions import check_action_repeat

# CarRacing zooms in on the car for its first 50 frames; those frames show no driving.
SKIP_START = {"CarRacing": 50}


def make_env(env_id: str, action_repeat: int = 1):
    """The gymnasium environment `env_id`, rendering RGB frames when its observations are not pixels, each action
    held for `action_repeat` environment steps (ActionRepeat; on top of any frameskip of the environment's own).
    ImportError naming the extra when gymnasium or ale-py is missing; ValueError for an unknown id."""
    try:
        import gymnasium as gym
    except ImportError:
        raise ImportError('environments need gymnasium: pip install ".[envs]"') from None
    from .action_repeat import ActionRepeat

    check_action_repeat(action_repeat)
    if env_id.startswith("ALE/"):
        try:
            import ale_py
        except ImportError:
            raise ImportError(f'{env_id} needs ale-py: pip install ".[envs]"') from None
        gym.register_envs(ale_py)
    try:
        env = gym.make(env_id)
        if not is_pixel_space(env.observation_space):
            env.close()
            env = gym.make(env_id, render_mode="rgb_array")
    except gym.error.Error as error:
        raise ValueError(f"cannot make environment {env_id!r}: {error}") from None
    return ActionRepeat(env, action_repeat)


def env_frameskip(env) -> int | None:
    """Emulator frames each step of `env` takes inside, before any action repeat of ours: the `frameskip` its
    spec makes it with (ALE's v5 environments: 4), else 1; None when it is drawn at random (a range)."""
    spec = getattr(env, "spec", None)
    frameskip = (spec.kwargs if spec is not None else {}).get("frameskip", 1)
    return frameskip if isinstance(frameskip, int) else None


def is_pixel_space(space) -> bool:
    """True for an observation space of RGB frames uint8 [H, W, 3]."""
    shape: tuple[int, ...] = getattr(space, "shape", None) or ()
    return len(shape) == 3 and shape[-1] == 3 and getattr(space, "dtype", None) == np.uint8


def render_frame(env, observation) -> np.ndarray:
    """The RGB frame uint8 [H, W, 3] of the step that returned `observation`: the observation itself when the
    environment observes pixels, else its rendering (make_env asks for rgb_array rendering then)."""
    return observation if is_pixel_space(env.observation_space) else env.render()


def skip_start(env_id: str) -> int:
    """Steps at the start of an episode of `env_id` that show nothing worth recording (SKIP_START)."""
    return next((n for prefix, n in SKIP_START.items() if env_id.startswith(prefix)), 0)


def resize(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3], bilinear."""
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BILINEAR))


class RandomPolicy:
    """Random actions held for a few steps (so frames show motion), smoothed for continuous spaces."""

    def __init__(self, space, rng: np.random.Generator):
        self.space, self.rng = space, rng
        self.discrete = hasattr(space, "n")
        self.action: int | np.ndarray | None = None
        self.hold = 0

    def __call__(self, frame: np.ndarray):
        if self.discrete:
            if self.hold == 0:
                self.action, self.hold = int(self.rng.integers(self.space.n)), int(self.rng.integers(1, 8))
            self.hold -= 1
            return self.action
        low, high = self.space.low, self.space.high
        target = self.rng.uniform(low, high).astype(np.float32)
        self.action = target if self.action is None else 0.8 * self.action + 0.2 * target
        return self.action


def road_pixels(pixels: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> bool [...]: CarRacing's grey road (not grass, kerbs or the car)."""
    rgb = pixels.astype(np.int16)
    return (np.abs(rgb[..., 0] - rgb[..., 1]) < 12) & (rgb[..., 0] > 80) & (rgb[..., 0] < 140)


class CarRacingDriver:
    """Steers toward the road's centre a few rows ahead of the car, with noise, so the car drives the
    track and the data holds turns, speed changes and varied actions."""

    ROW_AHEAD, CAR_COLUMN = 60, 48

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.noise = 0.0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        grey = road_pixels(frame[self.ROW_AHEAD])  # [96] at the state resolution
        offset = (np.flatnonzero(grey).mean() - self.CAR_COLUMN) / 12.0 if grey.any() else 0.0
        self.noise = 0.9 * self.noise + 0.1 * self.rng.normal(0.0, 1.0)
        steer = np.clip(offset + self.noise, -1.0, 1.0)
        gas = np.clip(0.25 + 0.2 * self.rng.normal(), 0.0, 1.0)
        brake = 0.4 if self.rng.random() < 0.03 else 0.0
        return np.array([steer, gas, brake], dtype=np.float32)


class CarRacingExplorer(CarRacingDriver):
    """The driver, interrupted by excursions: every EXCURSION_EVERY steps on average, a random action (any
    steering, gas and brake) held for 6-31 steps takes the car off its line, often off the road, and the driver
    then steers back to the nearest road it sees. Its speed changes too (a gas level held 20-60 steps). The
    lane-following driver's data hardly leaves the road or changes speed, which is what a planner tries first
    (docs/control.md); these episodes show the model what such actions do."""

    EXCURSION_EVERY = 60

    def __init__(self, rng: np.random.Generator):
        super().__init__(rng)
        self.excursion: np.ndarray | None = None
        self.steps_left = 0
        self.gas, self.gas_steps = 0.3, 0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if self.steps_left > 0:
            self.steps_left -= 1
            assert self.excursion is not None  # set with steps_left
            return self.excursion.copy()
        if self.rng.random() < 1.0 / self.EXCURSION_EVERY:  # held for this step and 5-30 more
            brake = self.rng.uniform(0.0, 0.8) if self.rng.random() < 0.3 else 0.0
            self.excursion = np.array([self.rng.uniform(-1, 1), self.rng.uniform(0, 1), brake], dtype=np.float32)
            self.steps_left = int(self.rng.integers(5, 31))
            return self.excursion.copy()
        if self.gas_steps == 0:
            self.gas, self.gas_steps = float(self.rng.uniform(0.05, 0.6)), int(self.rng.integers(20, 61))
        self.gas_steps -= 1
        action = super().__call__(frame)
        action[0] = np.clip(road_offset(frame) + self.noise, -1.0, 1.0)
        action[1] = self.gas
        return action


def road_offset(frame: np.ndarray) -> float:
    """Steering towards the road: the offset of the road's centre from the car, in CarRacingDriver's units, on
    the row ahead when it shows road, else on the nearest row above the car that does; 0 when none does."""
    grey = road_pixels(frame[: CarRacingDriver.ROW_AHEAD + 1])  # [61, 96]: the rows ahead of the car
    seen = np.flatnonzero(grey.any(axis=1))
    if not len(seen):
        return 0.0
    return (np.flatnonzero(grey[seen[-1]]).mean() - CarRacingDriver.CAR_COLUMN) / 12.0


# name -> factory(env_id, action space, rng) -> a policy: frame uint8 [H, W, 3] at the environment's resolution
# -> an action of the space. The name is what meta.json records, so a dataset says how it was acted in.
POLICIES: dict[str, Callable[[str, Any, np.random.Generator], Callable[[np.ndarray], Any]]] = {
    "random": lambda env_id, space, rng: RandomPolicy(space, rng),
    "carracing-driver": lambda env_id, space, rng: CarRacingDriver(rng),
    "carracing-explorer": lambda env_id, space, rng: CarRacingExplorer(rng),
}


def policy_for(env_id: str) -> str:
    """The name (in POLICIES) of the policy wm-collect records `env_id` with: the road-following driver for
    CarRacing (random steering rarely stays on the track), random held actions elsewhere."""
    return "carracing-driver" if env_id.startswith("CarRacing") else "random"


def describe_action_space(space) -> dict:
    """The action space as plain data: {"type": "box", "shape", "low", "high"} (a non-finite bound is None,
    since JSON has no infinity) or {"type": "discrete", "n"}. ValueError for any other space: episode files
    hold float32 [T, A] or int64 [T] actions, nothing else."""
    if hasattr(space, "n") and getattr(space, "start", 0) == 0:
        return {"type": "discrete", "n": int(space.n)}
    low, high, shape = getattr(space, "low", None), getattr(space, "high", None), getattr(space, "shape", None)
    if low is not None and high is not None and shape is not None and len(shape) == 1:

        def bounds(values: np.ndarray) -> list[float | None]:
            return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]

        return {"type": "box", "shape": [int(shape[0])], "low": bounds(low), "high": bounds(high)}
    raise ValueError(f"action space {space} is not supported: episodes need a 1-d Box or a Discrete space from 0")
