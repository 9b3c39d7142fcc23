"""How well the critic (model.actor_critic) predicts what an episode actually returned: `wm-eval`'s value R².

Dimensions: T steps of an episode, D deter, S latent.

Each episode is filtered whole, as a controller sees it (`Rollout.observe`: h_0 = 0 with the first frame's
posterior mean, then the RSSM teacher-forced on the posterior means and the recorded actions), and the critic's
value of every state is compared with the discounted return-to-go of the rewards that followed,
    G_t = sum_{k>=0} discount^k r_{t+k} prod_{j<k} c_{t+j},
r the reward head's targets (the real rewards at train.reward_window 1) and c the continuation flags. An
episode cut by a time limit or by the recording's end is not bootstrapped: its last ~1/(1 - discount) returns are
short of what the episode would have returned, which lowers the R² a little.
"""

from __future__ import annotations

import numpy as np
import torch

from wm_core.actions import ActionCodec
from wm_core.model import WorldModel

from .data import EpisodeSet, to_batch

FRAME_CHUNK = 256
"""frames encoded per encoder call"""


def returns_to_go(rewards: np.ndarray, continues: np.ndarray, discount: float) -> np.ndarray:
    """rewards, continues [T] -> the discounted return-to-go [T] (float64), no bootstrap after the last step."""
    returns = np.zeros(len(rewards), np.float64)
    last = 0.0
    for t in reversed(range(len(rewards))):
        last = rewards[t] + discount * continues[t] * last
        returns[t] = last
    return returns


@torch.no_grad()
def episode_values(model: WorldModel, codec: ActionCodec, obs: np.ndarray, actions: np.ndarray, device) -> np.ndarray:
    """The critic's value [T] of every state of one episode (obs uint8 [T, H, W, 3], raw actions [T, ...])."""
    assert model.critic is not None
    means = []
    for first in range(0, len(obs), FRAME_CHUNK):
        batch, _ = to_batch([(obs[first : first + FRAME_CHUNK], actions[first : first + FRAME_CHUNK])], codec, device)
        means.append(model.encode(batch)[0])
    z = torch.cat(means, 1)  # [1, T, S]
    encoded = to_batch([(obs[:1], actions)], codec, device)[1]  # [1, T, A]
    h = model.rssm.initial_state(1, device)
    hs = [h]
    for t in range(len(obs) - 1):
        h, _, _ = model.rssm.step(h, z[:, t], encoded[:, t])
        hs.append(h)
    return model.critic.predict(torch.cat(hs), z[0]).double().cpu().numpy()  # [T, D], [T, S] -> [T]


def value_r2(
    model: WorldModel, codec: ActionCodec, episodes: EpisodeSet, discount: float, device="cpu"
) -> float | None:
    """R² of the critic's values against the discounted returns-to-go over every state of `episodes`; None for a
    model without a critic, episodes without rewards, or returns that do not vary."""
    if model.critic is None or episodes.rewards is None or episodes.continues is None:
        return None
    model.eval()
    values, targets = [], []
    for obs, actions, rewards, continues in zip(episodes.obs, episodes.actions, episodes.rewards, episodes.continues):
        values.append(episode_values(model, codec, np.asarray(obs), actions, device))
        targets.append(returns_to_go(rewards, continues, discount))
    value, target = np.concatenate(values), np.concatenate(targets)
    variance = target.var()
    if variance <= 0:
        return None
    return float(1.0 - np.mean((value - target) ** 2) / variance)
