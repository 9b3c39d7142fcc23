"""Loss terms of the world model, the settings that shape them and the dataclass they come back in."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

import torch


@dataclass(frozen=True)
class LossSettings:
    """The options that shape the training loss, passed whole to the model, the trainer and the evaluation.

    A config holds them as flat `train.*` keys (TrainConfig.loss gathers them here). A run resumed with other
    values would change its objective halfway, so `wm-train --resume` refuses any difference. docs/training.md
    describes the loss terms, docs/evaluation.md ("Small objects") what the anti-collapse options (free_nats,
    kl_warmup_steps, recon_change_weight) do to small objects, docs/isolation_study.md what overshooting does."""

    beta: float = 1.0
    """weight of the VAE's KL to N(0, I) in the total loss; unitless, default 1"""
    kl_warmup_steps: int = 0
    """optimiser steps over which the KL's weight ramps linearly from 0 to `beta`, so that the decoder learns to
    use the latents before the KL pulls them to the prior (Bowman et al. 2016); default 0: `beta` from the start"""
    free_nats: float = 0.5
    """KL floor per latent dimension, in nats: a dimension below it gets no KL gradient, against posterior
    collapse (free bits, Kingma et al. 2016); default 0.5, 0: the plain KL"""
    recon_change_weight: float = 20.0
    """extra weight of the pixels that change: each pixel's squared error counts 1 + this x its distance in [0, 1]
    from the window's median frame (change_weights); unitless, default 20, 0: every pixel alike"""
    rssm_scale: float = 1.0
    """weight of the RSSM loss (its one-step and overshooting KLs) in the total loss; unitless, default 1"""
    overshooting: int = 1
    """K, in steps: the RSSM also learns its open-loop priors 2..K steps ahead, on detached posteriors (latent
    overshooting, Hafner et al. 2019, PlaNet section 4); below data.seq_len; default 1: one step only"""
    reward_window: int = 1
    """with model.heads, in steps: the reward head's target at step t is the mean reward of steps t..t+n-1 (a
    rate of progress is predictable from a frame where a per-step reward event is not); default 1"""
    head_overshooting: int = 1
    """with model.heads, in steps: the heads also learn on the states 2..K steps open loop (prior means fed back,
    true actions), the states a planner imagines; below data.seq_len; default 1: the one-step states only"""
    discount: float = 0.99
    """with model.actor_critic: discount per decision of the value (critic) and of the actor's returns; unitless,
    default 0.99 (an effective horizon of ~100 decisions). Plan with the same --discount"""
    value_lambda: float = 0.95
    """with model.actor_critic: lambda of the TD(lambda) returns the critic learns (0: one-step TD targets, 1:
    the whole window's or imagined rewards before the bootstrap); default 0.95 (DreamerV3)"""
    value_target_decay: float = 0.98
    """with model.actor_critic: per optimiser step, the target critic keeps this share of itself and takes the rest
    from the critic (a slow exponential average the targets bootstrap from); default 0.98 (DreamerV3's 0.02)"""
    value_repval: float = 1.0
    """with model.actor_critic: weight of the critic's loss on the lambda-returns of the real windows (real rewards
    and continuation flags) beside its loss on the imagined ones (DreamerV3's repval); unitless, default 1"""
    imagine_horizon: int = 15
    """with model.actor_critic, in decisions: how far the actor imagines from each state of a window (the frozen
    RSSM, reward and continuation heads, bootstrapped by the target critic); default 15 (DreamerV3)"""
    actor_entropy: float = 3e-4
    """with model.actor_critic: weight of the actor's entropy bonus, per unit of normalised return; default 3e-4
    (DreamerV3)"""
    actor_bc: float = 1.0
    """with model.actor_critic: weight of the actor's behaviour cloning towards the recorded actions (squared error
    of the encoded action, or cross-entropy for discrete ones), against exploiting actions the model never saw
    (TD3+BC, MBOP); unitless, default 1; 0: pure imagination"""

    def kl_weight(self, step: int) -> float:
        """The KL's weight at optimiser step `step` (0-based): `beta`, ramped in over `kl_warmup_steps`."""
        if self.kl_warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, step / self.kl_warmup_steps)

    def at_step(self, step: int) -> LossSettings:
        """The settings optimiser step `step` trains with: `beta` replaced by the KL's weight at that step."""
        return dataclasses.replace(self, beta=self.kl_weight(step))


def with_overrides(settings: LossSettings, overrides: dict) -> LossSettings:
    """`settings` with the fields named in `overrides` replaced: how a model's forward reads its arguments
    (`model(obs, actions, settings, beta=0.5)`). An unknown name is a TypeError naming it."""
    if not isinstance(settings, LossSettings):  # forward(obs, actions, beta) before LossSettings existed
        raise TypeError(
            f"settings must be a LossSettings, got {type(settings).__name__} {settings!r}; pass single options by "
            "keyword (beta=...)"
        )
    return dataclasses.replace(settings, **overrides) if overrides else settings


LOSS_KEYS = tuple(f.name for f in fields(LossSettings))
"""the `train` keys of the loss options, in LossSettings' order"""

PLAIN_LOSS = LossSettings(free_nats=0.0, kl_warmup_steps=0, recon_change_weight=0.0)
"""The original design's loss: the plain VAE loss (no KL floor, no warm-up, every pixel weighed alike) and a
one-step RSSM loss. What WorldModel.forward computes unless told otherwise, what a checkpoint saved before the
anti-collapse options existed trained with (wm_core.config.saved_config), and the loss the isolation study
compares designs on."""


@dataclass
class ActorCriticOutput:
    """What one step of the critic and the actor (wm_train.actor_critic) logs; every field a scalar tensor."""

    value_loss: torch.Tensor
    """squared error of the critic against the lambda-returns of the imagined rollouts"""
    repval_loss: torch.Tensor
    """squared error of the critic against the lambda-returns of the real windows (real rewards, bootstrapped by the
    target critic at the window's end)"""
    actor_loss: torch.Tensor
    """minus the normalised imagined return, less the entropy bonus, plus actor_bc times bc_loss"""
    bc_loss: torch.Tensor
    """behaviour cloning: squared error (continuous, encoded units) or cross-entropy (discrete) of the actor's
    action against the recorded one"""
    imagined_return: torch.Tensor
    """mean lambda-return of the imagined rollouts, in reward units"""
    return_range: torch.Tensor
    """the running 95% - 5% percentile range of the imagined returns the actor divides by (at least 1)"""

    def scalars(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name).detach()) for f in fields(self)}


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
    has no reason to encode the object. The median over the window is the static background; the
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
