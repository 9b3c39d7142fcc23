"""How fast is a control tick with the planner? Ticks per second for a small grid of samples x horizon x
iterations, on onnxruntime and torch eager in the same run.

    python benchmarks/planner_speed.py                   # random default-size model with heads, CPU
    python benchmarks/planner_speed.py --quick           # the default setting and two neighbours: ~1 minute
    python benchmarks/planner_speed.py --artifacts runs/carracing/artifacts --json out.json
    python benchmarks/planner_speed.py --cells 256x12x3,512x8x2     # chosen cells only
    python benchmarks/planner_speed.py --device cuda --quick      # torch eager, CUDA graphs and bf16 on a GPU
    python benchmarks/planner_speed.py --full --results docs/results/planner_speed_cpu.json   # the docs' table

What a tick includes: `Rollout.observe` of one 64x64 frame (encoder and one prior step) and `Planner.act` on the
state it returns (`iterations` batched `imagine` calls of `samples` x `horizon`, the planner's sampling, scoring
and refits, the chosen action copied out) -- everything a controller adds to the environment's step. The
backends take turns in blocks of ticks (benchmarks/timing.py), so a busy machine slows both alike; each cell
reports the median and 90th percentile of single ticks, ticks/s = 1 / median, and the speed-up over torch
eager (the first backend); `plan_ms_p50` (in --json) times `Planner.act` alone on an observed state, in the same
blocks. Without --artifacts a randomly initialised model with reward and continuation heads (--size, default
`default`) is saved and exported to a temporary folder; timings do not depend on the weights. Planners are warmed
up first (`Planner.warmup`: on a GPU with CUDA graphs, the tick graph's capture).
The planner's budget: one tick at the default settings (PlannerSettings) <= 100 ms on 2 CPU cores with onnxruntime.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from wm_deploy import LatentState, Planner, PlannerSettings, Rollout
from wm_deploy.loading import VARIANTS

from report import add_results_option, environment, machine_line, markdown_table, progress, save_results
from timing import Sampling, random_checkpoint, summarise, time_calls

EAGER_TICK = "torch-cudagraphs-eager-tick"
"""torch-cudagraphs with the planner's tick graph off: each imagine call its own graph, as before the tick graph"""
BACKENDS = {
    "cpu": "torch,onnxruntime",
    "cuda": f"torch,{EAGER_TICK},torch-cudagraphs,torch-cudagraphs-fused,torch-bf16",
}
"""the default --backends by --device (names of wm_deploy.loading.VARIANTS, and EAGER_TICK); torch eager first:
the baseline"""
GRID = {"samples": (128, 256, 512), "horizon": (8, 12, 16), "iterations": (2, 3, 4)}
"""--full: every combination; the default grid varies one setting at a time around the defaults"""
FULL = Sampling(min_calls=10, max_calls=400, budget_s=3.0, warmup_calls=3)
QUICK = Sampling(min_calls=5, max_calls=100, budget_s=1.0, warmup_calls=2)
BOUNDS = ([-1.0, 0.0, 0.0], [1.0, 1.0, 1.0])  # CarRacing's
COLUMNS = [
    {"name": "samples", "format": "d"},
    {"name": "horizon", "format": "d"},
    {"name": "iterations", "align": "right"},
    {"name": "backend"},
    {"name": "ms/tick p50", "format": ".1f"},
    {"name": "p90", "format": ".1f"},
    {"name": "ticks/s", "format": ".1f"},
    {"name": "vs torch", "format": ".2f"},
]
"""the table (printed, and written by --results): milliseconds per tick, `vs torch` = torch eager's p50 / this"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, help="artifact folder of a model with heads (default: a fresh one)")
    parser.add_argument("--size", default="default", choices=("tiny", "small", "default"))
    parser.add_argument("--device", default="cpu", choices=tuple(BACKENDS), help="where the model runs")
    parser.add_argument("--backends", help=f"comma-separated, first the baseline (default by device: {BACKENDS})")
    parser.add_argument("--quick", action="store_true", help="the default setting and two neighbours, fewer calls")
    parser.add_argument("--full", action="store_true", help="every combination of the grid (27 cells)")
    parser.add_argument("--cells", help="these cells only: SAMPLESxHORIZONxITERATIONS,... e.g. 256x12x3,128x8x2")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch intra-op threads (0: torch's default, one per core); 1 avoids the thread pool's waits when "
        "other processes share the cores",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    add_results_option(parser)
    return parser.parse_args()


def settings_grid(quick: bool, full: bool, cells: str | None = None) -> list[PlannerSettings]:
    default = PlannerSettings()
    if cells:
        try:
            triples = [tuple(int(v) for v in cell.split("x")) for cell in cells.split(",")]
            return [PlannerSettings(samples=n, horizon=h, iterations=i) for n, h, i in triples]
        except ValueError:
            raise SystemExit(f"--cells: expected SAMPLESxHORIZONxITERATIONS,..., got {cells!r}") from None
    if full:
        return [PlannerSettings(samples=n, horizon=h, iterations=i) for n, h, i in itertools.product(*GRID.values())]
    if quick:
        return [default, PlannerSettings(samples=128), PlannerSettings(iterations=4)]
    grid = [default]
    for name, values in GRID.items():
        for value in values:
            cell = PlannerSettings(**{**vars(default), name: value})
            if cell not in grid:
                grid.append(cell)
    return grid


def tick_calls(rollout: Rollout, planner: Planner):
    """One control tick (observe a frame after the previous action, then plan: see the module docstring), and the
    plan alone."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, *rollout.dims.frame), dtype=np.uint8)
    first = rollout.observe(rollout.initial(1), frame)
    previous = LatentState(first.h, first.z)
    action = np.asarray([[0.0, 0.5, 0.0]], np.float32)

    def tick():
        planner.act(rollout.observe(previous, frame, action))

    observed = rollout.observe(previous, frame, action)
    return tick, lambda: planner.act(observed)


def main() -> None:
    args = parse_args()
    sampling = QUICK if args.quick else FULL
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="planner-speed-") as scratch:
        if args.artifacts is not None:
            folder = args.artifacts
        else:
            from wm_export import export_artifacts

            checkpoint = random_checkpoint(Path(scratch), args.size, heads=True)
            folder = export_artifacts(checkpoint, Path(scratch) / "artifacts", decoder=False)
        names = (args.backends or BACKENDS[args.device]).split(",")
        rollouts = {name: load_variant(folder, name, args.device) for name in names}
        if not rollouts[names[0]].has_heads:
            raise SystemExit(f"{folder}: the model has no reward heads; export one trained with model.heads")
        cells = settings_grid(args.quick, args.full, args.cells)
        env = environment(args.device)
        print(machine_line(env))
        print("\n".join(repr(r) for r in rollouts.values()) + "\n")
        rows = []
        for settings in cells:
            planners = {name: Planner(r, settings, bounds=BOUNDS) for name, r in rollouts.items()}
            if EAGER_TICK in planners:
                planners[EAGER_TICK]._tick_graph = None
            for planner in planners.values():
                planner.warmup()
            calls = {}
            for name in names:
                calls[name], calls[f"{name} plan"] = tick_calls(rollouts[name], planners[name])
            seconds = time_calls(calls, lambda: None, sampling)
            for name in names:
                stats = summarise(seconds[name])
                rows.append(
                    {
                        "samples": settings.samples,
                        "horizon": settings.horizon,
                        "iterations": settings.iterations,
                        "backend": name,
                        "default": settings == PlannerSettings(),
                        "ms_p50": stats["p50_us"] / 1e3,
                        "ms_p90": stats["p90_us"] / 1e3,
                        "plan_ms_p50": summarise(seconds[f"{name} plan"])["p50_us"] / 1e3,
                        "ticks_per_s": 1e6 / stats["p50_us"],
                        "calls": stats["calls"],
                    }
                )
            torch_ms = rows[-len(names)]["ms_p50"]
            for row in rows[-len(names) :]:
                row["speedup_vs_torch"] = torch_ms / row["ms_p50"]
            for r in rows[-len(names) :]:
                cell = f"{r['samples']}x{r['horizon']}x{r['iterations']}"
                progress(f"  {cell} {r['backend']}: {r['ms_p50']:.2f} ms, the plan alone {r['plan_ms_p50']:.2f} ms")
    print(markdown_table(COLUMNS, table_rows(rows)))
    if args.json is not None:
        machine = {"cpu": env["cpu"], "cores": env["cpu_count"], "device": args.device}
        if "gpu" in env:
            machine["gpu"] = env["gpu"]
        args.json.write_text(json.dumps({**machine, "rows": rows}, indent=1))
    if args.results is not None:
        model = f"the model of {args.artifacts}" if args.artifacts else f"{args.size}-size model with heads"
        title = f"One planner tick (observe + Planner.act), {model}{'' if args.artifacts else ', untrained weights'}"
        save_results(args.results, title, COLUMNS, table_rows(rows), env, timed=rows)


def load_variant(folder: Path, name: str, device: str) -> Rollout:
    name = "torch-cudagraphs" if name == EAGER_TICK else name
    if name not in VARIANTS:
        raise SystemExit(f"--backends: unknown {name!r}; expected some of {list(VARIANTS)}")
    backend, options = VARIANTS[name]
    if name.startswith("torch-cudagraphs") and device != "cuda":
        raise SystemExit("--backends: CUDA graphs need --device cuda")
    return Rollout.load(folder, backend=backend, device=device, **options)


def table_rows(rows: list[dict]) -> list[list]:
    return [
        [
            r["samples"],
            r["horizon"],
            f"{r['iterations']} (default)" if r["default"] else str(r["iterations"]),
            r["backend"],
            r["ms_p50"],
            r["ms_p90"],
            r["ticks_per_s"],
            r["speedup_vs_torch"],
        ]
        for r in rows
    ]


if __name__ == "__main__":
    main()
