"""The metrics of `wm-eval`: open-loop prediction, action identifiability, and the teacher-forced training losses
(which the trainer's validation computes with the same function).

Dimensions: N sequences, B batch, L = context + horizon frames, F horizon (future) steps, C=3 colour channels,
H=W frame size, S latent, D deter, A encoded action, K action sequences compared from one state.

Open loop: the RSSM is teacher-forced through the first `context` frames with the encoder's posterior means
(as in training: h_0 = 0 pairs with z_0), then imagines `horizon` steps from the prior with the true actions.
Horizon step k (1-based) predicts frame `context - 1 + k`.

Action identifiability: from that same state the RSSM also imagines with the actions of a sequence from another
episode ("shuffled") and with actions drawn per step from all of the split's actions ("random": the actions'
marginal without their order). A model that ignores its actions predicts the same frames whatever the actions:
its error ratio true / shuffled is exactly 1 and its spread across action sequences is exactly 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from tqdm import tqdm

from wm_core.actions import ActionCodec
from wm_core.config import TrainConfig
from wm_core.losses import gaussian_kl
from wm_core.model import WorldModel

from .data import EpisodeSet, head_targets, to_batch
from .eval_report import ActionMetrics, Examples, OpenLoopMetrics

Item = TypeVar("Item")


def evenly_spaced(items: Sequence[Item], count: int) -> list[Item]:
    """At most `count` of `items`, evenly spaced from the first to the last."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


@dataclass
class Sequences:
    """Non-overlapping windows of L frames from the episodes of one split (raw data, as on disk)."""

    obs: list[np.ndarray]
    """N arrays uint8 [L, H, W, 3]"""
    actions: list[np.ndarray]
    """N arrays of raw actions [L, A] or [L]"""
    episode: np.ndarray
    """[N] index of the episode each window comes from"""
    action_pool: np.ndarray
    """every raw action of the split, for the random-action comparison"""
    episodes: int
    """episodes with at least L frames"""
    rewards: list[np.ndarray] | None = None
    """with model.heads: N arrays float32 [L], the reward head's targets (EpisodeSet.rewards)"""


def sequences_of(episodes: EpisodeSet, length: int, max_sequences: int, split: str) -> Sequences:
    """Windows of `length` frames, non-overlapping, evenly subsampled to at most `max_sequences`."""
    spans = [(e, start) for e, obs in enumerate(episodes.obs) for start in range(0, len(obs) - length + 1, length)]
    if not spans:
        longest = max(len(obs) for obs in episodes.obs)
        raise ValueError(
            f"{split} split: no episode has context + horizon = {length} frames (the longest has "
            f"{longest}); lower --context or --horizon, or record longer episodes"
        )
    if len(spans) < 2:
        raise ValueError(
            f"{split} split: the action comparison needs at least 2 sequences of {length} frames, "
            f"found {len(spans)}; record more or longer episodes, or lower --context or --horizon"
        )
    spans = evenly_spaced(spans, max_sequences)
    return Sequences(
        obs=[episodes.obs[e][s : s + length] for e, s in spans],
        actions=[episodes.actions[e][s : s + length] for e, s in spans],
        episode=np.array([e for e, _ in spans]),
        action_pool=np.concatenate(episodes.actions),
        episodes=sum(len(obs) >= length for obs in episodes.obs),
        rewards=None if episodes.rewards is None else [episodes.rewards[e][s : s + length] for e, s in spans],
    )


def donor_indices(episode: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """[N, count] indices of other sequences whose actions replace each sequence's own: from another episode
    where the split has several, else another window of the same episode."""
    n = len(episode)
    assert n >= 2, "sequences_of guarantees two sequences"
    donors = np.empty((n, count), dtype=np.int64)
    for i in range(n):
        candidates = np.flatnonzero(episode != episode[i])
        if len(candidates) == 0:
            candidates = np.delete(np.arange(n), i)
        donors[i] = rng.choice(candidates, size=count, replace=len(candidates) < count)
    return donors


def filter_context(model: WorldModel, post_mean: torch.Tensor, actions: torch.Tensor, context: int):
    """Teacher-force the RSSM through the context: posterior means [B, >=context, S] and encoded actions
    [B, >=context, A] -> the state (h [B, D], z [B, S]) at frame context - 1."""
    h = model.rssm.initial_state(post_mean.shape[0], post_mean.device)
    for t in range(context - 1):
        h, _, _ = model.rssm.step(h, post_mean[:, t], actions[:, t])
    return h, post_mean[:, context - 1]


def error_ratio(errors: list[float] | np.ndarray, reference: list[float] | np.ndarray) -> float:
    """sum(errors) / sum(reference): < 1 when `errors` (true actions) are smaller than `reference`."""
    total = float(np.sum(reference))
    return float(np.sum(errors)) / total if total > 0 else 1.0


@torch.no_grad()
def open_loop(
    model: WorldModel,
    codec: ActionCodec,
    sequences: Sequences,
    context: int,
    horizon: int,
    action_samples: int = 8,
    batch_size: int = 16,
    seed: int = 0,
    examples: int = 0,
    device: torch.device | str = "cpu",
    bar: tqdm | None = None,
):
    """Open-loop and action-identifiability metrics of one split -> (OpenLoopMetrics, ActionMetrics, Examples)."""
    model.eval()
    n = len(sequences.obs)
    rng = np.random.default_rng(seed)
    if action_samples < 2:
        raise ValueError(f"action_samples must be >= 2 (the true actions and at least one other), got {action_samples}")
    donors = donor_indices(sequences.episode, action_samples - 1, rng)  # column 0: "shuffled"
    random_actions = sequences.action_pool[rng.integers(len(sequences.action_pool), size=(n, horizon))]
    example_ids = set(np.linspace(0, n - 1, min(examples, n)).round().astype(int).tolist()) if examples else set()
    sums = {
        name: torch.zeros(horizon, dtype=torch.float64)
        for name in (
            "pixel_mse",
            "latent_kl",
            "latent_mse",
            "copy_last_mse",
            "shuffled_pixel_mse",
            "random_pixel_mse",
            "shuffled_latent_mse",
            "random_latent_mse",
            "spread",
            "reward_se",
        )
    }
    reward_targets = []  # with heads: every target the imagined rewards are compared with
    recon_sum = torch.zeros((), dtype=torch.float64)
    moments = torch.zeros(2, model.cfg.latent_dim, dtype=torch.float64)  # sum and sum of squares per dimension
    frames_seen = 0
    real_examples, predicted_examples = [], []
    future = slice(context, context + horizon)  # the frames the horizon predicts

    def imagined_actions(raw: list[np.ndarray]) -> torch.Tensor:
        return codec.encode(torch.from_numpy(np.stack(raw)).to(device))  # [B, F, A]

    for first in range(0, n, batch_size):
        ids = list(range(first, min(first + batch_size, n)))
        windows = [(sequences.obs[i], sequences.actions[i]) for i in ids]
        obs, actions = to_batch(windows, codec, device)  # [B, L, C, H, W], [B, L, A]
        post_mean, post_std = model.encode(obs)
        h, z = filter_context(model, post_mean, actions, context)
        target, target_mean, target_std = obs[:, future], post_mean[:, future], post_std[:, future]

        def rollout(encoded: torch.Tensor, h=h, z=z):
            return model.rssm.imagine(h, z, encoded)  # prior means, stds [B, F, S], h [B, F, D]

        def per_step(values: torch.Tensor) -> torch.Tensor:  # [B, F, ...] -> mean per step, summed over B: [F]
            return values.flatten(2).mean(-1).sum(0).double().cpu()

        true_mean, true_std, true_h = rollout(actions[:, context - 1 : context - 1 + horizon])
        predicted = model.decode(true_mean)  # [B, F, S] -> [B, F, 3, H, W]
        sums["pixel_mse"] += per_step((predicted - target).pow(2))
        sums["latent_kl"] += gaussian_kl(target_mean, target_std, true_mean, true_std).sum(0).double().cpu()
        sums["latent_mse"] += per_step((true_mean - target_mean).pow(2))
        sums["copy_last_mse"] += per_step((obs[:, context - 1 : context] - target).pow(2))
        recon_sum += (model.decode(target_mean) - target).pow(2).flatten(2).mean(-1).sum().double().cpu() / horizon

        shuffled = [
            rollout(
                imagined_actions([sequences.actions[d][context - 1 : context - 1 + horizon] for d in donors[ids, k]])
            )[0]
            for k in range(donors.shape[1])
        ]
        random_mean = rollout(imagined_actions(list(random_actions[ids])))[0]
        for name, other_mean in (("shuffled", shuffled[0]), ("random", random_mean)):
            sums[f"{name}_pixel_mse"] += per_step((model.decode(other_mean) - target).pow(2))
            sums[f"{name}_latent_mse"] += per_step((other_mean - target_mean).pow(2))
        # The true actions and action_samples - 1 shuffled ones from the same state: [K, B, F, S].
        alternatives = torch.stack([true_mean, *shuffled])
        sums["spread"] += alternatives.std(0, unbiased=False).mean(-1).sum(0).double().cpu()

        if model.heads is not None and sequences.rewards is not None:
            # the state after action t predicts reward target t (WorldModel.head_losses)
            rewards = np.stack([sequences.rewards[i][context - 1 : context - 1 + horizon] for i in ids])
            target_reward = torch.from_numpy(rewards).to(device)  # [B, F]
            sums["reward_se"] += (
                (model.heads.predict(true_h, true_mean)[0] - target_reward).pow(2).sum(0).double().cpu()
            )
            reward_targets.append(target_reward.flatten().double().cpu())

        flat = post_mean.flatten(0, 1).double().cpu()  # [B, L, S] -> [B*L, S]
        moments += torch.stack([flat.sum(0), flat.pow(2).sum(0)])
        frames_seen += flat.shape[0]
        for row, i in enumerate(ids):
            if i in example_ids:
                real_examples.append(obs[row].cpu().numpy())
                predicted_examples.append(predicted[row].cpu().numpy())
        if bar is not None:
            bar.update(len(ids))

    mean = {name: (total / n).tolist() for name, total in sums.items()}
    variance = (moments[1] / frames_seen - (moments[0] / frames_seen).pow(2)).clamp(min=0)
    latent_scale = float(variance.sqrt().mean())
    spread = [s / latent_scale if latent_scale > 0 else 0.0 for s in mean["spread"]]
    reward_variance = float(torch.cat(reward_targets).var(unbiased=False)) if reward_targets else 0.0
    metrics = OpenLoopMetrics(
        pixel_mse=mean["pixel_mse"],
        latent_kl=mean["latent_kl"],
        latent_mse=mean["latent_mse"],
        copy_last_mse=mean["copy_last_mse"],
        recon_mse=float(recon_sum) / n,
        growth=error_ratio(mean["pixel_mse"][-1:], mean["pixel_mse"][:1]),
        vs_copy_last=error_ratio(mean["pixel_mse"][-1:], mean["copy_last_mse"][-1:]),
        reward_r2=[1 - se / reward_variance for se in mean["reward_se"]] if reward_variance > 0 else None,
    )
    action_metrics = ActionMetrics(
        shuffled_pixel_mse=mean["shuffled_pixel_mse"],
        random_pixel_mse=mean["random_pixel_mse"],
        shuffled_latent_mse=mean["shuffled_latent_mse"],
        random_latent_mse=mean["random_latent_mse"],
        ratio_shuffled=error_ratio(mean["pixel_mse"], mean["shuffled_pixel_mse"]),
        ratio_random=error_ratio(mean["pixel_mse"], mean["random_pixel_mse"]),
        latent_ratio_shuffled=error_ratio(mean["latent_mse"], mean["shuffled_latent_mse"]),
        latent_ratio_random=error_ratio(mean["latent_mse"], mean["random_latent_mse"]),
        spread=spread,
        spread_mean=float(np.mean(spread)),
        latent_scale=latent_scale,
    )
    shown = Examples(np.stack(real_examples), np.stack(predicted_examples)) if real_examples else None
    return metrics, action_metrics, shown


@torch.no_grad()
def teacher_forced_losses(
    model: WorldModel,
    windows: Sequence[tuple[np.ndarray, ...]],
    codec: ActionCodec,
    train: TrainConfig,
    device: torch.device | str = "cpu",
    seed: int | None = None,
) -> dict[str, float]:
    """The training losses (every WorldModelOutput field) over raw (obs, actions) `windows`, in batches of
    train.batch_size, averaged over the windows: the trainer's validation and wm-eval's train/val losses.

    The reparameterisation noise comes from torch's RNG: with `seed`, from a forked RNG seeded with it (the
    caller's RNG untouched); without, from the global RNG, which the trainer's validation advances as part of a
    run's reproducible RNG stream."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return teacher_forced_losses(model, windows, codec, train, device)
    sums = teacher_forced_sums(model, windows, codec, train, device)
    return {name: total / len(windows) for name, total in sums.items()}


@torch.no_grad()
def teacher_forced_sums(
    model: WorldModel,
    windows: Sequence[tuple[np.ndarray, ...]],
    codec: ActionCodec,
    train: TrainConfig,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Every WorldModelOutput field under train.loss (the full beta: no warm-up) summed over `windows` (each
    batch's mean times its size): what ranks of a distributed run add up before dividing by the number of windows
    of all ranks."""
    model.eval()
    sums: dict[str, float] = {}
    for first in range(0, len(windows), train.batch_size):
        chunk = windows[first : first + train.batch_size]
        obs, actions = to_batch(chunk, codec, device)
        rewards, continues = head_targets(chunk, device) or (None, None)
        out = model(obs, actions, train.loss, rewards=rewards, continues=continues)
        for name, value in out.scalars().items():
            sums[name] = sums.get(name, 0.0) + value * len(chunk)
    return sums


OPEN_LOOP_HORIZONS = (1, 5, 10)
"""the horizons of the per-epoch open-loop MSE (those shorter than a window)"""
OPEN_LOOP_WINDOWS = 8
"""validation windows it is measured on: a fixed handful, so that it costs a few batched rollouts an epoch"""


@torch.no_grad()
def open_loop_mse(
    model: WorldModel, windows: Sequence[tuple[np.ndarray, ...]], codec: ActionCodec, device="cpu"
) -> dict[str, float]:
    """Pixel MSE of the decoded prior mean k steps open loop from each window's first frame (true actions), at
    the OPEN_LOOP_HORIZONS that fit: "open_loop_mse@k" -> value, over the first OPEN_LOOP_WINDOWS windows. What
    the one-step loss does not show: whether rollouts improve."""
    model.eval()
    obs, actions = to_batch(list(windows[:OPEN_LOOP_WINDOWS]), codec, device)  # [B, T, C, H, W], [B, T, A]
    horizon = obs.shape[1] - 1
    post_mean, _ = model.encode(obs[:, :1])  # [B, 1, S]
    h = model.rssm.initial_state(obs.shape[0], obs.device)
    prior_mean, _, _ = model.rssm.imagine(h, post_mean[:, 0], actions[:, :horizon])  # [B, T-1, S]
    error = (model.decode(prior_mean) - obs[:, 1:]).pow(2).flatten(2).mean(-1).mean(0)  # [T-1]
    return {f"open_loop_mse@{k}": float(error[k - 1]) for k in OPEN_LOOP_HORIZONS if k <= horizon}


def loss_gap(train: dict[str, float], val: dict[str, float]) -> dict[str, float]:
    """val - train of every loss, and the same relative to train."""
    gap = {}
    for name in train:
        gap[name] = val[name] - train[name]
        gap[f"{name}_relative"] = gap[name] / abs(train[name]) if train[name] else 0.0
    return gap
