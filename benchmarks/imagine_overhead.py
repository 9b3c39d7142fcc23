"""How fast is `Rollout.imagine` at batch 1 on this CPU, and how much of it is the rollout's own overhead?

    python benchmarks/imagine_overhead.py                      # random default-size model, exported on the fly
    python benchmarks/imagine_overhead.py --artifacts runs/carracing/artifacts --profile

Measured in one process as blocks of back-to-back calls (the steady state of a control loop that calls the
same thing every tick), the variants' blocks taking turns round after round so that a busy machine slows
every variant alike (`time_calls` of benchmarks/timing.py, with a fixed block of `--calls` calls); each figure
is the median over rounds of a block's mean time per call, every call timed on its own:

- `imagine`: one `Rollout.imagine(state, actions)` call at B=1, H=15 (numpy in and out), per backend: input
  checks, action encoding, copies into the preallocated buffers, the 15 prior steps, copies out.
- `steps`: the backend's own work for the same 15 steps: `backend.step_into(ws, t)` for t = 0..14 on a
  prepared workspace (one onnxruntime run per step / one PyTorch `rssm.step` per step).
- `machinery`: `imagine` with the backend's step replaced by a no-op: the rollout's own work alone, but with
  warm caches (in a real call the steps have just evicted them, which makes that work slower).
- `model.rssm.imagine`: the PyTorch model's own open-loop rollout, a second torch-eager reference.

Reported: the onnxruntime speed-up over torch eager (torch at its faster thread setting), and the loop
overhead: the median over rounds of `imagine - steps` (adjacent blocks), relative to the median `steps`. With
`--profile`, onnxruntime's own profile of the prior-step graph says where a step's time goes, by operator.

For the full table over backends, batch sizes and horizons see benchmarks/rollout_latency.py.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from wm_core.config import MODEL_PRESETS
from wm_deploy import Rollout
from wm_deploy.backends.base import Backend, Workspace
from wm_deploy.backends.torch_backend import TorchBackend
from wm_export import export_artifacts

from timing import Sampling, block_means, random_checkpoint, time_calls

B, H = 1, 15


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, help="artifact folder (default: a random model of --size)")
    parser.add_argument(
        "--size", default="default", choices=sorted(MODEL_PRESETS), help="model size of the random model"
    )
    parser.add_argument("--rounds", type=int, default=40, help="rounds of blocks")
    parser.add_argument("--calls", type=int, default=10, help="calls per block")
    parser.add_argument("--profile", action="store_true", help="also profile the prior-step graph in onnxruntime")
    return parser.parse_args(argv)


def steps_of(rollout: Rollout):
    """The backend's own work for H steps, on a workspace of its own."""
    backend = rollout.backend
    ws = backend.workspace(B, H, frames=False)
    step_into = backend.step_into

    def run():
        with backend.scope():
            for t in range(H):
                step_into(ws, t)

    return run


class NoStep:
    """A backend whose prior step does nothing: `imagine` on it times the rollout's own work alone."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def step_into(self, ws: Workspace, t: int) -> None:
        pass


def measure(variants: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, np.ndarray]:
    """Seconds per call of each variant, one value per round (the mean of a block of `calls` back-to-back
    calls), the variants' blocks taking turns; after `calls` untimed calls each. CPU only: nothing to
    synchronise."""
    seconds = time_calls(variants, lambda: None, Sampling.fixed(rounds, calls))
    return {name: block_means(samples, calls) for name, samples in seconds.items()}


def profile_prior_step(folder: Path, calls: int = 3000) -> None:
    """Run onnxruntime's profiler on the prior step at B=1 and print the time per operator type."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "wm_prior_step_profile")
    session = ort.InferenceSession(str(folder / "prior_step.onnx"), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {i.name: rng.standard_normal((B, i.shape[1])).astype(np.float32) for i in session.get_inputs()}
    for _ in range(calls):
        session.run(None, feed)
    path = session.end_profiling()
    events = json.loads(Path(path).read_text())
    os.remove(path)
    by_op: dict[str, float] = collections.defaultdict(float)
    runs: list[float] = []
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
        elif event.get("cat") == "Session" and event["name"] == "model_run":
            runs.append(event["dur"])
    total_kernels = sum(by_op.values()) / calls
    print(f"\nonnxruntime profile of prior_step.onnx, B=1, {calls} runs (profiling adds its own overhead):")
    print(
        f"  a run: {np.median(runs):.1f} us median; kernels {total_kernels:.1f} us of it, the rest is the "
        "session's own work per run"
    )
    for op, micros in sorted(by_op.items(), key=lambda item: -item[1]):
        print(f"  {op:12s} {micros / calls:7.1f} us  {100 * micros / calls / total_kernels:5.1f}% of kernel time")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wm-overhead-") as scratch:
        # the decoder is left out: nothing here times it
        folder = args.artifacts or export_artifacts(
            random_checkpoint(Path(scratch), args.size), Path(scratch) / "artifacts", decoder=False
        )
        ort_rollout = Rollout.load(folder, backend="onnxruntime", device="cpu")
        torch_rollout = Rollout.load(folder, backend="torch", device="cpu")
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 256, (B, *ort_rollout.dims.frame), dtype=np.uint8)
        actions = rng.normal(0, 1, (B, H, ort_rollout.dims.action)).astype(np.float32)
        state = ort_rollout.observe(ort_rollout.initial(B), frame)
        assert isinstance(torch_rollout.backend, TorchBackend)
        model = torch_rollout.backend.model
        h, z, encoded = (
            torch.from_numpy(state.h),
            torch.from_numpy(state.z),
            torch.from_numpy(ort_rollout.codec.encode_numpy(actions)),
        )

        def model_imagine():
            with torch.no_grad():
                model.rssm.imagine(h, z, encoded)

        us = lambda seconds: 1e6 * np.median(seconds)  # noqa: E731
        print(
            f"imagine at B={B}, H={H}, {ort_rollout.dims} on {os.cpu_count()} CPUs; per call, median over "
            f"rounds of {args.calls} back-to-back calls"
        )

        # Speed-up: the three rollouts take turns, torch at its default thread count and at one thread.
        contenders = {
            "onnxruntime imagine": lambda: ort_rollout.imagine(state, actions),
            "torch imagine": lambda: torch_rollout.imagine(state, actions),
            "model.rssm.imagine": model_imagine,
        }
        default_threads = torch.get_num_threads()
        speed = {}
        for threads in sorted({default_threads, 1}, reverse=True):
            torch.set_num_threads(threads)
            speed[threads] = measure(contenders, args.rounds, args.calls)
            print(f"torch intra-op threads = {threads}:")
            for name, seconds in speed[threads].items():
                print(f"  {name:22s} {us(seconds):9.1f} us")
        best = min(speed, key=lambda n: us(speed[n]["torch imagine"]))
        times = speed[best]
        print(
            f"onnxruntime imagine vs torch eager (torch at its faster setting, {best} thread(s)): "
            f"{us(times['torch imagine']) / us(times['onnxruntime imagine']):.2f}x faster than torch "
            f"Rollout.imagine, {us(times['model.rssm.imagine']) / us(times['onnxruntime imagine']):.2f}x than "
            "model.rssm.imagine"
        )

        # Overhead: per backend on its own (no other library's work in between), imagine and the bare steps
        # take turns; the difference of adjacent blocks cancels slow drifts in the machine's load.
        torch.set_num_threads(best)
        for name, rollout in (("onnxruntime", ort_rollout), ("torch", torch_rollout)):
            # NoStep passes every other Backend member on to the real backend (__getattr__)
            machinery = Rollout(NoStep(rollout.backend), rollout.codec)
            times = measure(
                {
                    "steps": steps_of(rollout),
                    "imagine": functools.partial(rollout.imagine, state, actions),
                    "machinery": functools.partial(machinery.imagine, state, actions),
                },
                args.rounds,
                args.calls,
            )
            steps, extra = us(times["steps"]), us(times["imagine"] - times["steps"])
            print(
                f"loop overhead, {name}: imagine {us(times['imagine']):.1f} us, the backend's {H} steps "
                f"{steps:.1f} us: {extra:.1f} us beyond them = {100 * extra / steps:.1f}%; the machinery alone, "
                f"with warm caches: {us(times['machinery']):.1f} us = {100 * us(times['machinery']) / steps:.1f}%"
            )
        torch.set_num_threads(default_threads)
        if args.profile:
            profile_prior_step(folder)


if __name__ == "__main__":
    main()
