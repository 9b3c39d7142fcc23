"""The benchmarks' shared timing harness: how calls are timed (`time_calls`), how the samples are summarised,
the device's own matmul peak to compare with, and the random model a benchmark times when it is given none.
Reporting what was measured is benchmarks/report.py. The benchmark scripts beside this file import both
(`from timing import ...`: a script's own folder is on its import path); each says what its timed call
includes.

Every timed call is bracketed by device synchronisations, so a GPU's queued work is inside the timing and the
previous call's is not. Callables of one measurement take turns in blocks of calls, so that on a shared machine
they all see the same load, while within a block each keeps its caches warm as it would running alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import wm_core

BLOCKS = 10
"""turns per callable within a time budget (see `time_calls`)"""
MATMUL_SIZE = 2048
CPU_HALF_MATMUL_SIZE = 256
"""the half-precision peak's size on a CPU: one without native bfloat16 (no AVX-512 BF16) took 7 s for a 1024^2
bfloat16 matmul (0.17 s in float32), so 2048^2 calls would run for minutes each"""


@dataclass(frozen=True)
class Sampling:
    """How many calls each callable of a measurement is timed over (see `time_calls`)."""

    min_calls: int
    """timed calls at least"""
    max_calls: int
    """timed calls at most"""
    budget_s: float
    """seconds per callable: once `min_calls` are done, no block starts after it"""
    warmup_calls: int
    """untimed calls at most (a benchmark's own warm-up, such as `Rollout.warmup`, comes before)"""
    block_calls: int | None = None
    """calls per block; None: as many as fill about 1/BLOCKS of `budget_s`, from the warm-up's last call"""

    @classmethod
    def fixed(cls, rounds: int, block_calls: int) -> Sampling:
        """Exactly `rounds` blocks of `block_calls` timed calls per callable, after `block_calls` untimed ones
        each; no time budget."""
        calls = rounds * block_calls
        return cls(
            min_calls=calls, max_calls=calls, budget_s=math.inf, warmup_calls=block_calls, block_calls=block_calls
        )


ONE_CALL = Sampling(min_calls=1, max_calls=1, budget_s=0.0, warmup_calls=0)
"""one timed call, no warm-up: a sample of something measured over a whole run (see `MatmulPeak`)"""


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A call that waits for `device`'s queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_calls(
    calls: Mapping[str, Callable[[], object]], sync: Callable[[], None], sampling: Sampling
) -> dict[str, np.ndarray]:
    """Seconds per call of each of `calls`, each call bracketed by device synchronisations, in the order made.

    One untimed warm-up round first, and more (up to `warmup_calls`) while under half the budget; then the calls
    take turns in blocks (of `block_calls`, or lasting about 1/BLOCKS of the budget: turns of single calls slow
    onnxruntime at batch 1 by 10-20%), while under `budget_s` per callable or until each has `min_calls`;
    at most `max_calls` each."""
    budget = sampling.budget_s * len(calls)
    start, rounds = time.perf_counter(), 0
    last: dict[str, float] = {}
    while rounds < sampling.warmup_calls and (rounds == 0 or time.perf_counter() - start < budget / 2):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            sync()
            last[name] = time.perf_counter() - t0
        rounds += 1
    if sampling.block_calls is not None:
        block = dict.fromkeys(calls, sampling.block_calls)
    else:
        block = {name: max(1, int(sampling.budget_s / BLOCKS / last[name])) if name in last else 1 for name in calls}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    start = time.perf_counter()
    while True:
        done = min(len(seconds) for seconds in samples.values())
        if done >= sampling.max_calls or (done >= sampling.min_calls and time.perf_counter() - start >= budget):
            break
        for name, call in calls.items():
            for _ in range(min(block[name], sampling.max_calls - len(samples[name]))):
                sync()
                t0 = time.perf_counter()
                call()
                sync()
                samples[name].append(time.perf_counter() - t0)
    return {name: np.asarray(seconds) for name, seconds in samples.items()}


def block_means(seconds: np.ndarray, block_calls: int) -> np.ndarray:
    """Mean seconds per call of each block, from the samples of a `Sampling.fixed` measurement."""
    return seconds.reshape(-1, block_calls).mean(axis=1)  # [blocks * calls] -> [blocks, calls] -> [blocks]


def summarise(seconds: np.ndarray) -> dict:
    """calls, p50, p90, p99, mean and min in microseconds (`<stat>_us`) of one callable's samples."""
    p50, p90, p99 = np.percentile(seconds, (50, 90, 99))
    return {
        "calls": len(seconds),
        "p50_us": p50 * 1e6,
        "p90_us": p90 * 1e6,
        "p99_us": p99 * 1e6,
        "mean_us": float(seconds.mean()) * 1e6,
        "min_us": float(seconds.min()) * 1e6,
    }


class MatmulPeak:
    """GFLOP/s of a MATMUL_SIZE^2 `torch.matmul` on a device (CPU_HALF_MATMUL_SIZE^2 in half precision on a
    CPU). Sample it at the start and again between measurements; the peak is the best call of all: a load that
    comes and goes during the run would otherwise leave a peak taken at a busy moment below what the measured
    code reaches at quiet ones."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        n = CPU_HALF_MATMUL_SIZE if device.type == "cpu" and dtype != torch.float32 else MATMUL_SIZE
        generator = torch.Generator(device).manual_seed(0)
        a, b = (torch.randn(n, n, device=device, dtype=dtype, generator=generator) for _ in range(2))
        out = torch.empty(n, n, device=device, dtype=dtype)
        self.call = {"matmul": lambda: torch.matmul(a, b, out=out)}
        self.sync = synchronizer(device)
        self.dtype, self.size = dtype, n
        self.seconds: list[float] = []

    def sample(self, sampling: Sampling) -> None:
        self.seconds += time_calls(self.call, self.sync, sampling)["matmul"].tolist()

    def summary(self) -> dict:
        flops = 2 * self.size**3
        return {
            "dtype": str(self.dtype).removeprefix("torch."),
            "size": self.size,
            "calls": len(self.seconds),
            "gflops": flops / min(self.seconds) / 1e9,
            "median_gflops": flops / np.median(self.seconds) / 1e9,
        }


def random_checkpoint(folder: Path, size: str = "default", heads: bool = False) -> Path:
    """A randomly initialised model of preset `size` (seed 0) with continuous actions (and reward and
    continuation heads when `heads`), saved as `folder`/random.pt. Timings do not depend on the weights."""
    torch.manual_seed(0)
    cfg = wm_core.Config.from_dict({"model": {"size": size, "heads": heads}})
    path = folder / "random.pt"
    codec = wm_core.ActionCodec(
        "continuous", cfg.model.action_dim, (0.0,) * cfg.model.action_dim, (1.0,) * cfg.model.action_dim
    )
    wm_core.save_checkpoint(path, wm_core.WorldModel(cfg.model), cfg, codec)
    return path
