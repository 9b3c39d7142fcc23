"""Shared fixtures: a few short episodes recorded from real environments, and tiny configs over them."""

from __future__ import annotations

import numpy as np
import pytest

from wm_core.config import Config
from wm_train.collect import record_episode
from wm_train.data import save_episode


def _record(folder, env_id: str, episodes: int, steps: int):
    for i in range(episodes):
        obs, action = record_episode(env_id, seed=i, steps=steps, frame_size=64)
        save_episode(folder / f"episode_{i:05d}.npz", obs, action)
    return folder


@pytest.fixture(scope="session")
def carracing_dir(tmp_path_factory):
    """4 CarRacing-v3 episodes of 24 frames: continuous 3-d actions."""
    return _record(tmp_path_factory.mktemp("carracing"), "CarRacing-v3", 4, 24)


@pytest.fixture(scope="session")
def pong_dir(tmp_path_factory):
    """4 ALE/Pong-v5 episodes of 24 frames: 6 discrete actions."""
    return _record(tmp_path_factory.mktemp("pong"), "ALE/Pong-v5", 4, 24)


def tiny_config(data_dir, out_dir, action_mode: str = "continuous", action_dim: int = 3, **train) -> Config:
    return Config.from_dict(
        {
            "data": {"path": str(data_dir), "action_mode": action_mode, "seq_len": 8, "val_fraction": 0.25},
            "model": {"size": "tiny", "action_dim": action_dim},
            "train": {"out_dir": str(out_dir), "epochs": 2, "batch_size": 4, **train},
        }
    )


@pytest.fixture
def carracing_config(carracing_dir, tmp_path):
    return tiny_config(carracing_dir, tmp_path / "run")


@pytest.fixture
def random_batch():
    """obs [B=2, T=6, 3, 64, 64] in [0, 1] and encoded actions [2, 6, 3]."""
    rng = np.random.default_rng(0)
    import torch

    obs = torch.from_numpy(rng.random((2, 6, 3, 64, 64), dtype=np.float32))
    actions = torch.from_numpy(rng.standard_normal((2, 6, 3)).astype(np.float32))
    return obs, actions
