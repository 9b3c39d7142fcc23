"""Record episodes of frames, actions, rewards and terminations from a gymnasium environment (`wm-collect`),
and the collection's meta.json.

Episode i is recorded with seed `seed + i`, so a collection is the same whatever the number of workers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wm_core.dataset_meta import META, build_meta, meta_bytes
from wm_core.envs import (
    POLICIES,
    describe_action_space,
    env_frameskip,
    make_env,
    policy_for,
    render_frame,
    resize,
    skip_start,
)
from wm_core.publish import atomic_write_bytes, naming_failed_writes

from .data import npz_to_store, save_episode


def record_episode(
    env_id: str, seed: int, steps: int, frame_size: int, policy: str | None = None, action_repeat: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Play `policy` (a name in wm_core.envs.POLICIES; None: wm-collect's policy for `env_id`) for one episode of
    at most `steps` decisions, each held for `action_repeat` environment steps (wm_core.action_repeat) -> obs
    uint8 [T, frame_size, frame_size, 3] (every action_repeat-th frame), action [T, A] float32 or [T] int64,
    reward float32 [T] and terminated bool [T], where reward[t] is the sum of the rewards of the environment steps
    that action[t] was held for and terminated[t] whether one of them terminated (a time-limit truncation ends
    the recording but is not terminated: the world did not end there). The unrecorded start (skip_start) is
    played by the policy one environment step a decision, whatever `action_repeat`."""
    env = make_env(env_id, action_repeat)
    rng = np.random.default_rng(seed)
    act = POLICIES[policy or policy_for(env_id)](env_id, env.action_space, rng)
    observation, _ = env.reset(seed=seed)
    skip = skip_start(env_id)
    frames, actions, rewards, ends = [], [], [], []
    for t in range(skip + steps):
        frame = render_frame(env, observation)
        action = act(frame)
        observation, reward, terminated, truncated, _ = env.step(action) if t >= skip else env.hold(action, 1)
        if t >= skip:
            frames.append(resize(frame, frame_size))
            actions.append(action)
            rewards.append(float(reward))
            ends.append(bool(terminated))
        if terminated or truncated:
            break
    env.close()
    dtype = np.int64 if hasattr(env.action_space, "n") else np.float32
    return (
        np.stack(frames),
        np.asarray(actions, dtype=dtype),
        np.asarray(rewards, dtype=np.float32),
        np.asarray(ends, dtype=bool),
    )


def _record_to_file(args) -> tuple[Path, int]:
    env_id, seed, steps, frame_size, policy, action_repeat, path = args
    obs, action, reward, terminated = record_episode(env_id, seed, steps, frame_size, policy, action_repeat)
    save_episode(path, obs, action, reward=reward, terminated=terminated)
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
    policy: str | None = None,
    action_repeat: int = 1,
) -> list[Path]:
    """Record `episodes` episodes of at most `steps` decisions played by `policy` (a name in
    wm_core.envs.POLICIES; None: wm_core.envs.policy_for(env_id)), each decision held for `action_repeat`
    environment steps (record_episode), into `out_dir/episode_XXXXX.npz`, then describe them in
    `out_dir/meta.json` (written once they are all there, so it never describes episodes that failed)."""
    if episodes < 1 or steps < 1:
        raise ValueError(f"episodes and steps must be >= 1, got episodes={episodes} steps={steps}")
    if frame_size < 16 or frame_size % 16:
        raise ValueError(f"frame_size must be a multiple of 16, got {frame_size}")
    policy = policy or policy_for(env_id)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {policy!r}")
    env = make_env(env_id, action_repeat)  # fail fast, here, on an unknown environment, a missing extra, a bad K
    action_space, frameskip = env.action_space, env_frameskip(env)
    env.close()
    describe_action_space(action_space)  # and on an action space episode files cannot hold
    out_dir = Path(out_dir)
    with naming_failed_writes(out_dir):  # before minutes of recording, not after
        out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        (env_id, seed + i, steps, frame_size, policy, action_repeat, out_dir / f"episode_{i:05d}.npz")
        for i in range(episodes)
    ]
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
    meta = build_meta(env_id, action_space, frame_size, seed, episodes, steps, frames, policy, action_repeat, frameskip)
    atomic_write_bytes(out_dir / META, meta_bytes(meta))
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
    policy: str | None = None,
    action_repeat: int = 1,
) -> int:
    """Record episodes as `collect` does into an episode store at `store_dir` (through a temporary .npz folder
    beside it, deleted afterwards); the store keeps their rewards, terminations and meta.json. -> the number of
    episodes."""
    store_dir = Path(store_dir)
    with naming_failed_writes(store_dir):
        store_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{store_dir.name}.", suffix=".npz", dir=store_dir.parent) as scratch:
        collect(env_id, scratch, episodes, steps, seed, frame_size, workers, progress, policy, action_repeat)
        return npz_to_store(scratch, store_dir)
