"""Training throughput of the default world model: frames per second and peak memory, in 1 and N processes.

A frame is one image of one training window (batch_size x seq_len per optimiser step, batch_size being the
global batch of all processes). The timing covers the whole step (batch assembly from the episodes, forward,
backward, the gradient all-reduce under DDP, clipping, AdamW), after warm-up steps. It also reports the
process's CPU time per step (all its threads), which depends less than the wall time on what else a shared
machine runs.

    python benchmarks/train_throughput.py [--config configs/carracing.yaml] [--steps 20] [--device cuda]
        [--nproc N] [--data FOLDER] [--json out.json] [--results docs/results/NAME.json]

On CUDA the device is synchronised before the clock is read at both ends. `--nproc N` also times N processes
trained with DistributedDataParallel (gloo on CPU, NCCL on CUDA, one GPU per process) at the same global batch,
started the way torchrun starts them; every process is synchronised (a barrier) before each clock read. On a
CPU machine the processes share the same cores, so expect no speed-up there: the N-process figure is meant for
machines with a GPU per process.

Peak resident memory is the largest of this process and (with --nproc) its children, from getrusage.
Without episode files at the config's data.path (or --data), random uint8 episodes of the same shape stand in
(the cost of a step does not depend on what the pixels show). --data may name an episode store as well.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wm_train import load_config
from wm_train.data import save_episode
from wm_train.distributed import setup
from wm_train.store import is_store
from wm_train.trainer import Trainer

from report import add_results_option, environment, markdown_table, progress, save_results

COLUMNS = [
    {"name": "processes", "format": "d"},
    {"name": "frames/s", "format": ".0f"},
    {"name": "ms/step", "format": ".1f"},
    {"name": "CPU ms/step", "format": ".0f"},
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/carracing.yaml")
    parser.add_argument("--steps", type=int, default=20, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: the config's train.device)")
    parser.add_argument("--nproc", type=int, default=1, help="also time this many DDP processes")
    parser.add_argument("--data", help="episode folder or store (default: the config's data.path)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="section.key=value (e.g. train.overshooting=3)"
    )
    add_results_option(parser)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        overrides = [f"train.out_dir={scratch}/run"] + ([f"train.device={args.device}"] if args.device else [])
        overrides += args.overrides
        overrides += [f"data.path={args.data}"] if args.data else []
        cfg = load_config(args.config, overrides)
        if not is_store(cfg.data.path) and not any(Path(cfg.data.path).glob("*.npz")):
            cfg.data.path = _random_episodes(Path(scratch) / "data", cfg)
        single = time_steps(cfg, args.steps, args.warmup)
        runs = [single]
        if args.nproc > 1:
            runs.append(time_processes(cfg, args.steps, args.warmup, args.nproc, Path(scratch)))

    t = cfg.train
    peak_gib = max(
        resource.getrusage(who).ru_maxrss / 2**20 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )  # Linux reports KiB
    device = single["device"]
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    print(
        f"config {args.config} {' '.join(args.overrides)}: global batch {t.batch_size} x seq_len "
        f"{cfg.data.seq_len}, data {cfg.data.path}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, {os.cpu_count()} CPUs"
    )
    rows = [[run["processes"], run["frames_per_s"], run["ms_per_step"], run["cpu_ms_per_step"]] for run in runs]
    print(markdown_table(COLUMNS, rows))
    print(f"{args.steps} timed steps; peak resident memory {peak_gib:.2f} GiB (largest single process)")
    if args.nproc > 1 and not device.startswith("cuda"):
        print("(CPU processes share the same cores: no speed-up is expected here; the figure is for GPU machines)")
    if args.json:
        figures = {
            "config": args.config,
            "data": cfg.data.path,
            "device": device,
            "gpu": gpu,
            "torch": torch.__version__,
            "batch_size": t.batch_size,
            "seq_len": cfg.data.seq_len,
            "steps": args.steps,
            "frames_per_s": single["frames_per_s"],
            "ms_per_step": single["ms_per_step"],
            "cpu_ms_per_step": single["cpu_ms_per_step"],
            "peak_rss_gib": peak_gib,
            "processes": runs,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if args.results:
        title = (
            f"Optimiser steps of {args.config} {' '.join(args.overrides)}".rstrip()
            + f" (global batch {t.batch_size} x {cfg.data.seq_len} frames); peak resident memory {peak_gib:.2f} GiB"
        )
        save_results(args.results, title, COLUMNS, rows, environment(device), peak_rss_gib=peak_gib)


def time_steps(cfg, steps: int, warmup: int, distributed=None) -> dict:
    """Time `steps` optimiser steps after `warmup` untimed ones, in this process (one rank of a run under DDP)."""
    trainer = Trainer(cfg, progress=False, dist=distributed)
    trainer.model.train()
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    for step in range(warmup + steps):
        if step == warmup:
            sync()
            trainer.dist.barrier()
            start = time.perf_counter()
            cpu_start = time.process_time()
        trainer.train_step()
    sync()
    trainer.dist.barrier()
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    frames = steps * cfg.train.batch_size * cfg.data.seq_len
    return {
        "processes": trainer.dist.world_size,
        "device": str(trainer.device),
        "frames_per_s": frames / seconds,
        "ms_per_step": seconds / steps * 1e3,
        "cpu_ms_per_step": cpu_seconds / steps * 1e3,
    }


def time_processes(cfg, steps: int, warmup: int, nproc: int, scratch: Path) -> dict:
    results = scratch / "ddp.json"
    mp.spawn(_rank, args=(nproc, cfg, steps, warmup, str(scratch / "store"), str(results)), nprocs=nproc)
    return json.loads(results.read_text())


def _rank(rank: int, nproc: int, cfg, steps: int, warmup: int, store: str, results: str) -> None:
    os.environ["LOCAL_RANK"] = str(rank)  # what torchrun sets: the trainer picks its GPU by it
    cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, torch.get_num_threads() // nproc))  # as torchrun's OMP_NUM_THREADS does
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{store}", rank=rank, world_size=nproc)
    figures = time_steps(cfg, steps, warmup, setup("cuda" if cuda else "cpu"))
    if rank == 0:
        Path(results).write_text(json.dumps(figures))
    dist.destroy_process_group()


def _random_episodes(folder: Path, cfg) -> str:
    rng = np.random.default_rng(0)
    size, dim = cfg.model.frame_size, cfg.model.action_dim
    for i in range(8):
        obs = rng.integers(0, 256, (200, size, size, 3), dtype=np.uint8)
        if cfg.data.action_mode == "discrete":
            action = rng.integers(0, dim, 200)
        else:
            action = rng.standard_normal((200, dim)).astype(np.float32)
        reward, terminated = rng.standard_normal(200).astype(np.float32), np.zeros(200, bool)  # for model.heads
        save_episode(folder / f"episode_{i:05d}.npz", obs, action, reward=reward, terminated=terminated)
    progress(f"no episodes at the config's data.path: timing on random frames in {folder}")
    return str(folder)


if __name__ == "__main__":
    main()
