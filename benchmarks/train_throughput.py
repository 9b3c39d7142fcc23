"""Training throughput of the default world model: frames per second and peak memory.

A frame is one image of one training window (batch_size x seq_len per optimiser step). The timing covers the
whole step (batch assembly from uint8 episodes, forward, backward, clipping, AdamW), after warm-up steps.

    python benchmarks/train_throughput.py [--config configs/carracing.yaml] [--steps 20]

Without episode files at the config's data.path, random uint8 episodes of the same shape stand in (the cost
of a step does not depend on what the pixels show).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wm_train import load_config
from wm_train.data import save_episode
from wm_train.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/carracing.yaml")
    parser.add_argument("--steps", type=int, default=20, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        cfg = load_config(args.config, [f"train.out_dir={scratch}/run"])
        if not any(Path(cfg.data.path).glob("*.npz")):
            cfg.data.path = _random_episodes(Path(scratch) / "data", cfg)
        trainer = Trainer(cfg, progress=False)
        trainer.model.train()
        t = cfg.train
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                start = time.perf_counter()
            trainer.train_step()
        seconds = time.perf_counter() - start

    frames = args.steps * t.batch_size * cfg.data.seq_len
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    print(
        f"config {args.config}: batch {t.batch_size} x seq_len {cfg.data.seq_len}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {trainer.device}"
    )
    print(
        f"{frames / seconds:.0f} frames/s ({seconds / args.steps * 1e3:.0f} ms/step over {args.steps} steps); "
        f"peak resident memory {peak_gib:.2f} GiB"
    )


def _random_episodes(folder: Path, cfg) -> str:
    rng = np.random.default_rng(0)
    size, dim = cfg.model.frame_size, cfg.model.action_dim
    for i in range(8):
        obs = rng.integers(0, 256, (200, size, size, 3), dtype=np.uint8)
        if cfg.data.action_mode == "discrete":
            action = rng.integers(0, dim, 200)
        else:
            action = rng.standard_normal((200, dim)).astype(np.float32)
        save_episode(folder / f"episode_{i:05d}.npz", obs, action)
    print(f"no episodes at the config's data.path: timing on random frames in {folder}", file=sys.stderr)
    return str(folder)


if __name__ == "__main__":
    main()
