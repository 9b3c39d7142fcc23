"""What the rollout hands back: the latent state of a batch and an imagined trajectory.

Dimensions: B batch, H horizon (imagined steps), D GRU state (deter), S latent (stoch).
Arrays are numpy arrays or torch tensors, the same kind as the input that produced them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LatentState:
    h: Any
    """[B, D] GRU state"""
    z: Any
    """[B, S] latent: the posterior mean after `observe`, a prior sample or mean after `imagine`"""
    is_initial: bool = False
    """True for a state from `Rollout.initial`: the next `observe` keeps h = 0 and ignores the action, as h_0 = 0
    pairs with the first frame in training"""

    @property
    def batch(self) -> int:
        return int(self.h.shape[0])


@dataclass(frozen=True)
class Trajectory:
    z: Any
    """[B, H, S] z_1..z_H: the prior mean, or a draw from the prior with `sample=True`"""
    h: Any
    """[B, H, D] h_1..h_H"""
    prior_mean: Any
    """[B, H, S]"""
    prior_std: Any
    """[B, H, S]"""
    reward: Any = None
    """[B, H] the reward predicted for taking action k, read off the state after step k (None: no heads)"""
    cont: Any = None
    """[B, H] the predicted probability that the episode goes on after action k (None: no heads)"""
    value: Any = None
    """[B, H] the critic's value of the state after action k: the discounted rewards predicted from action k + 1 on
    (None: a model without model.actor_critic)"""

    @property
    def last(self) -> LatentState:
        """The state after the last imagined step, to continue imagining from."""
        return LatentState(self.h[:, -1], self.z[:, -1])
