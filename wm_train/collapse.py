"""Posterior collapse: the encoder's posterior falls onto the prior N(0, I), its means stop varying with the
frame, and the decoder draws the mean image whatever it is given. Measured here; the trainer warns with
COLLAPSE_CHECKLIST and `wm-eval` reports it (docs/evaluation.md).

Dimensions: B batch, T time, S latent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from wm_core.actions import ActionCodec
from wm_core.model import WorldModel

from .data import to_batch

# A latent dimension is "active" when its posterior mean varies across frames with a std above 0.1 of the
# posterior's own std: the "active units" of Burda et al. 2016 (IWAE, section 5.2) count Cov_x(E_q[z_j]) > 0.01
# against the prior's std of 1; measured against the posterior's std instead (the same thing once collapsed,
# where q = prior), latents whose whole scale is still small early in training count as active too.
ACTIVE_RATIO = 0.1
# kld (summed over dimensions) below this is "towards zero": an untrained encoder sits near 0.1 nats per
# dimension, a collapsed one at 0.00.
COLLAPSED_KLD = 0.1
# rec improving by less than this fraction over the last two epochs has "stopped improving".
STALLED_REC = 0.01
STALL_EPOCHS = 2

COLLAPSE_CHECKLIST = (
    "posterior collapse: {reason}. The latents carry almost nothing about the frames; the decoder draws the "
    "mean image. Check that the frames differ from each other, then try longer training, a larger "
    "train.recon_change_weight (e.g. 100: small objects on a plain background), a higher train.free_nats (e.g. "
    "1.0, a KL floor per latent dimension), a longer train.kl_warmup_steps (e.g. 2000) or a lower train.beta "
    '(e.g. 0.1); none of them is a sure fix (docs/evaluation.md, "Small objects", has what each did on '
    "small-object scenes)."
)


@dataclass
class LatentActivity:
    """How much the posterior means vary over a set of frames."""

    latent_std: float
    """std of the posterior means across the frames, mean over latent dimensions (the prior's std is 1)"""
    posterior_std: float
    """root mean square over the frames of the posterior's std, mean over latent dimensions"""
    active_dims: int
    """latent dimensions whose posterior means vary across frames with a std above ACTIVE_RATIO x their
    posterior std"""
    latent_dim: int
    """S: latent dimensions in all"""


@torch.no_grad()
def latent_activity(
    model: WorldModel,
    windows: Sequence[tuple[np.ndarray, ...]],
    codec: ActionCodec,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> LatentActivity:
    """Posterior means of every frame of raw (obs, actions) `windows` -> LatentActivity."""
    model.eval()
    # Per dimension: sum of the means, of their squares, and of the posterior variances.
    moments = torch.zeros(3, model.cfg.latent_dim, dtype=torch.float64)
    frames = 0
    for first in range(0, len(windows), batch_size):
        obs, _ = to_batch(windows[first : first + batch_size], codec, device)
        mean, std = model.encode(obs)
        mean, std = mean.flatten(0, 1).double().cpu(), std.flatten(0, 1).double().cpu()  # [B, T, S] -> [B*T, S]
        moments += torch.stack([mean.sum(0), mean.pow(2).sum(0), std.pow(2).sum(0)])
        frames += mean.shape[0]
    signal = (moments[1] / frames - (moments[0] / frames).pow(2)).clamp(min=0).sqrt()
    noise = (moments[2] / frames).sqrt()
    active = int((signal > ACTIVE_RATIO * noise).sum())
    return LatentActivity(float(signal.mean()), float(noise.mean()), active, model.cfg.latent_dim)


def collapse_reason(activity: LatentActivity, kld: float, rec_history: Sequence[float] = ()) -> str | None:
    """Why the latents look collapsed, or None. Collapsed: no dimension is active.

    During training (`rec_history`: the validation rec of each epoch so far, oldest first) no active dimension
    may be a slow start, so it also takes a KL to N(0, I) near zero or a reconstruction error that improved by
    less than STALLED_REC over the last STALL_EPOCHS epochs. On a finished checkpoint (wm-eval: no history) no
    active dimension is enough: the decoder gets next to nothing from the frame."""
    if activity.active_dims > 0:
        return None
    signs = []
    if kld < COLLAPSED_KLD:
        signs.append(f"kld {kld:.3f} nats")
    if len(rec_history) >= 2:
        before = rec_history[max(0, len(rec_history) - 1 - STALL_EPOCHS)]
        if rec_history[-1] > (1 - STALLED_REC) * before:
            signs.append(f"rec stopped improving ({before:.2f} -> {rec_history[-1]:.2f})")
        if not signs:
            return None
    activity_line = (
        f"no latent dimension varies across the frames (std of the posterior means {activity.latent_std:.3f}, "
        f"posterior std {activity.posterior_std:.3f}: 0 of {activity.latent_dim} active)"
    )
    return ", ".join([activity_line, *signs])
