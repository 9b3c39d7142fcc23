"""Record episodes of frames and actions from a gymnasium environment (`wm-collect`).

Episode i is recorded with seed `seed + i`, so a collection is the same whatever the number of workers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wm_core.publish import naming_failed_writes

from .data import npz_to_store, save_episode

# CarRacing zooms in on the car for its first 50 frames; those frames show no driving.
SKIP_START = {"CarRacing": 50}


def make_env(env_id: str):
    try:
        import gymnasium as gym
    except ImportError:
        raise ImportError('wm-collect needs gymnasium: pip install ".[envs]"') from None
    if env_id.startswith("ALE/"):
        try:
            import ale_py
        except ImportError:
            raise ImportError(f'{env_id} needs ale-py: pip install ".[envs]"') from None
        gym.register_envs(ale_py)
    try:
        env = gym.make(env_id)
        if not _is_pixel_space(env.observation_space):
            env.close()
            env = gym.make(env_id, render_mode="rgb_array")
    except gym.error.Error as error:
        raise ValueError(f"cannot make environment {env_id!r}: {error}") from None
    return env


def _is_pixel_space(space) -> bool:
    shape: tuple[int, ...] = getattr(space, "shape", None) or ()
    return len(shape) == 3 and shape[-1] == 3 and getattr(space, "dtype", None) == np.uint8


def resize(frame: np.ndarray, size: int) -> np.ndarray:
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


class CarRacingDriver:
    """Steers toward the road's centre a few rows ahead of the car, with noise, so the car drives the
    track and the data holds turns, speed changes and varied actions."""

    ROW_AHEAD, CAR_COLUMN = 60, 48

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.noise = 0.0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        row = frame[self.ROW_AHEAD].astype(np.int16)  # [96, 3] at the state resolution
        grey = (np.abs(row[:, 0] - row[:, 1]) < 12) & (row[:, 0] > 80) & (row[:, 0] < 140)
        offset = (np.flatnonzero(grey).mean() - self.CAR_COLUMN) / 12.0 if grey.any() else 0.0
        self.noise = 0.9 * self.noise + 0.1 * self.rng.normal(0.0, 1.0)
        steer = np.clip(offset + self.noise, -1.0, 1.0)
        gas = np.clip(0.25 + 0.2 * self.rng.normal(), 0.0, 1.0)
        brake = 0.4 if self.rng.random() < 0.03 else 0.0
        return np.array([steer, gas, brake], dtype=np.float32)


def make_policy(env_id: str, space, rng: np.random.Generator):
    return CarRacingDriver(rng) if env_id.startswith("CarRacing") else RandomPolicy(space, rng)


def record_episode(env_id: str, seed: int, steps: int, frame_size: int) -> tuple[np.ndarray, np.ndarray]:
    """-> obs uint8 [T, frame_size, frame_size, 3], action [T, A] float32 or [T] int64."""
    env = make_env(env_id)
    rng = np.random.default_rng(seed)
    policy = make_policy(env_id, env.action_space, rng)
    observation, _ = env.reset(seed=seed)
    skip = next((n for prefix, n in SKIP_START.items() if env_id.startswith(prefix)), 0)
    frames, actions = [], []
    for t in range(skip + steps):
        frame = observation if _is_pixel_space(env.observation_space) else env.render()
        action = policy(frame)
        if t >= skip:
            frames.append(resize(frame, frame_size))
            actions.append(action)
        observation, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    env.close()
    dtype = np.int64 if hasattr(env.action_space, "n") else np.float32
    return np.stack(frames), np.asarray(actions, dtype=dtype)


def _record_to_file(args) -> tuple[Path, int]:
    env_id, seed, steps, frame_size, path = args
    obs, action = record_episode(env_id, seed, steps, frame_size)
    save_episode(path, obs, action)
    return path, len(obs)


def collect(
    env_id: str,
    out_dir: str | Path,
    episodes: int,
    steps: int,
    seed: int = 0,
    frame_size: int = 64,
    workers: int = 2,
    progress: bool = True,
) -> list[Path]:
    """Record `episodes` episodes of at most `steps` steps into `out_dir/episode_XXXXX.npz`."""
    if episodes < 1 or steps < 1:
        raise ValueError(f"episodes and steps must be >= 1, got episodes={episodes} steps={steps}")
    if frame_size < 16 or frame_size % 16:
        raise ValueError(f"frame_size must be a multiple of 16, got {frame_size}")
    make_env(env_id).close()  # fail fast, in this process, on an unknown environment or a missing extra
    out_dir = Path(out_dir)
    with naming_failed_writes(out_dir):  # before minutes of recording, not after
        out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(env_id, seed + i, steps, frame_size, out_dir / f"episode_{i:05d}.npz") for i in range(episodes)]
    bar = tqdm(total=episodes, desc=f"collect {env_id}", unit="ep", disable=not progress)
    results: Iterable[tuple[Path, int]]
    if workers <= 1:
        results = map(_record_to_file, jobs)
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_record_to_file, jobs)
    paths, frames = [], 0
    for path, length in results:
        paths.append(path)
        frames += length
        bar.update()
        bar.set_postfix(frames=frames)
    bar.close()
    if workers > 1:
        pool.shutdown()
    return paths


def collect_to_store(
    env_id: str,
    store_dir: str | Path,
    episodes: int,
    steps: int,
    seed: int = 0,
    frame_size: int = 64,
    workers: int = 2,
    progress: bool = True,
) -> int:
    """Record episodes as `collect` does into an episode store at `store_dir` (through a temporary .npz folder
    beside it, deleted afterwards) -> the number of episodes."""
    store_dir = Path(store_dir)
    with naming_failed_writes(store_dir):
        store_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{store_dir.name}.", suffix=".npz", dir=store_dir.parent) as scratch:
        collect(env_id, scratch, episodes, steps, seed, frame_size, workers, progress)
        return npz_to_store(scratch, store_dir)
