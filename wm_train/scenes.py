"""A synthetic scene with one small object, generated in code: a dark dot on a white background, moved by
2-d continuous actions; whether the latents keep it tests them against posterior collapse (docs/evaluation.md,
"Small objects"). Each episode file also stores the dot's `position` (its centre in [0, 1]^2) and a `mask` of its
pixels, per step, for the probe and for error inside vs outside the object.

    from wm_train.scenes import write_dot_episodes
    write_dot_episodes("data/dot", episodes=40, steps=100)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import save_episode

DOT_COLOUR = (40, 40, 160)  # dark blue on white: every channel differs from the background
SPEED = 3.0  # pixels per step at |action| = 1


def dot_episode(
    rng: np.random.Generator, steps: int, frame_size: int = 64, dot: int = 3, hold: int = 4
) -> dict[str, np.ndarray]:
    """One episode: obs uint8 [T, H, W, 3], action float32 [T, 2] in [-1, 1] (held for `hold` steps),
    position float32 [T, 2] (x, y of the dot's centre in [0, 1]), mask bool [T, H, W] (the dot's pixels).
    action[t] moves the dot between frame t and frame t + 1; it stops at the border."""
    if not 1 <= dot < frame_size:
        raise ValueError(f"dot must be in [1, {frame_size - 1}] pixels, got {dot}")
    action = np.repeat(rng.uniform(-1, 1, ((steps + hold - 1) // hold, 2)), hold, axis=0)[:steps].astype(np.float32)
    corner = rng.uniform(0, frame_size - dot, 2)
    obs = np.full((steps, frame_size, frame_size, 3), 255, dtype=np.uint8)
    mask = np.zeros((steps, frame_size, frame_size), dtype=bool)
    position = np.zeros((steps, 2), dtype=np.float32)
    for t in range(steps):
        x, y = np.round(corner).astype(int)
        obs[t, y : y + dot, x : x + dot] = DOT_COLOUR
        mask[t, y : y + dot, x : x + dot] = True
        position[t] = (corner + dot / 2) / frame_size
        corner = np.clip(corner + SPEED * action[t], 0, frame_size - dot)
    return {"obs": obs, "action": action, "position": position, "mask": mask}


def write_dot_episodes(
    folder: str | Path, episodes: int, steps: int, seed: int = 0, frame_size: int = 64, dot: int = 3
) -> list[Path]:
    """Write `episodes` dot episodes as episode_NNNNN.npz (episode i from seed + i)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(episodes):
        episode = dot_episode(np.random.default_rng(seed + i), steps, frame_size, dot)
        path = folder / f"episode_{i:05d}.npz"
        save_episode(path, episode.pop("obs"), episode.pop("action"), **episode)
        paths.append(path)
    return paths
