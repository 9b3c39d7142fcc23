"""A PNG per epoch: ground truth, reconstruction and one-step prediction, side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from wm_core.actions import ActionCodec
from wm_core.model import WorldModel
from wm_core.publish import atomic_write

from .data import EpisodeSet, to_batch

ROWS = ("truth", "recon", "1-step")
LABEL_WIDTH = 48


@torch.no_grad()
def save_preview(
    model: WorldModel,
    episodes: EpisodeSet,
    codec: ActionCodec,
    path: Path,
    device: torch.device | str = "cpu",
    columns: int = 8,
) -> None:
    """Rows: frames x_t, decoded posterior means, decoded priors p(z_t|z_t-1, a_t-1) (first column blank)."""
    model.eval()
    obs, actions = to_batch(episodes.fixed_windows()[:1], codec, device)  # [1, T, 3, H, W]
    obs, actions = obs[:, :columns], actions[:, :columns]
    mean, _ = model.encode(obs)
    prior_mean, _ = model.rssm.observe(mean, actions)  # [1, T-1, S]
    recon = model.decode(mean)[0]
    one_step = torch.cat([torch.zeros_like(obs[0, :1]), model.decode(prior_mean)[0]])
    rows = [torch.cat(list(frames), dim=-1) for frames in (obs[0], recon, one_step)]  # each [3, H, T*W]
    grid = (torch.cat(rows, dim=-2).permute(1, 2, 0).clamp(0, 1) * 255).byte().cpu().numpy()  # [3H, T*W, 3]
    size = obs.shape[-1]
    canvas = Image.new("RGB", (LABEL_WIDTH + grid.shape[1], grid.shape[0]), "white")
    canvas.paste(Image.fromarray(np.ascontiguousarray(grid)), (LABEL_WIDTH, 0))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(ROWS):
        draw.text((4, i * size + size // 2 - 5), label, fill="black")
    atomic_write(path, lambda file: canvas.save(file, format="PNG"), mode=0o644)
