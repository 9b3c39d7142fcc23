"""Loss terms of the world model and the dataclass they come back in."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch


@dataclass
class WorldModelOutput:
    """Every field is a scalar tensor and is logged under its own name."""

    loss: torch.Tensor
    """total: recon_loss + beta * kld + rssm_scale * (rssm_loss + (K - 1) * overshooting) / K, K the
    overshooting distance (K = 1: recon_loss + beta * kld + rssm_scale * rssm_loss)"""
    recon_loss: torch.Tensor
    """squared error of each reconstructed frame, summed over pixels, averaged over batch and time"""
    kld: torch.Tensor
    """KL(q(z_0|x_0) || N(0, I)), summed over latent dimensions"""
    rssm_loss: torch.Tensor
    """KL(q(z_t+1|x_t+1) detached || p(z_t+1|z_t, a_t)), summed over latent dimensions"""
    one_step: torch.Tensor
    """pixel MSE of the decoded prior mean at t+1 against x_t+1 (a metric: trains nothing)"""
    overshooting: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    """mean over k = 2..K of KL(q(z_t+k|x_t+k) detached || the prior k steps open loop from t); 0 when K = 1"""

    def scalars(self) -> dict[str, float]:
        """Python floats for logging (each one synchronises with the device)."""
        return {f.name: float(getattr(self, f.name).detach()) for f in fields(self)}


def gaussian_kl(mean_q: torch.Tensor, std_q: torch.Tensor, mean_p: torch.Tensor, std_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_q, std_q) || N(mean_p, std_p)) summed over the last dimension."""
    var_ratio = (std_q / std_p).pow(2)
    mahalanobis = ((mean_q - mean_p) / std_p).pow(2)
    return 0.5 * (var_ratio + mahalanobis - 1.0 - var_ratio.log()).sum(-1)


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over C, H, W; mean over the leading dimensions."""
    return (recon - target).pow(2).flatten(-3).sum(-1).mean()
