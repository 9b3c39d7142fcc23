"""Loss terms of the world model and the dataclass they come back in."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch


@dataclass
class WorldModelOutput:
    """Every field is a scalar tensor and is logged under its own name."""

    loss: torch.Tensor
    """total: recon_loss + beta * kld + rssm_scale * (rssm_loss + (K - 1) * overshooting) / K + reward_loss +
    cont_loss, K the overshooting distance (K = 1: recon_loss + beta * kld + rssm_scale * rssm_loss); kld floored
    per dimension at free_nats when that is set (the floor shapes the gradient, the logged kld is the true KL)"""
    recon_loss: torch.Tensor
    """squared error of each reconstructed frame, summed over pixels, averaged over batch and time (each pixel
    weighted by change_weights when recon_change_weight is set)"""
    kld: torch.Tensor
    """KL(q(z_0|x_0) || N(0, I)), summed over latent dimensions"""
    rssm_loss: torch.Tensor
    """KL(q(z_t+1|x_t+1) detached || p(z_t+1|z_t, a_t)), summed over latent dimensions"""
    one_step: torch.Tensor
    """pixel MSE of the decoded prior mean at t+1 against x_t+1 (a metric: trains nothing)"""
    overshooting: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    """mean over k = 2..K of KL(q(z_t+k|x_t+k) detached || the prior k steps open loop from t); 0 when K = 1"""
    reward_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    """squared error of the reward head's prediction of the reward target (data: train.reward_window); 0
    without heads"""
    cont_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    """binary cross-entropy of the continuation head against 1 - terminated; 0 without heads"""

    def scalars(self) -> dict[str, float]:
        """Python floats for logging (each one synchronises with the device)."""
        return {f.name: float(getattr(self, f.name).detach()) for f in fields(self)}


def gaussian_kl_per_dim(
    mean_q: torch.Tensor, std_q: torch.Tensor, mean_p: torch.Tensor, std_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean_q, std_q) || N(mean_p, std_p)) of each dimension, same shape as the inputs."""
    var_ratio = (std_q / std_p).pow(2)
    mahalanobis = ((mean_q - mean_p) / std_p).pow(2)
    return 0.5 * (var_ratio + mahalanobis - 1.0 - var_ratio.log())


def gaussian_kl(mean_q: torch.Tensor, std_q: torch.Tensor, mean_p: torch.Tensor, std_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_q, std_q) || N(mean_p, std_p)) summed over the last dimension."""
    return gaussian_kl_per_dim(mean_q, std_q, mean_p, std_p).sum(-1)


def free_nats_kl(kl_per_dim: torch.Tensor, free_nats: float) -> torch.Tensor:
    """[N, S] per-dimension KLs -> sum over S of max(batch-mean KL, free_nats).

    A dimension whose KL is under the floor gets no gradient from it, so the KL cannot push it all the way to
    the prior and the decoder keeps a reason to use it ("free bits" per dimension, Kingma et al. 2016, IAF
    section 2.2; PlaNet, Hafner et al. 2019, floors the total KL at 3 nats instead)."""
    return kl_per_dim.mean(0).clamp(min=free_nats).sum()


def change_weights(target: torch.Tensor, change_weight: float) -> torch.Tensor:
    """Frames [B, T, C, H, W] -> per-pixel weights [B, T, 1, H, W]: 1 + change_weight * d, where d in [0, 1] is
    the pixel's largest channel difference from the window's median frame.

    A small object moving over a static background holds a few pixels of each frame; under a uniform squared
    error the decoder gets most of its loss down by drawing the background and the mean image, and the encoder
    has no reason to encode the object (issue 16). The median over the window is the static background; the
    pixels that differ from it are the ones that change. Computed from the data alone: it trains nothing."""
    with torch.no_grad():
        background = target.median(dim=1, keepdim=True).values  # [B, 1, C, H, W]
        change = (target - background).abs().amax(dim=2, keepdim=True)  # [B, T, C, H, W] -> [B, T, 1, H, W]
        return 1.0 + change_weight * change


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Squared error summed over C, H, W; mean over the leading dimensions. `weight` broadcasts against the
    frames (see change_weights); None weighs every pixel 1."""
    error = (recon - target).pow(2)
    if weight is not None:
        error = error * weight
    return error.flatten(-3).sum(-1).mean()
