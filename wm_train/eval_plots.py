"""The pictures of a `wm-eval` report: error against horizon (matplotlib, Agg) and real | predicted | error
strips (PIL, like the training previews)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .eval_report import EvalReport

STRIP_ROWS = ("real", "predicted", "|error|")
STRIP_COLUMNS = 12  # horizon steps shown per strip, evenly spaced, always including the first and the last
LABEL_WIDTH = 64
HEADER_HEIGHT = 14


def save_error_plot(report: EvalReport, path: Path) -> None:
    """Three panels against the horizon step: pixel MSE (true, shuffled and random actions, the repeat-last-frame
    baseline, the reconstruction floor), open-loop latent KL, and the spread across action sequences."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = np.arange(1, report.horizon + 1)
    figure = Figure(figsize=(15, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    pixels, latents, spreads = figure.subplots(1, 3)
    for split, colour in (("val", "tab:blue"), ("train", "tab:orange")):
        metrics = report.splits[split]
        width = 2.0 if split == report.split else 1.0
        pixels.plot(steps, metrics.open_loop.pixel_mse, color=colour, lw=width, label=f"{split}: true actions")
        pixels.plot(
            steps,
            metrics.actions.shuffled_pixel_mse,
            color=colour,
            lw=width,
            ls="--",
            label=f"{split}: shuffled actions",
        )
        pixels.plot(
            steps, metrics.actions.random_pixel_mse, color=colour, lw=width, ls=":", label=f"{split}: random actions"
        )
        latents.plot(steps, metrics.open_loop.latent_kl, color=colour, lw=width, label=split)
        spreads.plot(steps, metrics.actions.spread, color=colour, lw=width, label=split)
    headline = report.splits[report.split].open_loop
    pixels.plot(steps, headline.copy_last_mse, color="grey", label=f"{report.split}: repeat last frame")
    pixels.axhline(headline.recon_mse, color="black", lw=0.8, ls="-.", label=f"{report.split}: reconstruction")
    pixels.set(title="open-loop pixel MSE", xlabel="horizon step", ylabel="MSE per pixel")
    latents.set(title="open-loop KL(posterior || prior)", xlabel="horizon step", ylabel="nats")
    spreads.set(title="spread across action sequences", xlabel="horizon step", ylabel="std / latent scale")
    pixels.legend(fontsize=7)
    for axes in (latents, spreads):
        axes.legend(fontsize=8)
    for axes in (pixels, latents, spreads):
        axes.grid(alpha=0.3)
    figure.suptitle(
        f"{Path(report.checkpoint).name or 'model'}: context {report.context}, "
        f"{report.splits[report.split].sequences} {report.split} sequences"
    )
    figure.savefig(path, dpi=90)


def save_strips(report: EvalReport, folder: Path) -> list[str]:
    """One PNG per example sequence: rows real, predicted, absolute error; columns the last context frame
    and up to STRIP_COLUMNS horizon steps. Returns the file names."""
    examples = report.examples
    if examples is None:
        return []
    shown = np.unique(np.linspace(1, report.horizon, min(STRIP_COLUMNS, report.horizon)).round().astype(int))
    names = []
    for i, (real, predicted) in enumerate(zip(examples.real, examples.predicted)):
        future = real[report.context :]  # [H, 3, h, w]
        last_context = real[report.context - 1]
        columns = [(f"t={report.context - 1}", last_context, last_context, np.zeros_like(last_context))]
        columns += [(f"+{s}", future[s - 1], predicted[s - 1], np.abs(predicted[s - 1] - future[s - 1])) for s in shown]
        name = f"strip_{i:02d}.png"
        _strip_image(columns).save(folder / name)
        names.append(name)
    return names


def _strip_image(columns: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> Image.Image:
    size = columns[0][1].shape[-1]
    rows = [np.concatenate([c[r + 1] for c in columns], axis=-1) for r in range(len(STRIP_ROWS))]  # [3, h, n*w]
    grid = np.concatenate(rows, axis=-2).transpose(1, 2, 0)  # [3, 3h, n*w] -> [3h, n*w, 3]
    grid = (np.clip(grid, 0.0, 1.0) * 255).astype(np.uint8)
    canvas = Image.new("RGB", (LABEL_WIDTH + grid.shape[1], HEADER_HEIGHT + grid.shape[0]), "white")
    canvas.paste(Image.fromarray(np.ascontiguousarray(grid)), (LABEL_WIDTH, HEADER_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    for r, label in enumerate(STRIP_ROWS):
        draw.text((4, HEADER_HEIGHT + r * size + size // 2 - 5), label, fill="black")
    for c, (label, *_) in enumerate(columns):
        draw.text((LABEL_WIDTH + c * size + 4, 1), label, fill="black")
    return canvas
