"""What `wm-control` writes: control.json (per-episode return and length per policy, per-tick latency split into
observe / plan / env, the planner's settings), a plot of the returns and a side-by-side video of one planner
episode (wm_deploy.control_plots draws those two).

control.json:
    {"env", "source", "backend", "backend_detail", "objective", "policy", "steps", "seed", "skip_start",
     "action_repeat",
     "planner": {settings}, "reference_policy", "reference_from",
     "policies": {name: {"episodes": [{"seed", "return", "length", "terminated"}], "mean_return", "std_return",
                         "mean_length", "latency_ms": {part: {"p50", "p90", "p99", "mean", "max"}}}},
     "files": {"returns_plot", "video"}}
latency parts: observe, plan, env, and tick = observe + plan (what the controller adds to the environment's step).
"steps" and an episode's "length" count environment steps; a tick (a decision) holds its action "action_repeat"
of them, and "env" times them all.
"policy" says what drove the episodes under "planner": the planner, or the actor alone (--policy actor).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from wm_core.publish import atomic_write_bytes, naming_failed_writes

from . import control_plots
from .control import PARTS, PLANNER, ControlResult, Episode

REPORT = "control.json"
RETURNS_PLOT = "returns.png"
VIDEO = "episode.gif"


def summary(result: ControlResult) -> dict:
    """The content of control.json (without its "files" entry)."""
    return {
        "env": result.env_id,
        "source": result.source,
        "backend": result.backend,
        "backend_detail": result.backend_detail,
        "objective": result.objective,
        "policy": result.policy,
        "steps": result.steps,
        "seed": result.seed,
        "skip_start": result.skip_start,
        "action_repeat": result.action_repeat,
        "planner": dataclasses.asdict(result.settings),
        "reference_policy": result.reference_policy,
        "reference_from": result.reference_from,
        "policies": {name: policy_summary(episodes) for name, episodes in result.episodes.items()},
    }


def policy_summary(episodes: list[Episode]) -> dict:
    returns = np.asarray([e.episode_return for e in episodes])
    seconds = np.concatenate([e.seconds for e in episodes])  # [ticks, 3]
    parts = {part: seconds[:, i] for i, part in enumerate(PARTS)}
    parts["tick"] = seconds[:, 0] + seconds[:, 1]
    return {
        "episodes": [
            {"seed": e.seed, "return": e.episode_return, "length": e.length, "terminated": e.terminated}
            for e in episodes
        ],
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "mean_length": float(np.mean([e.length for e in episodes])),
        "latency_ms": {part: latency(values) for part, values in parts.items()},
    }


def latency(seconds: np.ndarray) -> dict:
    """Percentiles, mean and max in milliseconds (zeros for an episode that ended before its first tick)."""
    if seconds.size == 0:
        return dict.fromkeys(("p50", "p90", "p99", "mean", "max"), 0.0)
    p50, p90, p99 = np.percentile(seconds, (50, 90, 99)) * 1e3
    return {"p50": p50, "p90": p90, "p99": p99, "mean": seconds.mean() * 1e3, "max": seconds.max() * 1e3}


def write_report(result: ControlResult, out_dir: str | Path) -> Path:
    """Write control.json, the returns plot and (when the planner's first episode was recorded) the video into
    `out_dir` (created) -> the path of control.json. Each file is written atomically."""
    out_dir = Path(out_dir)
    with naming_failed_writes(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    report = summary(result)
    files: dict[str, str | None] = {"returns_plot": RETURNS_PLOT, "video": None}
    control_plots.returns_plot(result, out_dir / RETURNS_PLOT)
    recorded = result.episodes[PLANNER][0].frames
    if recorded:
        control_plots.side_by_side_gif(recorded, out_dir / VIDEO, result.settings.horizon)
        files["video"] = VIDEO
    report["files"] = files
    text = json.dumps(_plain(report), indent=2, allow_nan=False) + "\n"
    return atomic_write_bytes(out_dir / REPORT, text.encode(), mode=0o644)


def _plain(value):
    """numpy scalars -> Python numbers, for json."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def format_table(report: dict) -> str:
    """A few lines for the terminal: return and tick latency per policy."""
    lines = [
        f"{'policy':<18} {'return (mean ± std)':>20} {'length':>8} {'observe':>9} {'plan':>9} {'env':>9}  (p50 ms)"
    ]
    for name, entry in report["policies"].items():
        ms = entry["latency_ms"]
        lines.append(
            f"{name:<18} {entry['mean_return']:>11.1f} ± {entry['std_return']:<6.1f} {entry['mean_length']:>8.0f} "
            f"{ms['observe']['p50']:>9.2f} {ms['plan']['p50']:>9.2f} {ms['env']['p50']:>9.2f}"
        )
    return "\n".join(lines)
