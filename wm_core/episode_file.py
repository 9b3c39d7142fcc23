"""One episode file (`.npz`), as wm-collect records it and `wm-control --save-episodes` keeps the planner's:
obs uint8 [T, H, W, 3] (the frame before action t), action [T, ...], and per-step arrays such as reward float32
[T] (received after action t) and terminated bool [T]. docs/data.md, "Data format", is the contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .publish import atomic_write


def save_episode(path: str | Path, obs: np.ndarray, action: np.ndarray, **per_step: np.ndarray) -> None:
    """Write one episode atomically (temporary file + rename), so a crash never leaves half a file. `per_step`
    are further arrays [T, ...] stored under their names (e.g. reward=...)."""
    atomic_write(path, lambda file: np.savez_compressed(file, obs=obs, action=action, **per_step))  # type: ignore[arg-type]  # numpy stubs type **kwds as the allow_pickle flag
