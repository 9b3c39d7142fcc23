"""Rollout latency per backend: the table users pick a backend and a batch size from.

For every backend x batch size x horizon it times one `Rollout.imagine` call (p50, p90, p99 over repeated
calls after a warm-up) and derives latent steps per second (batch x horizon / p50), the speed-up over torch
eager measured in the same run, the achieved GFLOP/s and its fraction of this device's own matmul peak
(a 2048 x 2048 fp32 `torch.matmul`, measured in the same run). At batch 1 it also times the trusted `imagine`
(`trusted=True`: the planner's path, without the value checks) and `observe`: the encoder plus one prior step,
one control tick.

    python benchmarks/rollout_latency.py                      # random default-size model, CPU
    python benchmarks/rollout_latency.py --quick              # fewer cells and calls: under a minute on 2 cores
    python benchmarks/rollout_latency.py --device cuda --json out.json --plot out.png
    python benchmarks/rollout_latency.py --checkpoint runs/carracing/last.pt   # or --artifacts <folder>
    python benchmarks/rollout_latency.py --results docs/results/rollout_latency_cpu.json   # the docs' table

Without --checkpoint or --artifacts a randomly initialised model (--size, default `default`) is saved and
exported to a temporary folder; timings do not depend on the weights. The export leaves out the decoder,
which nothing here times.

What a timing includes: the whole `Rollout` call as a user makes it (input checks, action encoding, copying
the inputs into the backend's preallocated buffers, the H prior steps, copying the outputs out as new arrays),
with the device synchronised before the clock is read at both ends. The inputs are already where the backend
computes (numpy arrays for onnxruntime on CPU, torch tensors on the device otherwise), so on a GPU no
host<->device copy is timed; `--host-io` passes numpy arrays instead, which adds those copies. The backends
of a cell take turns in blocks of calls, so that on a shared machine they all see the same load (the harness,
shared with the other benchmarks, is benchmarks/timing.py). The header, table, results file and plot are
benchmarks/rollout_latency_report.py's.

Backends (`--backends`, default all; those that cannot run here are listed as skipped, with the reason). The
names are wm_deploy.loading.VARIANTS:
  torch             PyTorch eager, the torch loop: the baseline of the speed-up column
  torch-cudagraphs  PyTorch with the imagine loop captured in a CUDA graph (CUDA only)
  torch-cudagraphs-fused  the same with the loop as the fused Triton kernel (Rollout.load(fused=True), fp32)
  torch-tf32        PyTorch with CUDA graphs, TF32 matmuls and convolutions (opt-in precision)
  torch-bf16        PyTorch, bfloat16 matmuls with a float32 recurrent state (CUDA graphs on CUDA)
  torch-fp16        the same in float16
  onnxruntime       the exported ONNX graphs; CPUExecutionProvider on cpu, CUDAExecutionProvider on cuda
  tensorrt-fp32     TensorRT engines, float32 (CUDA only)
  tensorrt-fp16     TensorRT engines, float16 (CUDA only)

FLOPs per latent step are counted from the RSSM's layer sizes, matrix products only: 2 * in * out for every
Linear and 2 * 3 * (K * D + D * D) for the GRUCell's three gates. Elementwise work (biases, activations, the
GRU's gate arithmetic, softplus) is left out; for the default model it is about 1% more. The tensorrt-fp16
and torch-fp16 rows are compared with a float16 matmul peak, torch-bf16 with a bfloat16 one, all others with the
float32 one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import wm_core
import wm_core.config
from wm_deploy import LatentState, Rollout
from wm_deploy.loading import VARIANTS
from wm_export import EngineBuildError, ParityError, TensorRTUnavailableError, export_artifacts, load_manifest

import rollout_latency_report
from report import add_results_option, environment, format_us, progress
from rollout_latency_report import BACKENDS
from timing import ONE_CALL, MatmulPeak, Sampling, random_checkpoint, summarise, synchronizer, time_calls

HALF_PEAK = {"tensorrt-fp16": "float16", "torch-fp16": "float16", "torch-bf16": "bfloat16"}
"""variants compared with a half-precision matmul peak"""
BASELINE = "torch"
BATCHES = (1, 16, 256, 1024, 4096)
HORIZONS = (15, 50)
QUICK_BATCHES = (1, 1024)
QUICK_HORIZONS = (15,)
FULL = Sampling(min_calls=5, max_calls=1000, budget_s=2.0, warmup_calls=3)
"""calls per backend and cell (`--budget-s` replaces the budget)"""
QUICK = Sampling(min_calls=3, max_calls=200, budget_s=0.3, warmup_calls=1)
"""the same with --quick"""


@dataclass
class Result:
    backend: str
    call: str
    """`imagine`, `imagine-trusted` or `observe`"""
    batch: int
    horizon: int
    """prior steps per call (1 for observe)"""
    calls: int
    """timed calls the percentiles come from"""
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    min_us: float
    """the fastest call: on a loaded machine, the closest to what a quiet one gives"""
    steps_per_s: float
    """latent steps per second: batch x horizon / p50"""
    speedup: float | None = None
    """torch eager's p50 / this p50, same call, batch and horizon, same run (None without the baseline)"""
    gflops: float | None = None
    """achieved GFLOP/s of the prior steps' matrix products (imagine only)"""
    peak_fraction: float | None = None
    """gflops / the matmul peak of the same precision on the same device"""
    load_1min: float | None = None
    """the 1-minute load average when the cell finished (this benchmark's own threads included)"""


# --- measuring ----------------------------------------------------------------------------------------------


def summarise_cell(backend: str, call: str, batch: int, horizon: int, seconds: np.ndarray) -> Result:
    stats = summarise(seconds)
    return Result(backend, call, batch, horizon, **stats, steps_per_s=batch * horizon / (stats["p50_us"] * 1e-6))


def step_flops(rssm: nn.Module) -> dict:
    """Matrix-product FLOPs of one prior step per batch row, from the RSSM's layer sizes."""
    layers = {}
    for name, module in rssm.named_modules():
        if isinstance(module, nn.Linear):
            layers[name] = 2 * module.in_features * module.out_features
        elif isinstance(module, nn.GRUCell):
            # three gates (reset, update, new), each an input and a hidden product
            layers[name] = 2 * 3 * module.hidden_size * (module.input_size + module.hidden_size)
    return {
        "per_step": sum(layers.values()),
        "layers": layers,
        "counted": "matrix products only (2*in*out per Linear, 2*3*(K*D + D*D) for the GRUCell); "
        "elementwise ops left out",
    }


# --- backends -----------------------------------------------------------------------------------------------


def prepare_artifacts(args, scratch: Path, wanted: list[str], device: torch.device) -> tuple[dict, dict]:
    """-> ({"onnx" | "fp32" | "fp16": artifact folder}, {backend: why skipped}) for what `wanted` needs."""
    skipped = {}
    trt_wanted = [name for name in wanted if name.startswith("tensorrt")]
    if device.type != "cuda":
        skipped.update({name: "TensorRT engines run on CUDA devices only (--device cuda)" for name in trt_wanted})
        trt_wanted = []

    if args.artifacts is not None:
        folder = Path(args.artifacts)
        folders = {"onnx": folder}
        section = load_manifest(folder).get("tensorrt")
        for name in trt_wanted:
            precision = name.removeprefix("tensorrt-")
            if section and section["precision"] == precision:
                folders[precision] = folder
            else:
                held = f"{section['precision']} engines only" if section else "no TensorRT engines"
                skipped[name] = f"{folder} holds {held}"
        return folders, skipped

    checkpoint = Path(args.checkpoint) if args.checkpoint is not None else random_checkpoint(scratch, args.size)
    max_batch = max(args.batches)
    common = dict(decoder=False, max_batch=max(max_batch, wm_core.config.ExportConfig.max_batch))
    folders = {}
    for precision in ("fp32", "fp16"):
        name = f"tensorrt-{precision}"
        if name not in trt_wanted or name in skipped:
            continue
        folder = scratch / f"artifacts-{precision}"
        try:
            export_artifacts(checkpoint, folder, trt=True, fp16=precision == "fp16", **common)
            folders[precision] = folder
        except TensorRTUnavailableError as error:  # raised after publishing the ONNX artifacts
            skipped.update({n: str(error) for n in trt_wanted if n.removeprefix("tensorrt-") not in folders})
        except (EngineBuildError, ParityError) as error:
            skipped[name] = f"export failed: {type(error).__name__}: {error}"
        if folder.is_dir():
            folders.setdefault("onnx", folder)  # the ONNX graphs are published even without TensorRT
    if "onnx" not in folders:
        folders["onnx"] = export_artifacts(checkpoint, scratch / "artifacts", **common)
    return folders, skipped


def load_backend(name: str, folders: dict, device: torch.device, max_batch: int) -> Rollout:
    """Raises ValueError / FileNotFoundError / ImportError when `name` cannot run here."""
    backend, options = VARIANTS[name]
    if name.startswith("torch-cudagraphs") and device.type != "cuda":
        raise ValueError("CUDA graphs need a CUDA device (--device cuda)")
    folder = folders[options["precision"]] if backend == "tensorrt" else folders["onnx"]
    # the baseline is eager: on CUDA the torch backend would otherwise capture the loop in a CUDA graph
    return Rollout.load(folder, backend=backend, device=device, max_batch=max_batch, **options)


def input_kind(rollout: Rollout, host_io: bool) -> str:
    """numpy where the backend computes on numpy (onnxruntime on CPU) or where --host-io asks, else torch."""
    return "numpy" if host_io or rollout.ops.kind == "numpy" else "torch"


def prepared_call(
    rollout: Rollout, call: str, batch: int, horizon: int, host_io: bool, rng: np.random.Generator
) -> Callable[[], object]:
    """Warm `rollout` up for one cell and return the call to time, its random inputs bound: a state that has
    seen a frame, raw actions [B, H, A] (and a frame for observe), as arrays of the kind `input_kind` picks."""
    dims, codec = rollout.dims, rollout.codec
    if codec.mode == "discrete":
        actions = rng.integers(0, codec.dim, (batch, horizon))
    else:
        actions = rng.uniform(-1, 1, (batch, horizon, codec.dim)).astype(np.float32)
    arrays: dict[str, Any] = dict(  # numpy here, torch tensors below where input_kind says so
        h=np.tanh(rng.standard_normal((batch, dims.deter), np.float32)),
        z=rng.standard_normal((batch, dims.latent), np.float32),
        actions=actions,
    )
    if call == "observe":
        arrays["frame"] = rng.integers(0, 256, (batch, *dims.frame), dtype=np.uint8)
    if input_kind(rollout, host_io) == "torch":
        arrays = {key: torch.from_numpy(value).to(rollout.device) for key, value in arrays.items()}
    state = LatentState(arrays["h"], arrays["z"])
    if call == "observe":
        rollout.warmup(batch, 1, frames=True)
        return lambda: rollout.observe(state, arrays["frame"], arrays["actions"][:, 0])
    rollout.warmup(batch, horizon, frames=False)
    trusted = call == "imagine-trusted"  # the planner's path: no value checks, views out
    return lambda: rollout.imagine(state, arrays["actions"], trusted=trusted)


def benchmark(
    rollouts: dict[str, Rollout], device: torch.device, args, sampling: Sampling, peaks: list[MatmulPeak]
) -> list[Result]:
    """Every cell (imagine at each horizon and batch, the trusted imagine and observe at batch 1) on every backend,
    with one matmul peak sample after each cell."""
    rng = np.random.default_rng(0)
    cells = [("imagine", batch, horizon) for horizon in args.horizons for batch in args.batches]
    cells += [("imagine-trusted", 1, args.horizons[0]), ("observe", 1, 1)]
    results = []
    for call, batch, horizon in cells:
        calls = {
            name: prepared_call(rollout, call, batch, horizon, args.host_io, rng) for name, rollout in rollouts.items()
        }
        for name, seconds in time_calls(calls, synchronizer(device), sampling).items():
            results.append(summarise_cell(name, call, batch, horizon, seconds))
            results[-1].load_1min = round(os.getloadavg()[0], 2)
            progress(f"  {call} B={batch:<5d} H={horizon:<3d} {name:16s} p50 {format_us(results[-1].p50_us)}")
        for peak in peaks:
            peak.sample(ONE_CALL)
    return results


def fill_derived(results: list[Result], flops: dict | None, peaks: dict, precisions: dict) -> None:
    """Speed-up over the baseline, achieved GFLOP/s and fraction of the peak, in place."""
    baseline = {(r.call, r.batch, r.horizon): r.p50_us for r in results if r.backend == BASELINE}
    for r in results:
        base = baseline.get((r.call, r.batch, r.horizon))
        r.speedup = base / r.p50_us if base is not None else None
        if r.call == "imagine" and flops is not None:
            r.gflops = r.steps_per_s * flops["per_step"] / 1e9
            peak = peaks.get(precisions.get(r.backend, "float32"))
            r.peak_fraction = r.gflops / peak["gflops"] if peak else None


# --- main ---------------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    values = [int(item) for item in text.split(",") if item.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def backend_list(text: str) -> list[str]:
    names = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown backend(s) {unknown}; expected some of {list(BACKENDS)}")
    return names


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="export this checkpoint to a temporary folder and time it")
    source.add_argument("--artifacts", help="time this artifact folder as it is (no export)")
    parser.add_argument(
        "--size",
        default="default",
        choices=sorted(wm_core.config.MODEL_PRESETS),
        help="model size of the random model used without --checkpoint/--artifacts",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--backends", type=backend_list, default=list(BACKENDS), help=f"comma-separated, from {','.join(BACKENDS)}"
    )
    parser.add_argument(
        "--batches",
        type=int_list,
        default=None,
        help=f"comma-separated (default {','.join(map(str, BATCHES))}; --quick: {','.join(map(str, QUICK_BATCHES))})",
    )
    parser.add_argument(
        "--horizons",
        type=int_list,
        default=None,
        help=f"comma-separated (default {','.join(map(str, HORIZONS))}; --quick: {','.join(map(str, QUICK_HORIZONS))})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"fewer cells and calls ({QUICK.min_calls}+ per cell, {QUICK.budget_s} s budget)",
    )
    parser.add_argument(
        "--budget-s", type=float, default=None, help=f"seconds per backend and cell (default {FULL.budget_s})"
    )
    parser.add_argument("--host-io", action="store_true", help="pass and get numpy arrays on the host")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the header and table as markdown here")
    parser.add_argument("--plot", type=Path, help="write latency vs batch (log-log) here")
    add_results_option(parser)
    args = parser.parse_args(argv)
    args.batches = args.batches or list(QUICK_BATCHES if args.quick else BATCHES)
    args.horizons = args.horizons or list(QUICK_HORIZONS if args.quick else HORIZONS)
    return args


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    sampling = QUICK if args.quick else FULL
    if args.budget_s is not None:
        sampling = dataclasses.replace(sampling, budget_s=args.budget_s)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="wm-rollout-bench-") as scratch:
        folders, skipped = prepare_artifacts(args, Path(scratch), args.backends, device)
        rollouts = {}
        for name in args.backends:
            if name in skipped:
                continue
            try:
                rollouts[name] = load_backend(name, folders, device, max(args.batches))
            except (ValueError, FileNotFoundError, ImportError) as error:
                skipped[name] = str(error)

        # The layer sizes come from the checkpoint the graphs were exported from (None when it is gone).
        checkpoint = Path(load_manifest(folders["onnx"])["checkpoint"]["path"])
        flops = step_flops(wm_core.load_checkpoint(checkpoint)[0].rssm) if checkpoint.is_file() else None

        meters = [MatmulPeak(device, torch.float32)]
        for dtype in sorted({HALF_PEAK[name] for name in rollouts if name in HALF_PEAK}):
            meters.append(MatmulPeak(device, getattr(torch, dtype)))
        for meter in meters:
            meter.sample(sampling)
        results = benchmark(rollouts, device, args, sampling, meters)
        env = backend_environment(device, rollouts)
    peaks = {str(meter.dtype).removeprefix("torch."): meter.summary() for meter in meters}
    fill_derived(results, flops, peaks, HALF_PEAK)
    load = (tuple(round(x, 2) for x in load_start), tuple(round(x, 2) for x in os.getloadavg()))
    return {
        "environment": env,
        "load_average": {"start": load[0], "end": load[1]},
        "flops": flops,
        "matmul_peak": peaks,
        "host_io": args.host_io,
        "quick": args.quick,
        "sampling": dataclasses.asdict(sampling),
        "results": [dataclasses.asdict(r) for r in results],
        "skipped": skipped,
    }


def backend_environment(device: torch.device, rollouts: dict[str, Rollout]) -> dict:
    """The machine's environment (report.environment) and each backend's own: its detail and, for
    onnxruntime, the intra-op threads of each graph's session."""
    env = environment(str(device))
    env["backends"] = {name: ro.backend_detail for name, ro in rollouts.items()}
    env["intra_op_threads"] = {
        name: {graph: s.get_session_options().intra_op_num_threads for graph, s in sessions.items()}
        for name, ro in rollouts.items()
        if (sessions := getattr(ro.backend, "sessions", None))
    }
    return env


def model_name(args) -> str:
    if args.artifacts is not None:
        return f"the model of {args.artifacts}"
    if args.checkpoint is not None:
        return f"the model of {args.checkpoint}"
    return f"{args.size} model, random weights"


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        report = run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        sys.exit(f"rollout_latency: {error}")
    text = rollout_latency_report.report_text(report)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.results:
        rollout_latency_report.save(report, args.results, model_name(args))
    if args.plot:
        rollout_latency_report.plot(report, args.plot)


if __name__ == "__main__":
    main()
