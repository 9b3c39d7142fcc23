"""meta.json: what a folder of episodes (or a store converted from one) was recorded from.

    {"format": "wm-episodes", "format_version": 1, "env_id": "CarRacing-v3",
     "action_space": {"type": "box", "shape": [A], "low": [...], "high": [...]} | {"type": "discrete", "n": N},
     "frame_size": 64, "policy": "carracing-driver", "seed": 0, "episodes": 100, "steps": 1000,
     "frames": 100000, "skip_start": 50, "action_repeat": 4, "env_frameskip": 1,
     "versions": {"gymnasium": ..., "wm": ...}}

`seed` is the first episode's (episode i is recorded with seed + i), `steps` the most steps (decisions) an
episode was recorded for, `frames` how many were recorded in all, `skip_start` how many environment steps at the
start of each episode were not recorded. `action_repeat` K: each recorded action was held for K environment steps
and a frame recorded every K-th (wm_core.action_repeat; a meta.json without the key reads as 1);
`env_frameskip`: the frames each environment step takes inside (ALE's v5 environments: 4; null when random).
A bound of the box that is not finite is null (JSON has no infinity). Training reads the action bounds from it
(the action codec's low/high) and the action repeat (into the checkpoint); episode folders without one still load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .actions import read_action_repeat

META = "meta.json"
FORMAT = "wm-episodes"
FORMAT_VERSION = 1


def build_meta(
    env_id: str,
    action_space,
    frame_size: int,
    seed: int,
    episodes: int,
    steps: int,
    frames: int,
    policy: str,
    action_repeat: int = 1,
    env_frameskip: int | None = 1,
) -> dict:
    """The meta.json of a collection recorded by wm-collect from `env_id` with `policy` (a name in POLICIES),
    each action held for `action_repeat` environment steps of `env_frameskip` frames."""
    from importlib.metadata import PackageNotFoundError, version

    import gymnasium

    from wm_core.envs import describe_action_space, skip_start

    try:
        package = version("wm")
    except PackageNotFoundError:
        package = "unknown"
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "env_id": env_id,
        "action_space": describe_action_space(action_space),
        "frame_size": frame_size,
        "policy": policy,
        "seed": seed,
        "episodes": episodes,
        "steps": steps,
        "frames": frames,
        "skip_start": skip_start(env_id),
        "action_repeat": action_repeat,
        "env_frameskip": env_frameskip,
        "versions": {"gymnasium": gymnasium.__version__, "wm": package},
    }


def meta_bytes(meta: dict) -> bytes:
    return (json.dumps(meta, indent=1) + "\n").encode()


def read_meta(folder: str | Path) -> dict | None:
    """The meta.json of the episode folder or store at `folder`, None when it has none; ValueError naming the
    file when it is not a readable meta.json of this format."""
    file = Path(folder) / META
    if not file.is_file():
        return None
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{file}: not a readable meta.json ({type(error).__name__}: {error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{file}: not a dataset meta.json (format {found!r}, expected {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file}: meta.json format version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    return meta


def box_bounds(meta: dict, folder: str | Path, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(low, high) float64 [dim] of the box action space `meta` records (NaN where a bound is not finite), None
    for a discrete space; ValueError naming the file when the box does not have `dim` dimensions."""
    space = meta.get("action_space")
    file = Path(folder) / META
    if not isinstance(space, dict) or space.get("type") not in ("box", "discrete"):
        raise ValueError(f"{file}: action_space must be a box or a discrete space, got {space!r}")
    if space["type"] == "discrete":
        return None
    low, high = space.get("low"), space.get("high")
    if not isinstance(low, list) or not isinstance(high, list) or not len(low) == len(high) == dim:
        raise ValueError(
            f"{file}: the box action space needs low and high of {dim} values (model.action_dim), got "
            f"low={low!r} high={high!r}"
        )

    def values(bounds: list) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in bounds], dtype=np.float64)

    return values(low), values(high)


def dataset_action_repeat(folder: str | Path) -> int:
    """The action repeat of the episodes at `folder` (an episode folder or store): its meta.json's, 1 without
    one or without the key (recorded before it existed); ValueError naming the file for a bad value."""
    meta = read_meta(folder)
    return 1 if meta is None else read_action_repeat(meta, str(Path(folder) / META))
