"""Is this checkout's planner tick slower than another checkout's? Both planners in one process, on the same
Rollout, timed in alternating blocks (benchmarks/timing.py), so that a busy machine slows both alike: a change to
the planner is judged by the ratio within one run, not by two runs minutes apart.

    git worktree add /tmp/baseline HEAD~3
    python benchmarks/planner_ab.py --baseline /tmp/baseline              # onnxruntime, 256 x 12 x 3, CPU
    python benchmarks/planner_ab.py --baseline /tmp/baseline --backend torch --device cuda

The baseline's `wm_deploy/planner.py` and `wm_deploy/plan_distributions.py` are loaded as a package of their own
beside this checkout's `wm_deploy`, whose Rollout both use; a baseline whose planner needs other parts of its own
checkout cannot be compared this way. What a tick includes is planner_speed.py's (observe + Planner.act); the
model is a random default-size one with heads unless --artifacts.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from planner_speed import BOUNDS, tick_calls

import wm_deploy
from wm_deploy import Planner, Rollout
from wm_export import export_artifacts

from report import add_results_option, environment, machine_line, markdown_table, save_results
from timing import Sampling, random_checkpoint, summarise, synchronizer, time_calls

BASELINE_PACKAGE = "wm_deploy_baseline"


def load_baseline_planner(checkout: Path) -> type:
    """The Planner class of `checkout`'s wm_deploy/planner.py, its relative imports resolved against its own
    plan_distributions.py and this checkout's other wm_deploy modules."""
    package = types.ModuleType(BASELINE_PACKAGE)
    package.__path__ = []
    sys.modules[BASELINE_PACKAGE] = package
    for name in ("ensemble", "rollout", "state"):
        sys.modules[f"{BASELINE_PACKAGE}.{name}"] = importlib.import_module(f"wm_deploy.{name}")
    for name in ("plan_distributions", "planner"):
        path = checkout / "wm_deploy" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"{BASELINE_PACKAGE}.{name}", path)
        assert spec is not None and spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules[f"{BASELINE_PACKAGE}.planner"].Planner


def commit(checkout: Path) -> str:
    """The short commit a checkout is at (with `+` when it has uncommitted changes), or `?` outside git."""
    git = ["git", "-C", str(checkout)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of this repository")
    parser.add_argument("--artifacts", type=Path, help="artifact folder of a model with heads (default: a fresh one)")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cell", default="256x12x3", help="SAMPLESxHORIZONxITERATIONS")
    parser.add_argument("--rounds", type=int, default=12, help="blocks per planner")
    parser.add_argument("--block", type=int, default=5, help="ticks per block")
    add_results_option(parser)
    args = parser.parse_args(argv)
    samples, horizon, iterations = (int(x) for x in args.cell.split("x"))
    Baseline = load_baseline_planner(args.baseline.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.artifacts
        if folder is None:
            folder = export_artifacts(random_checkpoint(Path(tmp), heads=True), Path(tmp) / "artifacts")
        rollout = Rollout.load(folder, backend=args.backend, device=args.device)
        planners = {
            name: kind(rollout, bounds=BOUNDS, seed=0, samples=samples, horizon=horizon, iterations=iterations)
            for name, kind in (("baseline", Baseline), ("this checkout", Planner))
        }
        for planner in planners.values():
            planner.warmup()
        calls = {name: tick_calls(rollout, planner)[0] for name, planner in planners.items()}
        sampling = Sampling.fixed(args.rounds, args.block)
        seconds = time_calls(calls, synchronizer(torch.device(rollout.device)), sampling)
    env = environment(str(rollout.device))
    print(f"{machine_line(env)}; {rollout.backend_name} ({rollout.backend_detail}); {args.cell}")
    print(f"baseline: {args.baseline.resolve()}; this checkout: {Path(wm_deploy.__file__).parent.parent}")
    columns = [{"name": "planner"}, {"name": "p50", "format": "time"}, {"name": "p90", "format": "time"}]
    columns.append({"name": "p50 / baseline's", "format": ".3f"})
    stats = {name: summarise(s) for name, s in seconds.items()}
    base = stats["baseline"]["p50_us"]
    rows = [[name, s["p50_us"] * 1e-6, s["p90_us"] * 1e-6, s["p50_us"] / base] for name, s in stats.items()]
    print(markdown_table(columns, rows))
    blocks = {name: np.asarray(s).reshape(args.rounds, -1).mean(1) for name, s in seconds.items()}
    ratios = blocks["this checkout"] / blocks["baseline"]
    spread = f"{ratios.min():.3f}–{ratios.max():.3f}"
    print(f"block by block, this checkout / baseline: median {np.median(ratios):.3f}, range {spread}")
    if args.results:
        title = (
            f"One planner tick (observe + Planner.act, {args.cell}) of this checkout ({commit(Path.cwd())}) against "
            f"the planner of commit {commit(args.baseline)}, in one run on {rollout.backend_name}; block-by-block "
            f"ratio median {np.median(ratios):.3f}, range {spread}"
        )
        save_results(args.results, title, columns, rows, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
