"""Training from an episode store against training from episodes held in memory: frames/s and batch assembly.

    python benchmarks/store_throughput.py --npz FOLDER --store STORE [--config configs/carracing.yaml]
        [--rounds 6] [--steps 5]

Both trainers live in this one process, built from the same config with data.path set to the .npz folder and to
the store of the same episodes; their steps are timed in alternating blocks (`--rounds` blocks of `--steps`
optimiser steps each, after a warm-up step), so a busy machine slows both alike. A step covers batch assembly,
forward, backward, clipping and AdamW. Reported: frames/s of each (total frames over total time of its blocks),
the ratio store / in memory, and the time of batch assembly alone (sampling the windows and converting them to
a float batch, the only part that differs), median of 50 batches each.

Peak resident memory is not measured here (two trainers share the process): `train_throughput.py --data STORE`
gives it for one trainer.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wm_train import load_config
from wm_train.data import to_batch
from wm_train.trainer import Trainer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", required=True, help="folder of *.npz episodes")
    parser.add_argument("--store", required=True, help="the store converted from it (wm-store)")
    parser.add_argument("--config", default="configs/carracing.yaml")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5, help="optimiser steps per timed block")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        trainers = {}
        for name, path in (("in memory", args.npz), ("store", args.store)):
            cfg = load_config(args.config, [f"data.path={path}", f"train.out_dir={scratch}/{name}"])
            trainers[name] = Trainer(cfg, progress=False)
            trainers[name].model.train()
            trainers[name].train_step()  # warm-up
        seconds = dict.fromkeys(trainers, 0.0)
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    trainer.train_step()
                seconds[name] += time.perf_counter() - start
        assembly = {name: assembly_seconds(trainer) for name, trainer in trainers.items()}

    t = cfg.train
    frames = args.rounds * args.steps * t.batch_size * cfg.data.seq_len
    figures = {
        "config": args.config,
        "batch_size": t.batch_size,
        "seq_len": cfg.data.seq_len,
        "frames_per_s": {name: frames / s for name, s in seconds.items()},
        "batch_assembly_ms": {name: s * 1e3 for name, s in assembly.items()},
    }
    figures["store_vs_memory"] = figures["frames_per_s"]["store"] / figures["frames_per_s"]["in memory"]
    print(f"config {args.config}: batch {t.batch_size} x seq_len {cfg.data.seq_len}, {torch.get_num_threads()} threads")
    for name in trainers:
        print(
            f"{name:>9}: {figures['frames_per_s'][name]:.0f} frames/s; batch assembly "
            f"{figures['batch_assembly_ms'][name]:.2f} ms"
        )
    print(f"store / in memory: {figures['store_vs_memory']:.1%} of the frames/s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


def assembly_seconds(trainer: Trainer, batches: int = 50) -> float:
    """Median time to sample a batch of windows and turn it into the model's input."""
    rng = np.random.default_rng(0)
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        to_batch(trainer.train_set.sample(rng, trainer.rank_batch), trainer.codec, trainer.device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


if __name__ == "__main__":
    main()
