"""`make gpu-check`: everything that needs a GPU, in one prepared run that fits a short GPU lease.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out "$OUT"     # on a machine with a CUDA device
    PYTHONPATH=. python3 benchmarks/gpu_check.py --dry-run --out /tmp/gpu-check   # CPU rehearsal (CI)

Parts, each timed (the summary says where the time went):
1. the CUDA tests, `pytest -m gpu` (tests/test_gpu.py): torch on CUDA with and without CUDA graphs against the
   CPU reference, per-bucket capture, TF32, half precision, capture fallback, bad inputs; onnxruntime-CUDA and
   TensorRT tests skip with their reason where those are missing;
2. rollout latency on CUDA (benchmarks/rollout_latency.py) for every backend variant present, B in {1, 64,
   1024, 4096}, H in {15, 50};
3. training throughput of the default config on CUDA (benchmarks/train_throughput.py);
4. control ticks with the planner on CUDA (benchmarks/planner_speed.py --quick: torch eager, CUDA graphs, bf16);
5. the GPU targets (docs/gpu.md), met or not, from those numbers.

It runs with the machine's own `python3` and packages (no venv, no pip, no network). Files written to --out:
gpu_tests.log, rollout_latency.json, rollout_latency.md, train_throughput.json, planner_speed.json,
gpu_check.md (the summary), gpu_check.json. --dry-run runs the same parts on the CPU with a tiny model and a
few cells, so this script cannot rot between GPU sessions (tests/test_gpu_check.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = "torch,torch-cudagraphs,torch-tf32,torch-bf16,torch-fp16,onnxruntime,tensorrt-fp32,tensorrt-fp16"
TARGETS = [
    # (what, backend, batch, horizon, field, comparison, value)
    ("torch + CUDA graphs, imagine B=1 H=15: p50 <= 150 µs", "torch-cudagraphs", 1, 15, "p50_us", "<=", 150.0),
    ("torch + CUDA graphs, imagine B=1 H=15: >= 10x torch eager", "torch-cudagraphs", 1, 15, "speedup", ">=", 10.0),
    ("B=4096 H=15 fp32 (CUDA graphs): >= 3e7 latent steps/s", "torch-cudagraphs", 4096, 15, "steps_per_s", ">=", 3e7),
    ("B=4096 H=15 bf16: >= 1e8 latent steps/s", "torch-bf16", 4096, 15, "steps_per_s", ">=", 1e8),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check"), help="output folder")
    parser.add_argument("--dry-run", action="store_true", help="rehearse on the CPU with a tiny model")
    parser.add_argument("--budget-s", type=float, default=0.4, help="seconds per backend and latency cell")
    return parser.parse_args(argv)


def run_part(name: str, command: list[str], log: Path | None = None) -> dict:
    """Run one part as a subprocess (its output streamed, and kept in `log`) -> its status and seconds."""
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = completed.stdout + completed.stderr
    print(output[-6000:], flush=True)
    if log is not None:
        log.write_text(output)
    print(f"=== {name}: exit {completed.returncode} in {seconds:.1f} s", flush=True)
    return {"part": name, "exit_code": completed.returncode, "seconds": round(seconds, 1)}


def environment() -> dict:
    import torch

    env: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    for module in ("onnxruntime", "tensorrt", "triton"):
        try:
            env[module] = __import__(module).__version__
        except ImportError:
            env[module] = "not installed"
    return env


def check_targets(latency: dict) -> list[dict]:
    rows = {(r["backend"], r["call"], r["batch"], r["horizon"]): r for r in latency.get("results", [])}
    checked = []
    for what, backend, batch, horizon, field, comparison, value in TARGETS:
        row = rows.get((backend, "imagine", batch, horizon))
        measured = None if row is None else row[field]
        met = None if measured is None else (measured <= value if comparison == "<=" else measured >= value)
        checked.append({"target": what, "measured": measured, "met": met})
    return checked


def summary(env: dict, parts: list[dict], targets: list[dict], dry_run: bool) -> str:
    lines = [
        f"# gpu-check{' (dry run on the CPU)' if dry_run else ''}",
        "",
        f"Machine: {env.get('gpu', 'no CUDA device')}; Python {env['python']}, torch {env['torch']} "
        f"(CUDA {env['cuda']}), onnxruntime {env['onnxruntime']}, TensorRT {env['tensorrt']}.",
        "",
        "| part | exit code | seconds |",
        "|---|--:|--:|",
    ]
    lines += [f"| {p['part']} | {p['exit_code']} | {p['seconds']} |" for p in parts]
    lines += ["", "| target | measured | met |", "|---|--:|---|"]
    for t in targets:
        measured = "–" if t["measured"] is None else f"{t['measured']:.3g}"
        lines.append(f"| {t['target']} | {measured} | {'–' if t['met'] is None else 'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    env = environment()
    print(json.dumps(env), flush=True)
    python = sys.executable
    if args.dry_run:
        device, batches, horizons, variants = "cpu", "1,4", "15", "torch,torch-bf16,onnxruntime,torch-cudagraphs"
        # the tiny model with the heads that configs/carracing.yaml trains (its random frames need rewards too)
        tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
        (out / "tiny_heads.yaml").write_text(yaml.safe_dump({**tiny, "model": {**tiny["model"], "heads": True}}))
        latency_extra = ["--size", "tiny"]
        train = ["--config", str(out / "tiny_heads.yaml"), "--steps", "2", "--warmup", "1"]
        planner = ["--size", "tiny", "--cells", "32x4x1", "--backends", "torch"]
    else:
        device, batches, horizons, variants = "cuda", "1,64,1024,4096", "15,50", VARIANTS
        latency_extra, train = [], ["--config", "configs/carracing.yaml", "--steps", "30", "--warmup", "5"]
        planner = []
    parts = [
        run_part(
            "CUDA tests",
            [python, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_gpu.py"],
            out / "gpu_tests.log",
        ),
        run_part(
            "rollout latency",
            [python, "benchmarks/rollout_latency.py", "--device", device, "--backends", variants, "--batches", batches,
             "--horizons", horizons, "--budget-s", str(args.budget_s), "--json", str(out / "rollout_latency.json"),
             "--markdown", str(out / "rollout_latency.md"), *latency_extra],
        ),
        run_part(
            "training throughput",
            [python, "benchmarks/train_throughput.py", "--device", device, "--json",
             str(out / "train_throughput.json"), *train],
        ),
        run_part(
            "planner ticks",
            [python, "benchmarks/planner_speed.py", "--device", device, "--quick", "--json",
             str(out / "planner_speed.json"), *planner],
        ),
    ]  # fmt: skip
    latency_file = out / "rollout_latency.json"
    latency = json.loads(latency_file.read_text()) if latency_file.is_file() else {}
    targets = check_targets(latency)
    parts.append(
        {"part": "total (start-up included)", "exit_code": 0, "seconds": round(time.perf_counter() - start, 1)}
    )
    text = summary(env, parts, targets, args.dry_run)
    train_file = out / "train_throughput.json"
    if train_file.is_file():
        train_figures = json.loads(train_file.read_text())
        text += f"\nTraining throughput ({train_figures['config']}, {train_figures['device']}): "
        text += f"{train_figures['frames_per_s']:.0f} frames/s, {train_figures['ms_per_step']:.1f} ms/step.\n"
    planner_file = out / "planner_speed.json"
    if planner_file.is_file():
        rows = json.loads(planner_file.read_text())["rows"]
        text += "\nControl ticks with the planner (observe + plan, ms p50): "
        text += ", ".join(
            f"{r['backend']} {r['samples']}x{r['horizon']}x{r['iterations']} {r['ms_p50']:.1f}" for r in rows
        )
        text += ".\n"
    (out / "gpu_check.md").write_text(text)
    report = {"environment": env, "parts": parts, "targets": targets, "dry_run": args.dry_run}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n" + text, flush=True)
    return 1 if any(p["exit_code"] for p in parts) else 0


if __name__ == "__main__":
    sys.exit(main())
