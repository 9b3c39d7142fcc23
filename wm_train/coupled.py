"""The coupled world model: the design gradient isolation replaced, kept as the baseline of the isolation study
(benchmarks/isolation_ablation.py, docs/isolation_study.md).

Dimensions: B batch, T time, C=3 colour channels, H=W frame size, S latent.
"""

from __future__ import annotations

import torch

from wm_core.losses import (
    PLAIN_LOSS,
    LossSettings,
    WorldModelOutput,
    gaussian_kl,
    reconstruction_loss,
    with_overrides,
)
from wm_core.model import WorldModel


class CoupledWorldModel(WorldModel):
    """One graph from pixels through the RSSM back to pixels.

    The RSSM reads posterior samples that are not detached; its KL to the posterior is not detached either, so it
    also trains the encoder; and the prior mean at t+1 is decoded and reconstructs x_t+1, so the pixel loss trains
    the RSSM, the decoder and, through the RSSM's inputs, the encoder. Same architecture and parameters as
    WorldModel: its checkpoints load as a WorldModel and are evaluated as one.
    """

    def forward(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        settings: LossSettings = PLAIN_LOSS,
        *,
        rewards: torch.Tensor | None = None,
        continues: torch.Tensor | None = None,
        **overrides,
    ) -> WorldModelOutput:
        """As WorldModel.forward, on the plain loss only: the coupled design has no overshooting and no
        anti-collapse options, so `settings` must keep overshooting 1, free_nats and recon_change_weight 0."""
        settings = with_overrides(settings, overrides)
        if settings.overshooting != 1 or settings.free_nats or settings.recon_change_weight:
            raise ValueError(
                "the coupled baseline trains the plain loss: overshooting must be 1, free_nats and "
                f"recon_change_weight 0, got {settings.overshooting}, {settings.free_nats} and "
                f"{settings.recon_change_weight}"
            )
        mean, std = self.encode(obs)
        z = mean + std * torch.randn_like(std)
        recon_loss = reconstruction_loss(self.decode(z), obs)
        kld = gaussian_kl(mean[:, 0], std[:, 0], torch.zeros_like(mean[:, 0]), torch.ones_like(std[:, 0])).mean()
        prior_mean, prior_std, hs = self.rssm.observe(z, actions, states=True)
        rssm_loss = gaussian_kl(mean[:, 1:], std[:, 1:], prior_mean, prior_std).mean()
        predicted = self.decode(prior_mean)  # [B, T-1, S] -> [B, T-1, C, H, W]
        prediction_loss = reconstruction_loss(predicted, obs[:, 1:])
        with torch.no_grad():
            one_step = (predicted - obs[:, 1:]).pow(2).mean()
        # The heads (model.heads) learn on detached features as in WorldModel, so that both designs' heads are
        # fitted alike for the closed-loop comparison.
        reward_loss, cont_loss = self.head_losses(
            hs, prior_mean, actions, rewards, continues, settings.head_overshooting
        )
        loss = (
            recon_loss
            + settings.beta * kld
            + settings.rssm_scale * (rssm_loss + prediction_loss)
            + reward_loss
            + cont_loss
        )
        zero = torch.zeros((), device=obs.device)
        return WorldModelOutput(loss, recon_loss, kld, rssm_loss, one_step, zero, reward_loss, cont_loss)
