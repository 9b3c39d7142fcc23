"""Episode files on disk, the train/validation split, and windows for training.

An episode is one `*.npz` file holding `obs` uint8 [T, H, W, 3] and `action`, float32 [T, A] (continuous) or
int64 [T] (discrete), where action[t] is taken after seeing obs[t]. A folder of them is read into memory whole;
an episode store (wm_train.store, converted from such a folder by `npz_to_store`) holds the same episodes with
their frames left on disk, for datasets larger than memory. `data.path` may name either: a folder holding
`store.json` is a store. Episodes recorded by `wm-collect` also hold `reward` float32 [T] and `terminated` bool
[T] (what env.step(action[t]) returned; a time-limit truncation is not terminated), which `model.heads` trains
on, and their folder a meta.json (wm_core.dataset_meta) that gives the action bounds. Episode files may hold
other per-step arrays [T, ...] (an object's position): `wm-eval --probe KEY` measures how well the latents
predict them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wm_core.actions import ActionCodec
from wm_core.config import Config
from wm_core.dataset_meta import META, box_bounds, read_meta
from wm_core.episode_file import save_episode  # noqa: F401  (wm_train.data.save_episode, as before)

from . import store

HEAD_ARRAYS = ("reward", "terminated")
"""the per-step arrays model.heads trains on (an episode store keeps them too)"""

# A window of an episode: (obs uint8 [T, H, W, 3], action [T, ...]) and, with model.heads, the heads' targets
# (reward float32 [T], continue float32 [T]).
Window = tuple[np.ndarray, ...]


def load_per_step(path: Path, key: str, frames: int) -> np.ndarray:
    """The per-step array `key` of one episode as float64 [T, K] (a [T] array becomes [T, 1])."""
    with np.load(path) as episode:
        if key not in episode.files:
            raise ValueError(f"{path}: no array {key!r} in the episode file; it holds {sorted(episode.files)}")
        values = episode[key]
    if values.ndim == 0 or len(values) != frames or values.dtype.kind not in "biuf":
        raise ValueError(
            f"{path}: {key!r} must be a numeric per-step array [{frames}, ...], got {values.dtype} {list(values.shape)}"
        )
    return values.reshape(frames, -1).astype(np.float64)


def check_head_arrays(source, reward: np.ndarray, terminated: np.ndarray, frames: int) -> None:
    """ValueError naming `source` unless `reward` is a finite numeric [frames] and `terminated` a bool [frames]."""
    if reward.shape != (frames,) or reward.dtype.kind not in "iuf" or not np.isfinite(reward).all():
        raise ValueError(
            f"{source}: 'reward' must be finite numbers [{frames}], got {reward.dtype} {list(reward.shape)}"
        )
    if terminated.shape != (frames,) or terminated.dtype != np.bool_:
        raise ValueError(
            f"{source}: 'terminated' must be bool [{frames}], got {terminated.dtype} {list(terminated.shape)}"
        )


def _missing_head_arrays(source, missing: list[str]) -> ValueError:
    return ValueError(
        f"{source}: model.heads trains on the per-step arrays {list(HEAD_ARRAYS)} but the episode has no {missing}; "
        "re-record the episodes with wm-collect, or set model.heads: false"
    )


def load_head_arrays(path: Path, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """reward float32 [T] and terminated bool [T] of one episode file; ValueError naming it when it lacks them."""
    with np.load(path) as episode:
        missing = [key for key in HEAD_ARRAYS if key not in episode.files]
        if missing:
            raise _missing_head_arrays(path, missing)
        reward, terminated = episode["reward"], episode["terminated"]
    check_head_arrays(path, reward, terminated, frames)
    return reward.astype(np.float32), terminated


def reward_targets(reward: np.ndarray, window: int, terminated: bool) -> np.ndarray:
    """float32 [T]: target[t] = mean of reward[t : t + window] (train.reward_window; the head learns the rate of
    reward, not the next tile event). Near the end of an episode that `terminated` the steps past it count as zero
    rewards (the world ended: nothing more comes), so the sum is still divided by `window`; dividing by the steps
    left would make a terminal -100 a -100 target at the last step. The end of an episode that did not terminate
    (a time limit, the end of a recording) hides what came next: the mean is over the steps left."""
    sums = np.concatenate([[0.0], np.cumsum(reward, dtype=np.float64)])  # sums[i] = reward[:i].sum()
    start = np.arange(len(reward))
    end = np.minimum(start + window, len(reward))
    steps = np.full(len(reward), window) if terminated else end - start
    return ((sums[end] - sums[start]) / steps).astype(np.float32)


def episode_paths(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder not found: {folder} (record episodes with `wm-collect`)")
    paths = sorted(p for p in folder.glob("*.npz") if not p.name.startswith("."))
    if not paths:
        raise FileNotFoundError(f"no episode files *.npz in {folder} (record episodes with `wm-collect`)")
    return paths


def load_episode(path: Path, action_mode: str, action_dim: int, frame_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one episode against the config; ValueError names the file, expected and actual."""
    try:
        with np.load(path) as episode:
            obs, action = episode["obs"], episode["action"]
    except KeyError as missing:
        raise ValueError(f"{path}: episode files need arrays 'obs' and 'action', missing {missing}") from None
    except Exception as error:
        raise ValueError(f"{path}: not a readable episode file ({type(error).__name__}: {error})") from None
    check_episode(path, obs, action, action_mode, action_dim, frame_size)
    return obs, action


def check_episode(source, obs, action: np.ndarray, action_mode: str, action_dim: int, frame_size: int) -> None:
    """ValueError naming `source`, the expected and the actual value when an episode does not fit the config;
    `obs` needs only `dtype` and `shape` (an array, or frames on disk)."""
    expected_frame = (frame_size, frame_size, 3)
    if obs.dtype != np.uint8 or len(obs.shape) != 4 or tuple(obs.shape[1:]) != expected_frame:
        raise ValueError(
            f"{source}: obs must be uint8 [T, {frame_size}, {frame_size}, 3], got {obs.dtype} {list(obs.shape)}"
        )
    data_mode = "discrete" if action.dtype.kind in "iu" else "continuous"
    if data_mode != action_mode:
        raise ValueError(
            f"{source}: config data.action_mode is '{action_mode}' but the file holds {data_mode} "
            f"actions ({action.dtype}); set data.action_mode: {data_mode}"
        )
    if data_mode == "discrete":
        if action.ndim != 1:
            raise ValueError(f"{source}: discrete actions must be [T], got {list(action.shape)}")
        if action.size and (action.min() < 0 or action.max() >= action_dim):
            raise ValueError(
                f"{source}: discrete actions must lie in [0, {action_dim - 1}] (model.action_dim="
                f"{action_dim}), got [{action.min()}, {action.max()}]"
            )
    elif action.ndim != 2 or action.shape[1] != action_dim:
        raise ValueError(
            f"{source}: continuous actions must be [T, {action_dim}] (model.action_dim), got {list(action.shape)}"
        )
    if len(action) != len(obs):
        raise ValueError(f"{source}: {len(obs)} frames but {len(action)} actions")


def split_episodes(paths: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic split by episode (file paths, or a store's episode names: only their order counts): at least
    one episode on each side."""
    if len(paths) < 2:
        raise ValueError(f"need at least 2 episodes to split train/validation, found {len(paths)}")
    order = np.random.default_rng(seed).permutation(len(paths))
    n_val = min(max(1, round(val_fraction * len(paths))), len(paths) - 1)
    return [paths[i] for i in sorted(order[n_val:])], [paths[i] for i in sorted(order[:n_val])]


@dataclass
class EpisodeSet:
    """Episodes of one split, held once as uint8 (in memory, or on disk for a store); windows are converted per
    batch."""

    obs: list[np.ndarray | store.DiskFrames]
    actions: list[np.ndarray]
    seq_len: int
    per_step: dict[str, list[np.ndarray]] = field(default_factory=dict)
    """arrays named by load_splits(per_step=...), one float64 [T, K] per episode"""
    rewards: list[np.ndarray] | None = None
    """with model.heads: the reward head's targets, float32 [T] per episode (reward_targets)"""
    continues: list[np.ndarray] | None = None
    """with model.heads: the continuation head's targets 1 - terminated, float32 [T] per episode"""
    reward_sampling: float = 0.0
    """share of each `sample` drawn among the windows whose reward targets are not all zero (data.reward_sampling)"""
    _rewarded: np.ndarray | None = field(default=None, repr=False)

    @property
    def frames(self) -> int:
        return sum(len(o) for o in self.obs)

    def _window(self, episode: int, start: int) -> Window:
        end = start + self.seq_len
        window = (self.obs[episode][start:end], self.actions[episode][start:end])
        if self.rewards is None or self.continues is None:
            return window
        return (*window, self.rewards[episode][start:end], self.continues[episode][start:end])

    def sample(self, rng: np.random.Generator, batch_size: int) -> list[Window]:
        """Windows at random offsets, episodes weighted by how many windows they hold; with `reward_sampling`, that
        share of them (rounded) drawn uniformly among the rewarded windows instead."""
        rewarded = self._rewarded_windows() if self.reward_sampling > 0 else np.zeros((0, 2), np.int64)
        picked = round(self.reward_sampling * batch_size) if len(rewarded) else 0
        counts = np.array([len(o) - self.seq_len + 1 for o in self.obs])
        episodes = rng.choice(len(self.obs), size=batch_size - picked, p=counts / counts.sum())
        starts = [int(rng.integers(counts[e])) for e in episodes]
        uniform = [self._window(e, s) for e, s in zip(episodes, starts)]
        if not picked:
            return uniform
        return uniform + [self._window(int(e), int(s)) for e, s in rewarded[rng.integers(len(rewarded), size=picked)]]

    def _rewarded_windows(self) -> np.ndarray:
        """[N, 2] (episode, start) of every window whose reward targets are not all zero (computed once)."""
        if self._rewarded is None:
            if self.rewards is None:
                raise ValueError("data.reward_sampling needs the reward targets of model.heads")
            found = []
            for e, targets in enumerate(self.rewards):
                nonzero = np.convolve(targets != 0, np.ones(self.seq_len), "valid") > 0  # [T - seq_len + 1]
                found += [(e, int(s)) for s in np.flatnonzero(nonzero)]
            self._rewarded = np.asarray(found, np.int64).reshape(-1, 2)
        return self._rewarded

    def fixed_windows(self) -> list[Window]:
        """Non-overlapping windows covering each episode: the same every epoch, for validation."""
        return [
            self._window(e, s)
            for e, o in enumerate(self.obs)
            for s in range(0, len(o) - self.seq_len + 1, self.seq_len)
        ]


def to_batch(windows, codec: ActionCodec, device: torch.device | str = "cpu"):
    """Windows -> obs float32 [B, T, 3, H, W] in [0, 1] and encoded actions float32 [B, T, A]."""
    obs = torch.from_numpy(np.stack([w[0] for w in windows])).to(device)  # [B, T, H, W, 3] uint8
    obs = obs.permute(0, 1, 4, 2, 3).float().div_(255.0)  # [B, T, H, W, 3] -> [B, T, 3, H, W]
    actions = torch.from_numpy(np.stack([w[1] for w in windows])).to(device)
    return obs, codec.encode(actions)


def head_targets(windows, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor] | None:
    """Windows -> the heads' targets: rewards float32 [B, T] and continues float32 [B, T]; None when the windows
    carry none (their episodes were loaded without model.heads)."""
    if not windows or len(windows[0]) < 4:
        return None
    rewards = torch.from_numpy(np.stack([w[2] for w in windows])).to(device)
    continues = torch.from_numpy(np.stack([w[3] for w in windows])).to(device)
    return rewards, continues


def load_splits(cfg: Config, per_step: tuple[str, ...] = ()) -> tuple[EpisodeSet, EpisodeSet, ActionCodec]:
    """Train and validation episodes and the action codec fitted on the training split (its bounds from the
    folder's meta.json when it has one); `per_step` names further arrays of the episode files to load
    (EpisodeSet.per_step). With model.heads every episode must hold `reward` and `terminated`."""
    d, m = cfg.data, cfg.model
    if store.is_store(d.path):
        names = [episode["name"] for episode in store.read_index(d.path)["episodes"]]

        def load(name: str | Path):
            obs, action = store.open_episode(d.path, str(name))
            check_episode(Path(d.path) / name, obs, action, d.action_mode, m.action_dim, m.frame_size)
            return obs, action

        def load_heads(name: str | Path, frames: int) -> tuple[np.ndarray, np.ndarray]:
            files = {key: store.per_step_path(d.path, str(name), key) for key in HEAD_ARRAYS}
            missing = [key for key, file in files.items() if not file.is_file()]
            if missing:
                raise _missing_head_arrays(Path(d.path) / str(name), missing)
            reward, terminated = (np.load(file) for file in files.values())
            check_head_arrays(Path(d.path) / str(name), reward, terminated, frames)
            return reward.astype(np.float32), terminated

    else:
        names = episode_paths(d.path)

        def load(name: str | Path):
            return load_episode(Path(name), d.action_mode, m.action_dim, m.frame_size)

        def load_heads(name: str | Path, frames: int) -> tuple[np.ndarray, np.ndarray]:
            return load_head_arrays(Path(name), frames)

    if per_step and store.is_store(d.path):
        raise ValueError(f"{d.path}: per-step arrays ({list(per_step)}) are read from .npz episode files, not a store")
    train_names, val_names = split_episodes(names, d.val_fraction, cfg.train.seed)
    splits = []
    for names in (train_names, val_names):
        episodes = [load(name) for name in names]
        labels = [Path(name).name for name in names]
        short = [label for label, (o, _) in zip(labels, episodes) if len(o) < d.seq_len]
        if short:
            warnings.warn(
                f"skipping {len(short)} episode(s) shorter than data.seq_len={d.seq_len}: {short[:5]}", stacklevel=2
            )
        kept = [(name, e) for name, e in zip(names, episodes) if len(e[0]) >= d.seq_len]
        if not kept:
            raise ValueError(f"{d.path}: no episode of {labels[:5]} has data.seq_len={d.seq_len} frames")
        arrays = {key: [load_per_step(name, key, len(o)) for name, (o, _) in kept] for key in per_step}
        split = EpisodeSet([o for _, (o, _) in kept], [a for _, (_, a) in kept], d.seq_len, arrays)
        if m.heads:
            heads = [load_heads(name, len(o)) for name, (o, _) in kept]
            window = cfg.train.reward_window
            split.rewards = [reward_targets(reward, window, bool(terminated[-1])) for reward, terminated in heads]
            split.continues = [1.0 - terminated.astype(np.float32) for _, terminated in heads]
        splits.append(split)
    train, val = splits
    train.reward_sampling = d.reward_sampling
    meta = read_meta(d.path)
    bounds = box_bounds(meta, d.path, m.action_dim) if meta is not None and d.action_mode == "continuous" else None
    codec = ActionCodec.fit(d.action_mode, m.action_dim, train.actions, bounds)
    _warn_if_actions_constant(train.actions)
    return train, val, codec


def _warn_if_actions_constant(actions: list[np.ndarray]) -> None:
    stacked = np.concatenate(actions)
    if len(stacked) and (stacked == stacked[0]).all():
        warnings.warn(
            "the training actions never vary: the RSSM cannot learn how actions act on the world; "
            "record data with a policy that acts",
            UserWarning,
            stacklevel=2,
        )


def npz_to_store(source: str | Path, target: str | Path, overwrite: bool = False) -> int:
    """Convert the folder of `*.npz` episodes at `source` into an episode store at `target`, one episode in
    memory at a time, keeping the folder's episode order (so both split alike), the episodes' rewards and
    terminations and the folder's meta.json. An existing store at `target` is replaced only with `overwrite`,
    any other non-empty folder never (store.check_store_destination). -> the number of episodes."""

    def episodes():
        first = None
        for path in episode_paths(source):
            with np.load(path) as episode:
                if "obs" not in episode or "action" not in episode:
                    raise ValueError(f"{path}: episode files need arrays 'obs' and 'action'")
                obs, action = episode["obs"], episode["action"]
                heads = {key: episode[key] for key in HEAD_ARRAYS if key in episode.files}
            mode = "discrete" if action.dtype.kind in "iu" else "continuous"
            if first is None:  # the first episode sets what the others must match
                dim = action.shape[1] if mode == "continuous" and action.ndim == 2 else int(np.iinfo(np.int64).max)
                first = (mode, dim, obs.shape[1] if obs.ndim == 4 else 0)
            check_episode(path, obs, action, *first)
            if heads:
                if len(heads) < len(HEAD_ARRAYS):
                    raise ValueError(
                        f"{path}: holds {sorted(heads)} of the per-step arrays {list(HEAD_ARRAYS)}, not all"
                    )
                check_head_arrays(path, heads["reward"], heads["terminated"], len(obs))
            yield path.stem, obs, action, heads

    files = {META: (Path(source) / META).read_bytes()} if read_meta(source) is not None else {}
    return store.write_store(target, episodes(), files, overwrite)
