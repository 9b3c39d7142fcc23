"""`make gpu-check`: everything that needs a GPU, in one prepared run that fits a short GPU lease.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out "$OUT"     # on a machine with a CUDA device
    PYTHONPATH=. python3 benchmarks/gpu_check.py --dry-run --out /tmp/gpu-check   # CPU rehearsal (CI)

Parts, each timed (the summary says where the time went):
1. the CUDA tests, `pytest -m gpu` (tests/test_gpu.py, tests/test_fused_rollout.py): torch on CUDA with and
   without CUDA graphs against the CPU reference, per-bucket capture, TF32, half precision, capture fallback, bad
   inputs, the fused Triton rollout against the torch loop; onnxruntime-CUDA and TensorRT tests skip with their
   reason where those are missing;
2. rollout latency on CUDA (benchmarks/rollout_latency.py) for every backend variant present, B in {1, 64,
   1024, 4096}, H in {15, 50};
3. training throughput of the default config on CUDA (benchmarks/train_throughput.py);
4. control ticks with the planner on CUDA (benchmarks/planner_speed.py --quick: torch eager, CUDA graphs, bf16);
5. the GPU targets (docs/gpu.md), met or not, from those numbers.

It runs with the machine's own `python3` and packages (no venv, no pip, no network). Files written to --out:
gpu_tests.log, rollout_latency.json, rollout_latency.md, train_throughput.json, planner_speed.json,
gpu_check.md (the summary), gpu_check.json, and under results/ the tables of docs/gpu.md as results files
(gpu_rollout_latency.json, gpu_planner_ticks.json, gpu_targets.json) beside rollout_latency_cuda.json (the full
latency table) and train_throughput_cuda.json: copy them into docs/results/ and run
`python benchmarks/results.py` to put a new run on the pages. --dry-run runs the same parts on the CPU with a
tiny model and a few cells, so this script cannot rot between GPU sessions (tests/test_gpu_check.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from report import environment, machine_line, markdown_table, save_results

ROOT = Path(__file__).resolve().parents[1]
LABELS = {
    "torch": "torch eager",
    "torch-cudagraphs": "torch + CUDA graphs (fp32)",
    "torch-cudagraphs-fused": "the same, fused Triton rollout",
    "torch-cudagraphs-eager-tick": "torch + CUDA graphs, the planner tick not captured",
    "torch-tf32": "torch tf32 (opt-in)",
    "torch-bf16": "torch bf16",
    "torch-fp16": "torch fp16",
    "onnxruntime": "onnxruntime",
    "tensorrt-fp32": "TensorRT fp32",
    "tensorrt-fp16": "TensorRT fp16",
}
"""the variants timed here, as the tables name them: wm_deploy.loading.VARIANTS, and planner_speed's eager tick"""
VARIANTS = ",".join(name for name in LABELS if name != "torch-cudagraphs-eager-tick")
"""rollout_latency's"""
TARGETS = [
    # (what, backend, call, batch, horizon, field, comparison, value, format); no comparison: for comparison only
    ("B=1 H=15 through the trusted path: ≤ 100 µs", "torch-cudagraphs", "imagine-trusted", 1, 15, "p50_s", "<=", 100e-6,
     "time"),
    ("B=1 H=15, the public Rollout.imagine: ≤ 250 µs", "torch-cudagraphs", "imagine", 1, 15, "p50_s", "<=", 250e-6,
     "time"),
    ("the same, ≥ 10× torch eager in the same run", "torch-cudagraphs", "imagine", 1, 15, "speedup", ">=", 10.0,
     ".3g"),
    ("observe at B=1: ≤ 0.3 ms", "torch-cudagraphs", "observe", 1, 1, "p50_s", "<=", 300e-6, "time"),
    ("B=4096 H=15 fp32: ≥ 3e7 latent steps/s", "torch-cudagraphs", "imagine", 4096, 15, "steps_per_s", ">=", 3e7,
     ".2e"),
    ("the same, fused Triton rollout (opt-in)", "torch-cudagraphs-fused", "imagine", 4096, 15, "steps_per_s", None,
     None, ".2e"),
    ("the same with the tf32 opt-in (not a target)", "torch-tf32", "imagine", 4096, 15, "steps_per_s", None, None,
     ".2e"),
    ("B=4096 H=15 bf16: ≥ 1.5e8 latent steps/s", "torch-bf16", "imagine", 4096, 15, "steps_per_s", ">=", 1.5e8,
     ".2e"),
]  # fmt: skip
TICK_TARGETS = [
    # (what, backend, field of planner_speed's row at the default cell, value in seconds)
    ("the plan alone at the default 256 × 12 × 3, torch + CUDA graphs: ≤ 1 ms", "torch-cudagraphs", "plan_ms_p50",
     1e-3),
    ("the whole tick (observe + plan), torch + CUDA graphs (not a target)", "torch-cudagraphs", "ms_p50", None),
    ("the same without the tick graph (each imagine its own graph; not a target)", "torch-cudagraphs-eager-tick",
     "plan_ms_p50", None),
]  # fmt: skip
PARITY = "parity on CUDA within the CPU tolerances (fp32) and 1e-2 (bf16, fp16)"
"""the target the CUDA tests check"""
TARGET_COLUMNS = [{"name": "target"}, {"name": "measured", "align": "right"}, {"name": "met"}]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check"), help="output folder")
    parser.add_argument("--dry-run", action="store_true", help="rehearse on the CPU with a tiny model")
    parser.add_argument("--budget-s", type=float, default=0.4, help="seconds per backend and latency cell")
    return parser.parse_args(argv)


def run_part(name: str, command: list[str], timeout_s: float, log: Path | None = None) -> dict:
    """Run one part as a subprocess (its output streamed, and kept in `log`) -> its status and seconds. A part
    that outlasts `timeout_s` (a hung kernel, say) is stopped with exit code 124, so the rest still fits a lease."""
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    try:
        completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        output, exit_code = completed.stdout + completed.stderr, completed.returncode
    except subprocess.TimeoutExpired as timeout:
        output = "".join(
            part.decode(errors="replace") if isinstance(part, bytes) else part or ""
            for part in (timeout.stdout, timeout.stderr)
        )
        output, exit_code = output + f"\nstopped after {timeout_s:.0f} s\n", 124
    seconds = time.perf_counter() - start
    print(output[-6000:], flush=True)
    if log is not None:
        log.write_text(output)
    print(f"=== {name}: exit {exit_code} in {seconds:.1f} s", flush=True)
    return {"part": name, "exit_code": exit_code, "seconds": round(seconds, 1)}


def check_targets(latency: dict, planner: dict, tests_log: str | None) -> list[dict]:
    """Each target with what was measured (None: not measured) and whether it is met (None: not a target or not
    measured); last the parity target, from the CUDA tests' summary line."""
    rows = {(r["backend"], r["call"], r["batch"], r["horizon"]): r for r in latency.get("results", [])}
    checked = []
    for what, backend, call, batch, horizon, field, comparison, value, fmt in TARGETS:
        row = rows.get((backend, call, batch, horizon))
        measured = None if row is None else row["p50_us"] * 1e-6 if field == "p50_s" else row[field]
        met = None
        if measured is not None and comparison is not None:
            met = measured <= value if comparison == "<=" else measured >= value
        checked.append({"target": what, "measured": measured, "format": fmt, "met": met})
    ticks = {r["backend"]: r for r in planner.get("rows", []) if r["default"]}
    for what, backend, field, limit in TICK_TARGETS:
        row = ticks.get(backend)
        measured = None if row is None else row[field] * 1e-3
        met = None if measured is None or limit is None else measured <= limit
        checked.append({"target": what, "measured": measured, "format": "time", "met": met})
    # pytest's last line, e.g. "15 passed, 3 skipped in 17.2s": met when some passed and none failed
    summary = re.findall(r"^=* ?(\d+ (?:passed|failed|skipped|error).* in [\d.]+s.*?) ?=*$", tests_log or "", re.M)
    passed = bool(summary) and "passed" in summary[-1] and not re.search("failed|error", summary[-1])
    checked.append({"target": PARITY, "measured": summary[-1] if summary else None, "format": None, "met": passed})
    return checked


def target_rows(targets: list[dict]) -> list[list]:
    def verdict(met: bool | None) -> str | None:
        return None if met is None else "yes" if met else "no"

    return [[t["target"], {"value": t["measured"], "format": t["format"]}, verdict(t["met"])] for t in targets]


def latency_table(latency: dict) -> tuple[list[dict], list[list]]:
    """imagine's p50 per variant (rows) and cell (columns), and latent steps/s at the largest batch of the shortest
    horizon: docs/gpu.md's table."""
    imagine = [r for r in latency.get("results", []) if r["call"] == "imagine"]
    cells = sorted({(r["horizon"], r["batch"]) for r in imagine})
    by_cell = {(r["backend"], r["horizon"], r["batch"]): r for r in imagine}
    widest = max((c for c in cells if c[0] == cells[0][0]), key=lambda c: c[1]) if cells else (0, 0)
    columns = [{"name": "variant"}] + [{"name": f"B={b} H={h}", "format": "time"} for h, b in cells]
    columns.append({"name": f"latent steps/s at B={widest[1]} H={widest[0]}", "format": ".2e"})
    rows = []
    for backend, label in LABELS.items():
        if any(r["backend"] == backend for r in imagine):
            row = [by_cell.get((backend, h, b)) for h, b in cells + [widest]]
            rows.append([label] + [None if r is None else r["p50_us"] * 1e-6 for r in row[:-1]])
            rows[-1].append(None if row[-1] is None else row[-1]["steps_per_s"])
    return columns, rows


def planner_table(planner: dict) -> tuple[list[dict], list[list]]:
    """One control tick's p50 (observe + plan) and the plan's alone, per cell and variant, with ticks/s and the
    speed-up over the first variant (torch eager) in the same run."""
    ticks = planner.get("rows", [])
    columns = [
        {"name": "samples × horizon × iterations"},
        {"name": "variant"},
        {"name": "tick (observe + plan)", "format": "time"},
        {"name": "the plan alone", "format": "time"},
        {"name": "ticks/s", "format": ".0f"},
        {"name": "vs torch eager", "format": ".2f"},
    ]
    rows = []
    for r in ticks:
        cell = f"{r['samples']} × {r['horizon']} × {r['iterations']}{' (default)' if r['default'] else ''}"
        variant = LABELS.get(r["backend"], r["backend"])
        plan = r.get("plan_ms_p50")
        rows.append(
            [cell, variant, r["ms_p50"] * 1e-3, None if plan is None else plan * 1e-3, r["ticks_per_s"],
             r["speedup_vs_torch"]]
        )  # fmt: skip
    return columns, rows


def summary(env: dict, parts: list[dict], targets: list[dict], dry_run: bool) -> str:
    part_columns = [{"name": "part"}, {"name": "exit code", "format": "d"}, {"name": "seconds", "format": ".1f"}]
    lines = [
        f"# gpu-check{' (dry run on the CPU)' if dry_run else ''}",
        "",
        f"Machine: {machine_line(env)}; Python {env['python']}.",
        "",
        markdown_table(part_columns, [[p["part"], p["exit_code"], p["seconds"]] for p in parts]),
        "",
        markdown_table(TARGET_COLUMNS, target_rows(targets)),
    ]
    return "\n".join(lines) + "\n"


def write_tables(folder: Path, env: dict, latency: dict, planner: dict, targets: list[dict], dry_run: bool) -> None:
    """docs/gpu.md's tables as results files in `folder`."""
    command = "python benchmarks/gpu_check.py --dry-run" if dry_run else "make gpu-check"
    where = env.get("gpu", "the CPU (dry run)")
    latency_columns, latency_rows = latency_table(latency)
    model = "tiny model (dry run)" if dry_run else "default model"
    save_results(
        folder / "gpu_rollout_latency.json",
        f"p50 of one Rollout.imagine call, inputs and outputs torch tensors on the device; {model}, random weights",
        latency_columns,
        latency_rows,
        env,
        command=command,
    )
    planner_columns, planner_rows = planner_table(planner)
    save_results(
        folder / "gpu_planner_ticks.json",
        "One control tick (observe one frame, plan; benchmarks/planner_speed.py --device cuda --quick), p50; "
        f"{model} with reward and continuation heads, random weights",
        planner_columns,
        planner_rows,
        env,
        command=command,
    )
    save_results(folder / "gpu_targets.json", f"The GPU targets on {where}", TARGET_COLUMNS, target_rows(targets),
                 env, command=command)  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    env = environment("cpu" if args.dry_run else "cuda")
    print(json.dumps(env), flush=True)
    python = sys.executable
    if args.dry_run:
        device, batches, horizons, variants = "cpu", "1,4", "15", "torch,torch-bf16,onnxruntime,torch-cudagraphs"
        # the tiny model with the heads that configs/carracing.yaml trains (its random frames need rewards too)
        tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
        (out / "tiny_heads.yaml").write_text(yaml.safe_dump({**tiny, "model": {**tiny["model"], "heads": True}}))
        latency_extra = ["--size", "tiny"]
        train = ["--config", str(out / "tiny_heads.yaml"), "--steps", "2", "--warmup", "1"]
        planner_args = ["--size", "tiny", "--cells", "32x4x1", "--backends", "torch"]
    else:
        device, batches, horizons, variants = "cuda", "1,64,1024,4096", "15,50", VARIANTS
        latency_extra, train = [], ["--config", "configs/carracing.yaml", "--steps", "30", "--warmup", "5"]
        planner_args = []
    parts = [
        run_part(
            "CUDA tests",
            [python, "-m", "pytest", "-m", "gpu", "-rs", "-p", "no:cacheprovider", "tests/test_gpu.py",
             "tests/test_fused_rollout.py"],
            150,
            out / "gpu_tests.log",
        ),
        run_part(
            "rollout latency",
            [python, "benchmarks/rollout_latency.py", "--device", device, "--backends", variants, "--batches", batches,
             "--horizons", horizons, "--budget-s", str(args.budget_s), "--json", str(out / "rollout_latency.json"),
             "--markdown", str(out / "rollout_latency.md"), "--results",
             str(out / "results" / f"rollout_latency_{device}.json"), *latency_extra],
            150,
        ),
        run_part(
            "training throughput",
            [python, "benchmarks/train_throughput.py", "--device", device, "--json",
             str(out / "train_throughput.json"), "--results", str(out / "results" / f"train_throughput_{device}.json"),
             *train],
            90,
        ),
        run_part(
            "planner ticks",
            [python, "benchmarks/planner_speed.py", "--device", device, "--quick", "--json",
             str(out / "planner_speed.json"), *planner_args],
            120,
        ),
    ]  # fmt: skip
    latency, planner = read_json(out / "rollout_latency.json"), read_json(out / "planner_speed.json")
    tests_log = out / "gpu_tests.log"
    targets = check_targets(latency, planner, tests_log.read_text() if tests_log.is_file() else None)
    parts.append(
        {"part": "total (start-up included)", "exit_code": 0, "seconds": round(time.perf_counter() - start, 1)}
    )
    text = summary(env, parts, targets, args.dry_run)
    train_file = out / "train_throughput.json"
    if train_file.is_file():
        train_figures = json.loads(train_file.read_text())
        text += f"\nTraining throughput ({train_figures['config']}, {train_figures['device']}): "
        text += f"{train_figures['frames_per_s']:.0f} frames/s, {train_figures['ms_per_step']:.1f} ms/step.\n"
    if planner:
        text += "\nControl ticks with the planner (observe + plan, p50):\n\n"
        text += markdown_table(*planner_table(planner)) + "\n"
    (out / "gpu_check.md").write_text(text)
    write_tables(out / "results", env, latency, planner, targets, args.dry_run)
    report = {"environment": env, "parts": parts, "targets": targets, "dry_run": args.dry_run}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n" + text, flush=True)
    return 1 if any(p["exit_code"] for p in parts) else 0


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


if __name__ == "__main__":
    sys.exit(main())
