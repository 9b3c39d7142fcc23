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

from wm_core.publish import check_replaceable, staged_dir

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


def check_report_destination(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse a non-empty `out_dir` unless it is an earlier report (its control.json lists every file in it),
    and that only with `overwrite` (wm_core.publish.check_replaceable)."""
    check_replaceable(out_dir, overwrite, "control report folder", REPORT, report_files)


def report_files(folder: Path) -> set[str]:
    """The files wm-control wrote in the report folder `folder`: control.json and the files it lists."""
    listed = json.loads((folder / REPORT).read_text())["files"]
    return {REPORT, *(name for name in listed.values() if name)}


def write_report(result: ControlResult, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write control.json, the returns plot and (when the planner's first episode was recorded) the video into a
    folder that then replaces `out_dir` whole (`check_report_destination`) -> the path of control.json."""
    out_dir = Path(out_dir)
    report = summary(result)
    files: dict[str, str | None] = {"returns_plot": RETURNS_PLOT, "video": None}
    with staged_dir(out_dir, check=lambda: check_report_destination(out_dir, overwrite)) as folder:
        control_plots.returns_plot(result, folder / RETURNS_PLOT)
        recorded = result.episodes[PLANNER][0].frames
        if recorded:
            control_plots.side_by_side_gif(recorded, folder / VIDEO, result.settings.horizon)
            files["video"] = VIDEO
        report["files"] = files
        text = json.dumps(_plain(report), indent=2, allow_nan=False) + "\n"
        (folder / REPORT).write_text(text)
    return out_dir / REPORT


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
