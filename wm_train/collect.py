"""Record episodes of frames, actions, rewards and terminations from a gymnasium environment (`wm-collect`),
and the collection's meta.json.

Episode i is recorded with seed `seed + i`, so a collection is the same whatever the number of workers, and
one recorded in two parts (`append`) is the same as one recorded at once.

A collection is built in a folder beside `out_dir` and renamed into place when meta.json is written, so a
folder named `out_dir` is always complete. It never replaces a folder it did not write (wm_core.publish
.check_replaceable: meta.json is its marker); `append` adds episodes to an earlier collection of the same
environment, action space, frame size, policy and seed instead.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wm_core.dataset_meta import META, build_meta, meta_bytes, read_meta
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
from wm_core.publish import atomic_write_bytes, check_replaceable, naming_failed_writes, staged_dir

from .data import npz_to_store, save_episode
from .store import check_store_destination

EPISODE_FILE = "episode_{:05d}.npz"
"""episode i of a collection"""


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
    overwrite: bool = False,
    append: bool = False,
) -> list[Path]:
    """Record `episodes` episodes of at most `steps` decisions played by `policy` (a name in
    wm_core.envs.POLICIES; None: wm_core.envs.policy_for(env_id)), each decision held for `action_repeat`
    environment steps (record_episode), into `out_dir/episode_XXXXX.npz` and describe them in
    `out_dir/meta.json`. -> the paths of the episodes recorded.

    Without `append` the collection is built beside `out_dir` and renamed into place complete; an existing
    non-empty `out_dir` is replaced only if it is a collection (its meta.json lists every file in it), and only
    with `overwrite`. With `append` the episodes are added to the collection at `out_dir` (`check_append`),
    numbered after its last, and its meta.json is rewritten once they are all there."""
    if episodes < 1 or steps < 1:
        raise ValueError(f"episodes and steps must be >= 1, got episodes={episodes} steps={steps}")
    if frame_size < 16 or frame_size % 16:
        raise ValueError(f"frame_size must be a multiple of 16, got {frame_size}")
    if append and overwrite:
        raise ValueError("append and overwrite exclude each other: append adds episodes, overwrite replaces them")
    policy = policy or policy_for(env_id)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {policy!r}")
    env = make_env(env_id, action_repeat)  # fail fast, here, on an unknown environment, a missing extra, a bad K
    action_space, frameskip = env.action_space, env_frameskip(env)
    env.close()
    describe_action_space(action_space)  # and on an action space episode files cannot hold
    out_dir = Path(out_dir)
    settings = (env_id, steps, frame_size, policy, action_repeat, workers, progress)
    if append:
        earlier = check_append(out_dir, env_id, action_space, frame_size, policy, seed, action_repeat)
        first = earlier["episodes"] if earlier else 0
        with naming_failed_writes(out_dir):  # before minutes of recording, not after
            out_dir.mkdir(parents=True, exist_ok=True)
        paths, frames = _record(out_dir, range(first, first + episodes), seed, *settings)
        total = build_meta(
            env_id, action_space, frame_size, seed, first + episodes, steps, frames, policy, action_repeat, frameskip
        )
        if earlier:
            total["steps"] = max(steps, earlier["steps"])
            total["frames"] = frames + earlier["frames"]
        atomic_write_bytes(out_dir / META, meta_bytes(total))
        return paths
    check_collection_destination(out_dir, overwrite)  # before minutes of recording, not after
    with staged_dir(out_dir, check=lambda: check_collection_destination(out_dir, overwrite)) as folder:
        paths, frames = _record(folder, range(episodes), seed, *settings)
        meta = build_meta(
            env_id, action_space, frame_size, seed, episodes, steps, frames, policy, action_repeat, frameskip
        )
        (folder / META).write_bytes(meta_bytes(meta))
    return [out_dir / path.name for path in paths]


def _record(
    folder: Path,
    indices: range,
    seed: int,
    env_id: str,
    steps: int,
    frame_size: int,
    policy: str,
    action_repeat: int,
    workers: int,
    progress: bool,
) -> tuple[list[Path], int]:
    """Record episode i (seed `seed + i`) into `folder/episode_XXXXX.npz` for each i in `indices` -> (paths,
    frames recorded)."""
    jobs = [
        (env_id, seed + i, steps, frame_size, policy, action_repeat, folder / EPISODE_FILE.format(i)) for i in indices
    ]
    bar = tqdm(total=len(jobs), desc=f"collect {env_id}", unit="ep", disable=not progress)
    results: Iterable[tuple[Path, int]]
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    results = pool.map(_record_to_file, jobs) if pool is not None else map(_record_to_file, jobs)
    paths, frames = [], 0
    try:
        for path, length in results:
            paths.append(path)
            frames += length
            bar.update()
            bar.set_postfix(frames=frames)
    finally:
        # On an error, wait for the episodes being written: a worker still writing would leave its temporary
        # file in the staging folder after the caller deleted it.
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return paths, frames


def check_collection_destination(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse a non-empty `out_dir` unless it is a collection whose meta.json lists every file in it, and that
    only with `overwrite` (wm_core.publish.check_replaceable)."""
    check_replaceable(out_dir, overwrite, "episode folder", META, collection_files)


def collection_files(folder: str | Path) -> set[str]:
    """The files wm-collect wrote in the collection at `folder`: meta.json and the episodes it counts."""
    meta = read_meta(folder)
    assert meta is not None  # check_replaceable asks only where meta.json is present
    return {META, *(EPISODE_FILE.format(i) for i in range(int(meta["episodes"])))}


def check_append(
    out_dir: Path, env_id: str, action_space, frame_size: int, policy: str, seed: int, action_repeat: int = 1
) -> dict | None:
    """The meta.json of the collection at `out_dir` that episodes recorded with these settings may be appended
    to; None if `out_dir` is missing or empty. ValueError / FileExistsError naming what does not match: a
    collection is one environment, action space, frame size, policy and action repeat, with episode i seeded
    `seed + i`."""
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        if out_dir.exists() and not out_dir.is_dir():
            raise FileExistsError(f"episode folder path {out_dir} exists and is not a folder")
        return None
    meta = read_meta(out_dir)
    if meta is None:
        raise FileExistsError(f"cannot append to {out_dir}: it has no {META}, so wm-collect did not write it")
    here = {
        "env_id": env_id,
        "action_space": json.loads(json.dumps(describe_action_space(action_space))),
        "frame_size": frame_size,
        "policy": policy,
        "seed": seed,
        "action_repeat": action_repeat,
    }
    recorded = {**here, **meta, "action_repeat": meta.get("action_repeat", 1)}  # absent: recorded before K existed
    differ = [f"{key} {recorded[key]!r} (given: {value!r})" for key, value in here.items() if recorded[key] != value]
    if differ:
        raise ValueError(f"cannot append to {out_dir}: its {META} records {'; '.join(differ)}")
    count = meta.get("episodes")
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"{out_dir / META}: episodes must be a count, got {count!r}")
    missing = [name for name in map(EPISODE_FILE.format, range(count)) if not (out_dir / name).is_file()]
    if missing:
        raise ValueError(f"cannot append to {out_dir}: its {META} counts {count} episodes but {missing[0]} is missing")
    others = [p.name for p in out_dir.glob("*.npz") if not re.fullmatch(r"episode_\d{5}\.npz", p.name)]
    if others:
        raise ValueError(f"cannot append to {out_dir}: it holds episode files wm-collect did not name ({others[0]})")
    return meta


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
    overwrite: bool = False,
) -> int:
    """Record episodes as `collect` does into an episode store at `store_dir` (through a temporary .npz folder
    beside it, deleted afterwards); the store keeps their rewards, terminations and meta.json. An existing store
    is replaced only with `overwrite`, any other non-empty folder never. -> the number of episodes."""
    store_dir = Path(store_dir)
    check_store_destination(store_dir, overwrite)  # before minutes of recording, not after
    with naming_failed_writes(store_dir):
        store_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{store_dir.name}.", suffix=".npz", dir=store_dir.parent) as scratch:
        collect(
            env_id, scratch, episodes, steps, seed, frame_size, workers, progress, policy, action_repeat, overwrite=True
        )
        return npz_to_store(scratch, store_dir, overwrite)
