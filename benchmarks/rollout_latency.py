"""Rollout latency per backend: the table users pick a backend and a batch size from.

For every backend x batch size x horizon it times one `Rollout.imagine` call (p50, p90, p99 over repeated
calls after a warm-up) and derives latent steps per second (batch x horizon / p50), the speed-up over torch
eager measured in the same run, the achieved GFLOP/s and its fraction of this device's own matmul peak
(a 2048 x 2048 fp32 `torch.matmul`, measured in the same run). It also times `observe` at batch 1: the
encoder plus one prior step, one control tick.

    python benchmarks/rollout_latency.py                      # random default-size model, CPU
    python benchmarks/rollout_latency.py --quick              # fewer cells and calls: under a minute on 2 cores
    python benchmarks/rollout_latency.py --device cuda --json out.json --plot out.png
    python benchmarks/rollout_latency.py --checkpoint runs/carracing/last.pt   # or --artifacts <folder>

Without --checkpoint or --artifacts a randomly initialised model (--size, default `default`) is saved and
exported to a temporary folder; timings do not depend on the weights. The export leaves out the decoder,
which nothing here times.

What a timing includes: the whole `Rollout` call as a user makes it (input checks, action encoding, copying
the inputs into the backend's preallocated buffers, the H prior steps, copying the outputs out as new arrays),
with the device synchronised before the clock is read at both ends. The inputs are already where the backend
computes (numpy arrays for onnxruntime on CPU, torch tensors on the device otherwise), so on a GPU no
host<->device copy is timed; `--host-io` passes numpy arrays instead, which adds those copies. The backends
of a cell take turns in blocks of calls, so that on a shared machine they all see the same load (the harness,
shared with the other benchmarks, is benchmarks/timing.py).

Backends (`--backends`, default all; those that cannot run here are listed as skipped, with the reason). The
names are wm_deploy.loading.VARIANTS:
  torch             PyTorch eager, the baseline of the speed-up column
  torch-cudagraphs  PyTorch with the imagine loop captured in a CUDA graph (CUDA graphs on CUDA only)
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
import platform
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

from timing import (
    ONE_CALL,
    MatmulPeak,
    Sampling,
    cpu_name,
    format_time,
    random_checkpoint,
    summarise,
    synchronizer,
    time_calls,
)

BACKENDS = tuple(VARIANTS)
HALF_PEAK = {"tensorrt-fp16": "float16", "torch-fp16": "float16", "torch-bf16": "bfloat16"}
"""variants compared with a half-precision matmul peak"""
BASELINE = "torch"
BATCHES = (1, 16, 256, 1024, 4096)
HORIZONS = (15, 50)
QUICK_BATCHES = (1, 1024)
QUICK_HORIZONS = (15,)
LOAD_WARNING = 0.5
"""1-minute load average per CPU at start above which the report warns that other processes competed"""
FULL = Sampling(min_calls=5, max_calls=1000, budget_s=2.0, warmup_calls=3)
"""calls per backend and cell (`--budget-s` replaces the budget)"""
QUICK = Sampling(min_calls=3, max_calls=200, budget_s=0.3, warmup_calls=1)
"""the same with --quick"""


@dataclass
class Result:
    backend: str
    call: str
    """`imagine` or `observe`"""
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
    if name == "torch-cudagraphs" and device.type != "cuda":
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
    return lambda: rollout.imagine(state, arrays["actions"])


def benchmark(
    rollouts: dict[str, Rollout], device: torch.device, args, sampling: Sampling, peaks: list[MatmulPeak]
) -> list[Result]:
    """Every cell (imagine at each horizon and batch, observe at batch 1) on every backend, with one matmul
    peak sample after each cell."""
    rng = np.random.default_rng(0)
    cells = [("imagine", batch, horizon) for horizon in args.horizons for batch in args.batches]
    results = []
    for call, batch, horizon in cells + [("observe", 1, 1)]:
        calls = {
            name: prepared_call(rollout, call, batch, horizon, args.host_io, rng) for name, rollout in rollouts.items()
        }
        for name, seconds in time_calls(calls, synchronizer(device), sampling).items():
            results.append(summarise_cell(name, call, batch, horizon, seconds))
            results[-1].load_1min = round(os.getloadavg()[0], 2)
            print(
                f"  {call} B={batch:<5d} H={horizon:<3d} {name:16s} p50 {format_time(results[-1].p50_us)}",
                file=sys.stderr,
                flush=True,
            )
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


# --- reporting ----------------------------------------------------------------------------------------------


def environment(device: torch.device, rollouts: dict[str, Rollout]) -> dict:
    env = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "env_threads": {key: os.environ[key] for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if key in os.environ},
    }
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    env["backends"] = {name: ro.backend_detail for name, ro in rollouts.items()}
    for name, ro in rollouts.items():
        sessions = getattr(ro.backend, "sessions", None)
        if sessions:
            env[f"{name}_intra_op_threads"] = {
                graph: s.get_session_options().intra_op_num_threads for graph, s in sessions.items()
            }
        if name.startswith("tensorrt"):
            import tensorrt

            env["tensorrt"] = tensorrt.__version__
    return env


def format_optional(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown_table(results: list[Result]) -> str:
    lines = [
        "| backend | call | B | H | p50 | p90 | p99 | calls | latent steps/s | × torch eager | GFLOP/s "
        "| % matmul peak |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    order = sorted(results, key=lambda r: (r.call != "imagine", r.horizon, r.batch, BACKENDS.index(r.backend)))
    for r in order:
        fraction = None if r.peak_fraction is None else 100 * r.peak_fraction
        lines.append(
            f"| {r.backend} | {r.call} | {r.batch} | {r.horizon} | {format_time(r.p50_us)} "
            f"| {format_time(r.p90_us)} | {format_time(r.p99_us)} | {r.calls} | {r.steps_per_s:.3g} "
            f"| {format_optional(r.speedup, '.2f')} | {format_optional(r.gflops, '.3g')} "
            f"| {format_optional(fraction, '.0f')} |"
        )
    return "\n".join(lines)


def report_header(env: dict, flops: dict | None, peaks: dict, load: tuple, host_io: bool) -> str:
    where = env.get("gpu", env["cpu"])
    versions = ", ".join(
        f"{key} {env[key]}" for key in ("torch", "onnxruntime", "tensorrt", "cuda", "numpy") if key in env
    )
    threads = f"torch {env['torch_threads']} intra-op / {env['torch_interop_threads']} inter-op threads"
    for key, value in env.items():
        if key.endswith("_intra_op_threads"):
            threads += f"; {key.removesuffix('_intra_op_threads')} intra-op threads per graph {value}"
    if env["env_threads"]:
        threads += f"; {env['env_threads']}"
    copies = (
        "inputs and outputs are host numpy arrays (host<->device copies included)"
        if host_io
        else "inputs and outputs stay where the backend computes (no host<->device copy timed)"
    )
    lines = [
        f"Device: {env['device']} ({where}, {env['cpu_count']} CPUs). {versions}. {threads}.",
        f"Load average (1, 5, 15 min) at start {load[0]}, at end {load[1]}.",
        f"Timing: one Rollout call, device synchronised before each clock read; {copies}.",
    ]
    if flops is not None:
        lines.append(f"FLOPs per latent step: {flops['per_step'] / 1e6:.3f} M ({flops['counted']}).")
    for peak in peaks.values():
        lines.append(
            f"Matmul peak ({peak['size']}x{peak['size']} {peak['dtype']}, torch.matmul, best of "
            f"{peak['calls']} calls spread over the run): {peak['gflops']:.1f} GFLOP/s "
            f"(median {peak['median_gflops']:.1f})."
        )
    if load[0][0] > LOAD_WARNING * env["cpu_count"]:  # at start only: the end includes this benchmark's own
        lines.append(
            f"WARNING: the load average at start exceeded {LOAD_WARNING:g} per CPU: other processes "
            "competed for the CPUs, which slows every number, and multi-threaded backends (torch) most."
        )
    lines.append(
        "× torch eager: torch eager's p50 / this p50 in this run. % matmul peak: achieved GFLOP/s / that peak."
    )
    return "\n".join(lines)


def plot(results: list[Result], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    horizons = sorted({r.horizon for r in results if r.call == "imagine"})
    styles = ["-", "--", ":", "-."]
    for i, backend in enumerate(b for b in BACKENDS if any(r.backend == b for r in results)):
        for j, horizon in enumerate(horizons):
            rows = sorted(
                (r for r in results if r.backend == backend and r.call == "imagine" and r.horizon == horizon),
                key=lambda r: r.batch,
            )
            if rows:
                ax.plot(
                    [r.batch for r in rows],
                    [r.p50_us / 1e3 for r in rows],
                    marker="o",
                    color=f"C{i}",
                    linestyle=styles[j % len(styles)],
                    label=f"{backend}, H={horizon}",
                )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch")
    ax.set_ylabel("imagine p50 latency (ms)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
        env = environment(device, rollouts)
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


def report_text(report: dict, host_io: bool) -> str:
    """The header, the markdown table and the skipped backends with their reasons."""
    results = [Result(**r) for r in report["results"]]
    load = report["load_average"]
    header = report_header(
        report["environment"], report["flops"], report["matmul_peak"], (load["start"], load["end"]), host_io
    )
    skipped = [f"- skipped {name}: {reason}" for name, reason in report["skipped"].items()]
    return "\n\n".join([header, markdown_table(results)] + (["\n".join(skipped)] if skipped else []))


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        report = run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        sys.exit(f"rollout_latency: {error}")
    text = report_text(report, args.host_io)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.plot:
        env = report["environment"]
        results = [Result(**r) for r in report["results"]]
        plot(results, args.plot, f"Rollout.imagine on {env.get('gpu', env['cpu'])} ({env['device']})")


if __name__ == "__main__":
    main()
