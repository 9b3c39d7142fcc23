"""What thread safety costs and what threads get: `Rollout.imagine` at B=1, H=15 from 1..N threads.

    python benchmarks/threads.py [--backend onnxruntime] [--threads 1,2,4] [--seconds 3]

- single-thread latency (p50 of calls in alternating blocks, benchmarks/timing.py's `time_calls`) with the
  Rollout's lock as shipped, and with the lock swapped for a no-op (what the call cost before it was
  thread-safe);
- calls per second from N threads sharing one Rollout (calls serialised by its lock), and from N threads with
  a Rollout each (nothing shared).
The model is a random default-size one, exported on the fly.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from wm_deploy import LatentState, Rollout
from wm_export import export_artifacts

from timing import Sampling, random_checkpoint, time_calls

B, H = 1, 15


def inputs(seed: int = 0) -> tuple[LatentState, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = LatentState(np.zeros((B, 256), np.float32), np.zeros((B, 32), np.float32))
    return state, rng.uniform(-1, 1, (B, H, 3)).astype(np.float32)


def latency(rollouts: dict[str, Rollout], rounds: int = 40, block: int = 50) -> dict[str, float]:
    """p50 microseconds per call, the variants' blocks taking turns so that both see the same load (after a
    block of untimed calls each)."""
    state, actions = inputs()
    calls = {name: functools.partial(rollout.imagine, state, actions) for name, rollout in rollouts.items()}
    times = time_calls(calls, lambda: None, Sampling.fixed(rounds, block))  # CPU only: nothing to synchronise
    return {name: float(np.median(seconds)) * 1e6 for name, seconds in times.items()}


def throughput(rollouts: list[Rollout], seconds: float) -> float:
    """Calls per second of len(rollouts) threads, thread i calling rollouts[i] for `seconds`."""
    counts = [0] * len(rollouts)
    stop = threading.Event()

    def worker(i: int) -> None:
        state, actions = inputs(i)
        while not stop.is_set():
            rollouts[i].imagine(state, actions)
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(rollouts))]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts) / seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch"))
    parser.add_argument("--threads", default="1,2,4", help="comma-separated thread counts")
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput measurement")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.threads.split(",")]

    with tempfile.TemporaryDirectory(prefix="wm-threads-") as scratch:
        checkpoint = random_checkpoint(Path(scratch))
        folder = export_artifacts(checkpoint, Path(scratch) / "artifacts", decoder=False)

        def load() -> Rollout:
            rollout = Rollout.load(folder, backend=args.backend, device="cpu")
            rollout.warmup(B, H, frames=False)
            return rollout

        locked, unlocked = load(), load()
        unlocked._lock = contextlib.nullcontext()  # type: ignore[assignment]  # the call before thread safety
        p50 = latency({"with lock": locked, "without lock": unlocked})
        print(f"{args.backend} imagine B={B} H={H}, one thread, p50: with lock {p50['with lock']:.1f} us, "
              f"without {p50['without lock']:.1f} us ({p50['with lock'] / p50['without lock'] - 1:+.1%})")  # fmt: skip
        for n in counts:
            shared = throughput([locked] * n, args.seconds)
            own = throughput([locked] + [load() for _ in range(n - 1)], args.seconds)
            print(f"{n} thread(s): {shared:.0f} calls/s sharing one Rollout, {own:.0f} calls/s with a Rollout each")


if __name__ == "__main__":
    main()
