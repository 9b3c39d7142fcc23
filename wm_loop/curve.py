"""wm-loop's learning curve: one row per round, written as curve.jsonl (the data), curve.md (a table) and
curve.png (return against the environment steps the loop collected)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from wm_core.publish import atomic_write, atomic_write_bytes


@dataclass
class CurveRow:
    round: int
    env_steps: int
    """environment steps the loop's collections took up to this round (the evaluations and the recorded data
    excluded)"""
    episodes_collected: int
    """episodes the loop added up to this round"""
    data_frames: int
    """frames (decisions) of all the episodes this round trained on"""
    returns: list[float]
    """return of each evaluation episode (loop.eval_seed on), planner or actor without noise"""
    reward_r2: float | None
    """R² of the imagined reward over the planner's horizon on the validation episodes (wm-eval's, mean over the
    steps); None without heads"""
    value_r2: float | None
    """R² of the critic's value against the discounted return-to-go on the validation episodes; None without one"""
    seconds: dict[str, float]
    """seconds each stage of the round took"""

    @property
    def return_mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def return_std(self) -> float:
        return float(np.std(self.returns))


HEADER = "| round | env steps | episodes | frames | return | reward R² | value R² | minutes |"


def table(rows: list[CurveRow]) -> str:
    """The curve as a Markdown table."""
    lines = [HEADER, "|" + "---:|" * (HEADER.count("|") - 1)]
    for row in rows:
        r2 = ["-" if value is None else f"{value:.2f}" for value in (row.reward_r2, row.value_r2)]
        lines.append(
            f"| {row.round} | {row.env_steps:,} | {row.episodes_collected} | {row.data_frames:,} | "
            f"{row.return_mean:.1f} ± {row.return_std:.1f} | {r2[0]} | {r2[1]} | {sum(row.seconds.values()) / 60:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_curve(rows: list[CurveRow], folder: Path) -> None:
    """curve.jsonl, curve.md and curve.png in `folder`, each replaced atomically."""
    lines = "".join(json.dumps(asdict(row)) + "\n" for row in rows)
    atomic_write_bytes(folder / "curve.jsonl", lines.encode(), mode=0o644)
    atomic_write_bytes(folder / "curve.md", table(rows).encode(), mode=0o644)
    atomic_write(folder / "curve.png", lambda file: plot(rows, file), mode=0o644)


def read_curve(folder: Path) -> list[CurveRow]:
    path = Path(folder) / "curve.jsonl"
    return [CurveRow(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def plot(rows: list[CurveRow], file) -> None:
    """Return (mean and each episode) against the environment steps collected, written as PNG to `file`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    steps = [row.env_steps for row in rows]
    for row in rows:
        axis.scatter([row.env_steps] * len(row.returns), row.returns, s=10, color="tab:blue", alpha=0.4)
    axis.plot(steps, [row.return_mean for row in rows], marker="o", color="tab:blue", label="mean return")
    for row in rows:
        axis.annotate(f"r{row.round}", (row.env_steps, row.return_mean), textcoords="offset points", xytext=(4, 4))
    axis.set_xlabel("environment steps collected by the loop")
    axis.set_ylabel("return on the evaluation seeds")
    axis.grid(alpha=0.3)
    axis.legend(loc="best")
    figure.tight_layout()
    figure.savefig(file, format="png", dpi=100)
    plt.close(figure)
