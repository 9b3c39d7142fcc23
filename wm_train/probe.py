"""What the latents carry: a linear probe fitted on detached [h, z] features of the training episodes predicts a
per-step array of the episode files (a reward, an object's position), scored by R² on the validation episodes.

Dimensions: T time, S latent, D deter, K target width, F = D + S features.

Features: the posterior mean z_t of every frame, and the RSSM state h_t teacher-forced through the episode with
posterior means and actions, as in training (h_0 = 0; h_t has seen z_0..z_t-1 and a_0..a_t-1). The probe is
ridge regression on standardised features: closed form, deterministic, nothing to tune but one documented
penalty, and what a linear reward head on these features would reach. A linear probe measures what the latents
carry in a readily usable form (Alain & Bengio 2016); information encoded nonlinearly scores lower.
"""

from __future__ import annotations

import numpy as np
import torch

from wm_core.actions import ActionCodec
from wm_core.model import WorldModel

from .data import EpisodeSet, to_batch
from .eval_report import ProbeResult

RIDGE = 1.0  # L2 penalty on standardised features, per training frame summed: small against thousands of frames


@torch.no_grad()
def probe_features(
    model: WorldModel, episodes: EpisodeSet, codec: ActionCodec, device: torch.device | str = "cpu"
) -> np.ndarray:
    """[h_t, z_t] of every frame of every episode, episodes concatenated: float64 [sum T, F]."""
    model.eval()
    features = []
    for obs, actions in zip(episodes.obs, episodes.actions):
        batch_obs, batch_actions = to_batch([(obs, actions)], codec, device)  # [1, T, C, H, W], [1, T, A]
        z, _ = model.encode(batch_obs)  # [1, T, S]
        h = model.rssm.initial_state(1, device)
        hs = [h]
        for t in range(z.shape[1] - 1):
            h, _, _ = model.rssm.step(h, z[:, t], batch_actions[:, t])
            hs.append(h)
        features.append(torch.cat([torch.cat(hs), z[0]], dim=-1).double().cpu().numpy())  # [T, D + S]
    return np.concatenate(features)


def fit_ridge(x: np.ndarray, y: np.ndarray, ridge: float = RIDGE):
    """Ridge regression on standardised features -> predict(x) for new features."""
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0  # a constant feature carries nothing; keep it from dividing by zero
    xs = (x - mean) / scale
    y_mean = y.mean(0)
    weights = np.linalg.solve(xs.T @ xs + ridge * np.eye(xs.shape[1]), xs.T @ (y - y_mean))
    return lambda new: ((new - mean) / scale) @ weights + y_mean


def r2_score(y: np.ndarray, predicted: np.ndarray) -> float:
    """1 - SSE / SST per column of y [N, K], averaged over the columns that vary."""
    total = ((y - y.mean(0)) ** 2).sum(0)
    residual = ((y - predicted) ** 2).sum(0)
    varies = total > 0
    if not varies.any():
        raise ValueError("the probe target is constant on this split: R² is undefined")
    return float(np.mean(1.0 - residual[varies] / total[varies]))


def fit_probe(
    model: WorldModel,
    codec: ActionCodec,
    train: EpisodeSet,
    val: EpisodeSet,
    key: str,
    device: torch.device | str = "cpu",
    ridge: float = RIDGE,
) -> ProbeResult:
    """Fit the probe for per-step array `key` (loaded by load_splits(per_step=(key,))) on `train`, score on
    `val`."""
    for name, split in (("train", train), ("val", val)):
        if key not in split.per_step:
            raise ValueError(f"{name} split has no per-step array {key!r}; load it with load_splits(per_step=...)")
    x_train, x_val = probe_features(model, train, codec, device), probe_features(model, val, codec, device)
    y_train, y_val = np.concatenate(train.per_step[key]), np.concatenate(val.per_step[key])
    predict = fit_ridge(x_train, y_train, ridge)
    z = slice(model.cfg.deter_dim, None)  # the features are [h, z]
    predict_from_z = fit_ridge(x_train[:, z], y_train, ridge)
    return ProbeResult(
        key=key,
        r2=r2_score(y_val, predict(x_val)),
        train_r2=r2_score(y_train, predict(x_train)),
        z_r2=r2_score(y_val, predict_from_z(x_val[:, z])),
        train_frames=len(x_train),
        val_frames=len(x_val),
        features=x_train.shape[1],
    )
