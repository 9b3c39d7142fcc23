"""The `wm-eval` report: what `report.json` holds (one dataclass per part, a one-line doc under every field) and
the few summary lines printed to the terminal. The metrics are computed in eval_metrics.py; the report is
written by evaluate.py."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

HEADLINE_STEPS = (1, 5, 10, 30)  # horizon steps quoted in summaries and the ablation table


@dataclass
class OpenLoopMetrics:
    """Every list has one entry per horizon step, step 1 first; each entry is a mean over the sequences."""

    pixel_mse: list[float]
    """squared error of the decoded imagined prior mean against the real frame, mean over pixels"""
    latent_kl: list[float]
    """KL(q(z|x) || imagined prior), summed over latent dimensions: the rssm_loss, open loop"""
    latent_mse: list[float]
    """squared distance of the imagined prior mean to the posterior mean, mean over latent dimensions"""
    copy_last_mse: list[float]
    """pixel MSE of repeating the last context frame: a predictor that knows no dynamics"""
    recon_mse: float
    """pixel MSE of decoding the posterior means of the predicted frames: the floor the decoder sets"""
    growth: float
    """pixel_mse at the last step / at step 1: how much the error grows over the horizon"""
    vs_copy_last: float
    """pixel_mse / copy_last_mse at the last step: below 1, the rollout still beats repeating a frame"""
    reward_r2: list[float] | None = None
    """with reward heads: R² of the imagined reward against the head's target (the mean of the next
    train.reward_window rewards), 1 - squared error / variance of the split's targets; None without heads"""


@dataclass
class ActionMetrics:
    """Imagination from the same filtered state with other actions than the true ones."""

    shuffled_pixel_mse: list[float]
    """per horizon step: pixel MSE with the actions of a sequence from another episode"""
    random_pixel_mse: list[float]
    """per horizon step: pixel MSE with actions drawn per step from the split's actions"""
    shuffled_latent_mse: list[float]
    """per horizon step: latent_mse (see OpenLoopMetrics) with shuffled actions"""
    random_latent_mse: list[float]
    """per horizon step: latent_mse with random actions"""
    ratio_shuffled: float
    """pixel MSE with the true actions / with shuffled actions, summed over the horizon: well below 1 means the
    model uses the actions; exactly 1 means it ignores them"""
    ratio_random: float
    """as ratio_shuffled, against random actions"""
    latent_ratio_shuffled: float
    """as ratio_shuffled, on latent_mse"""
    latent_ratio_random: float
    """as ratio_random, on latent_mse"""
    spread: list[float]
    """per horizon step: std of the imagined latent means across `action_samples` action sequences (the true one
    and shuffled ones) from the same state, mean over latent dimensions and sequences, divided by latent_scale;
    0 means the actions change nothing"""
    spread_mean: float
    """spread averaged over the horizon"""
    latent_scale: float
    """std of the posterior means over the evaluated frames, mean over latent dimensions"""


@dataclass
class LatentMetrics:
    """Posterior collapse (wm_train.collapse): how much the posterior means vary over the split's frames."""

    latent_std: float
    """std of the posterior means across the frames, mean over latent dimensions (the prior's std is 1)"""
    posterior_std: float
    """root mean square of the posterior's std over the frames, mean over latent dimensions"""
    active_dims: int
    """latent dimensions whose posterior means vary across frames with a std above 0.1 x their posterior std
    (Burda et al. 2016's active units, against the posterior's std)"""
    latent_dim: int
    """S: latent dimensions in all"""
    collapsed: bool
    """no active dimension: the latents carry almost nothing about the frames (wm_train.collapse)"""
    collapse_reason: str
    """why it counts as collapsed; empty when it does not"""


@dataclass
class ProbeResult:
    """A ridge probe on detached [h, z] predicting a per-step array of the episode files (wm_train.probe)."""

    key: str
    """the per-step array the probe predicts"""
    r2: float
    """R² on the validation episodes, averaged over the array's columns: 1 is perfect, 0 no better than the
    validation mean, below 0 worse"""
    train_r2: float
    """R² on the training episodes it was fitted on"""
    z_r2: float
    """validation R² of the same probe on z alone: what the frame's latent carries without the RSSM's memory of
    past actions"""
    train_frames: int
    val_frames: int
    features: int
    """D + S"""


@dataclass
class SplitMetrics:
    episodes: int
    """episodes of the split long enough for context + horizon"""
    sequences: int
    """non-overlapping sequences of context + horizon frames evaluated (at most max_sequences)"""
    losses: dict[str, float]
    """teacher-forced WorldModelOutput fields (the training losses) over the split's fixed windows"""
    open_loop: OpenLoopMetrics
    actions: ActionMetrics
    latents: LatentMetrics
    value_r2: float | None = None
    """with model.actor_critic: R² of the critic's value of every state of the split's episodes against the
    discounted return-to-go that followed (train.discount; value_metrics.value_r2); None without a critic"""


@dataclass
class Examples:
    """A few sequences of one split for the PNG strips (float32 frames in [0, 1])."""

    real: np.ndarray
    """[n, L, 3, H, W]: context and horizon frames"""
    predicted: np.ndarray
    """[n, F, 3, H, W]: decoded imagined prior means with the true actions"""


@dataclass
class EvalReport:
    checkpoint: str
    data: str
    split: str
    """the split the summary, the strips and the plot's headline curves show"""
    context: int
    horizon: int
    max_sequences: int
    action_samples: int
    seed: int
    splits: dict[str, SplitMetrics]
    gap: dict[str, float]
    """val - train of the teacher-forced losses, and each relative to train (`*_relative`)"""
    probes: list[ProbeResult] = field(default_factory=list)
    """one per --probe KEY: fitted on the train split, scored on val"""
    examples: Examples | None = field(default=None, repr=False)
    files: dict[str, object] = field(default_factory=dict)
    """report files relative to the report folder"""

    def to_dict(self) -> dict:
        raw = dataclasses.asdict(dataclasses.replace(self, examples=None))
        raw.pop("examples")
        return raw

    def pixel_mse_at(self, split: str, step: int) -> float | None:
        """Open-loop pixel MSE at horizon step `step` (1-based); None beyond the horizon."""
        errors = self.splits[split].open_loop.pixel_mse
        return errors[step - 1] if 1 <= step <= len(errors) else None


def summary_lines(report: EvalReport) -> list[str]:
    """A few lines for the terminal: the headline split's numbers and the train/validation gap."""
    metrics = report.splits[report.split]
    steps = [s for s in HEADLINE_STEPS if s < report.horizon] + [report.horizon]
    ol, act = metrics.open_loop, metrics.actions
    lines = [
        f"{report.split}: {metrics.sequences} sequences from {metrics.episodes} episodes, context {report.context}, "
        f"horizon {report.horizon}",
        "open-loop pixel MSE: "
        + ", ".join(f"step {s} {report.pixel_mse_at(report.split, s):.4f}" for s in steps)
        + f" (repeat-last-frame at {report.horizon}: {ol.copy_last_mse[-1]:.4f}; reconstruction floor "
        f"{ol.recon_mse:.4f})",
        f"open-loop latent KL: step 1 {ol.latent_kl[0]:.2f}, step {report.horizon} {ol.latent_kl[-1]:.2f}",
        f"actions: error ratio true/shuffled {act.ratio_shuffled:.3f} (latent {act.latent_ratio_shuffled:.3f}), "
        f"true/random {act.ratio_random:.3f}; spread across action sequences {act.spread_mean:.3f} of the latent "
        "scale (ratio 1 and spread 0: actions ignored)",
    ]
    if ol.reward_r2 is not None:
        r2 = ", ".join(f"step {s} {ol.reward_r2[s - 1]:.2f}" for s in steps)
        lines.append(f"reward head, R² of the imagined reward: {r2} (what a planner scores candidates on)")
    if metrics.value_r2 is not None:
        lines.append(f"value (critic), R² against the discounted return-to-go: {metrics.value_r2:.2f}")
    lat = metrics.latents
    lines.append(
        f"latents: {lat.active_dims}/{lat.latent_dim} dimensions vary across frames (std of the posterior means "
        f"{lat.latent_std:.3f}, posterior std {lat.posterior_std:.3f}), kld {metrics.losses['kld']:.2f}"
        + (f"; POSTERIOR COLLAPSE: {lat.collapse_reason}" if lat.collapsed else "")
    )
    for probe in report.probes:
        lines.append(
            f"probe {probe.key}: R² val {probe.r2:.3f}, train {probe.train_r2:.3f} (ridge on [h, z], "
            f"{probe.train_frames} training frames); on z alone val {probe.z_r2:.3f}"
        )
    train, val = report.splits["train"].losses, report.splits["val"].losses
    lines.append(
        f"rssm_loss train {train['rssm_loss']:.3f}, val {val['rssm_loss']:.3f}: gap "
        f"{report.gap['rssm_loss']:+.3f} ({100 * report.gap['rssm_loss_relative']:+.1f}%); open-loop pixel "
        f"MSE over the horizon train {np.mean(report.splits['train'].open_loop.pixel_mse):.4f}, "
        f"val {np.mean(report.splits['val'].open_loop.pixel_mse):.4f}"
    )
    return lines
