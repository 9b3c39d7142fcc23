"""Control returns across training seeds, as a results file: reads the control.json of several wm-control runs
(one per variant and training seed) and tabulates each run (mean ± std over its episodes, the lowest return, the
episodes below a threshold, the plan time per tick) and, per variant, the runs together (the mean and std of the
runs' means: one training run is one draw).

    python benchmarks/control_table.py --results docs/results/control_k4.json --title "..." \
        "planner:0:runs/a_s0/control_full" "planner:1:runs/a_s1/control_full" "actor:0:runs/a_s0/control_actor"

Each run is VARIANT:TRAINING_SEED:FOLDER (a wm-control report folder). `--command` records how the folders were
made (the wm-control command lines); the results file names this script's command too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from report import environment, markdown_table, save_results

COLUMNS = [
    {"name": "policy"},
    {"name": "training seed", "align": "right"},
    {"name": "episode seeds"},
    {"name": "return", "format": ".1f"},
    {"name": "lowest", "format": ".1f"},
    {"name": "below threshold", "align": "right"},
    {"name": "tick p50", "format": "time"},
]


def read_run(spec: str) -> tuple[str, str, dict]:
    """VARIANT:SEED:FOLDER -> (variant, seed, the summary of the policy that wm-control drove)."""
    variant, seed, folder = spec.rsplit(":", 2)
    report = json.loads((Path(folder) / "control.json").read_text())
    return variant, seed, report["policies"]["planner"]


def seed_range(episodes: list[dict]) -> str:
    seeds = sorted(e["seed"] for e in episodes)
    return f"{seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])


def table(runs: list[tuple[str, str, dict]], threshold: float) -> list[list]:
    rows: list[list] = []
    by_variant: dict[str, list[tuple[str, np.ndarray]]] = {}
    for variant, seed, policy in runs:
        returns = np.array([e["return"] for e in policy["episodes"]])
        below = int((returns < threshold).sum())
        tick = policy["latency_ms"].get("plan", {}).get("p50")
        rows.append(
            [
                variant,
                seed,
                seed_range(policy["episodes"]),
                [float(returns.mean()), float(returns.std())],
                float(returns.min()),
                f"{below}/{len(returns)}",
                None if tick is None else tick / 1e3,
            ]
        )
        by_variant.setdefault(variant, []).append((seed, returns))
    for variant, members in by_variant.items():
        if len(members) < 2:
            continue
        means = np.array([r.mean() for _, r in members])
        every = np.concatenate([r for _, r in members])
        rows.append(
            [
                f"**{variant}, mean of the runs**",
                ", ".join(s for s, _ in members),
                "",
                [float(means.mean()), float(means.std())],
                float(every.min()),
                f"{int((every < threshold).sum())}/{len(every)}",
                None,
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="VARIANT:SEED:FOLDER")
    parser.add_argument("--results", type=Path, required=True, help="The results file to write.")
    parser.add_argument("--title", required=True)
    parser.add_argument("--command", default="", help="How the report folders were made (wm-control commands).")
    parser.add_argument("--threshold", type=float, default=300.0, help="Count the episodes below this return.")
    args = parser.parse_args(argv)
    rows = table([read_run(spec) for spec in args.runs], args.threshold)
    columns = [dict(c) for c in COLUMNS]
    columns[5]["name"] = f"below {args.threshold:g}"
    print(markdown_table(columns, rows))
    command = " ".join(["python", *sys.argv])
    if args.command:
        command = f"{args.command}; then {command}"
    env = environment()
    save_results(args.results, args.title, columns, rows, env, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
