"""Training throughput of the default world model: frames per second and peak memory.

A frame is one image of one training window (batch_size x seq_len per optimiser step). The timing covers the
whole step (batch assembly from uint8 episodes, forward, backward, clipping, AdamW), after warm-up steps.

    python benchmarks/train_throughput.py [--config configs/carracing.yaml] [--steps 20] [--device cuda]

On CUDA the device is synchronised before the clock is read at both ends.

Without episode files at the config's data.path, random uint8 episodes of the same shape stand in (the cost
of a step does not depend on what the pixels show).
"""

from __future__ import annotations

import argparse
import json
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/carracing.yaml")
    parser.add_argument("--steps", type=int, default=20, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: the config's train.device)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="section.key=value (e.g. train.overshooting=3)"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        overrides = [f"train.out_dir={scratch}/run"] + ([f"train.device={args.device}"] if args.device else [])
        overrides += args.overrides
        cfg = load_config(args.config, overrides)
        if not any(Path(cfg.data.path).glob("*.npz")):
            cfg.data.path = _random_episodes(Path(scratch) / "data", cfg)
        trainer = Trainer(cfg, progress=False)
        trainer.model.train()
        t = cfg.train
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                sync()
                start = time.perf_counter()
            trainer.train_step()
        sync()
        seconds = time.perf_counter() - start

    frames = args.steps * t.batch_size * cfg.data.seq_len
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    gpu = torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else None
    print(
        f"config {args.config} {' '.join(args.overrides)}: batch {t.batch_size} x seq_len {cfg.data.seq_len}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {trainer.device}"
    )
    print(
        f"{frames / seconds:.0f} frames/s ({seconds / args.steps * 1e3:.0f} ms/step over {args.steps} steps); "
        f"peak resident memory {peak_gib:.2f} GiB"
    )
    if args.json:
        figures = {
            "config": args.config,
            "device": str(trainer.device),
            "gpu": gpu,
            "torch": torch.__version__,
            "batch_size": t.batch_size,
            "seq_len": cfg.data.seq_len,
            "steps": args.steps,
            "frames_per_s": frames / seconds,
            "ms_per_step": seconds / args.steps * 1e3,
            "peak_rss_gib": peak_gib,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


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
