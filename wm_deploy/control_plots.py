"""The pictures of a `wm-control` run: the returns of every policy (matplotlib, Agg) and a side-by-side GIF of
one planner episode, the real frame beside the decoded imagined frame at the planner's horizon (PIL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from wm_core.publish import atomic_write

from .control import PLANNER, ControlResult

SCALE = 3
"""frames are shown at 3x the model's frame size (nearest neighbour): 64 x 64 is too small to see"""
MAX_GIF_FRAMES = 250
"""longer episodes are subsampled evenly: a 1000-tick GIF of 2 x 192 x 192 frames would be tens of MB"""
GIF_MS = 80
HEADER = 14


def returns_plot(result: ControlResult, path: Path) -> None:
    """One marker per episode and a bar at the mean, per policy (the planner first)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(result.episodes)
    figure = Figure(figsize=(1.8 + 1.6 * len(names), 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for x, name in enumerate(names):
        returns = np.asarray([e.episode_return for e in result.episodes[name]])
        colour = "tab:blue" if name == PLANNER else "tab:grey"
        axes.bar(x, returns.mean(), width=0.6, color=colour, alpha=0.35)
        axes.scatter(np.full(len(returns), x), returns, color=colour, zorder=3, s=18)
    axes.axhline(0.0, color="black", lw=0.6)
    axes.set_xticks(range(len(names)), names)
    axes.set(ylabel="episode return", title=f"{result.env_id}: {len(result.episodes[PLANNER])} episode(s) each")
    axes.grid(alpha=0.3, axis="y")
    atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=90), mode=0o644)


def side_by_side_gif(frames: list[tuple[np.ndarray, np.ndarray]], path: Path, horizon: int) -> None:
    """frames: per tick (real, imagined `horizon` steps ahead) uint8 [H, W, 3] -> an animated GIF, real |
    imagined, labelled."""
    shown = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), MAX_GIF_FRAMES)).round().astype(int))
    images = [_pair(frames[i][0], frames[i][1], int(i), horizon) for i in shown]

    def write(file) -> None:
        images[0].save(file, format="GIF", save_all=True, append_images=images[1:], duration=GIF_MS, loop=0)

    atomic_write(path, write, mode=0o644)


def _pair(real: np.ndarray, imagined: np.ndarray, tick: int, horizon: int) -> Image.Image:
    h, w = real.shape[:2]
    size = (w * SCALE, h * SCALE)
    canvas = Image.new("RGB", (2 * size[0], HEADER + size[1]), "white")
    canvas.paste(Image.fromarray(real).resize(size, Image.Resampling.NEAREST), (0, HEADER))
    canvas.paste(Image.fromarray(imagined).resize(size, Image.Resampling.NEAREST), (size[0], HEADER))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 1), f"real, tick {tick}", fill="black")
    draw.text((size[0] + 4, 1), f"imagined, {horizon} steps ahead", fill="black")
    return canvas
