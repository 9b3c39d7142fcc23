"""Several world models planned on as one: an ensemble of Rollouts (PETS, Chua et al. 2018, averages the
predictions of models trained alike). Models of the same configuration and data but different training seeds
can differ in how far their imagined rewards can be trusted (docs/control.md); where one model's error favours
a wrong candidate, the others' seldom agree, so the mean reward ranks candidates more reliably than any one of
them. Where the members disagree, the candidate likely leads to states that their data did not pin down (off the
road, an action never recorded); `disagreement=λ` scores it λ times the members' std below their mean (the
uncertainty penalty of MOPO, Yu et al. 2020), which with two members and λ = 1 is the lesser of their rewards.

    ensemble = Ensemble.load(["runs/s0/artifacts", "runs/s1/artifacts"], "onnxruntime", disagreement=1.0)
    planner = Planner(ensemble)              # the same Planner and control loop as for one Rollout

An Ensemble offers the part of the Rollout API that the planner and the control loop use. Its state is every
member's state side by side: h [B, M*D] and z [B, M*S], member m's at columns m*D..(m+1)*D (and m*S..); each
member observes the same frames and imagines the same actions in turn (M times one member's time), and
`imagine` returns the members' mean reward and, for models with a critic, mean value (each less the disagreement
penalty) and mean continuation. `decode` shows the first member's latent; `policy` and `policy_plan` are the first
member's actor's.

Dimensions: M members, B batch, H horizon, D GRU state, S latent (per member).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .rollout import Rollout
from .state import LatentState, Trajectory


class Ensemble:
    """Rollouts of models that take the same actions and frames; see the module docstring."""

    def __init__(self, members: Sequence[Rollout], disagreement: float = 0.0):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 models, got {len(members)}")
        if not (math.isfinite(disagreement) and disagreement >= 0):
            raise ValueError(f"ensemble disagreement must be a finite number >= 0, got {disagreement}")
        first = members[0]
        mine = _contract(first)
        for i, member in enumerate(members[1:], 1):
            theirs = _contract(member)
            if theirs != mine:
                raise ValueError(f"ensemble member {i} does not fit member 0: {theirs} against {mine}")
            if member.device != first.device:
                raise ValueError(f"ensemble member {i} runs on {member.device}, member 0 on {first.device}")
        self.members = list(members)
        self.disagreement = disagreement
        self.codec = first.codec
        self.action_repeat = first.action_repeat
        self.device = first.device
        self.max_batch = min(member.max_batch for member in members)
        self.has_heads = all(member.has_heads for member in members)
        self.has_value = all(member.has_value for member in members)
        self.has_policy = first.has_policy
        self.has_decoder = first.has_decoder
        M = len(members)
        self.dims = dataclasses.replace(first.dims, deter=M * first.dims.deter, latent=M * first.dims.latent)
        self._deter, self._latent = first.dims.deter, first.dims.latent

    @classmethod
    def load(
        cls, paths: Sequence[str | Path], backend: str = "auto", device: str | torch.device = "auto", *,
        disagreement: float = 0.0, **options,
    ) -> Ensemble:  # fmt: skip
        """`Rollout.load` of each path, with its keyword options, except that onnxruntime's idle threads do not
        spin: the members take turns on the same cores, and each one's spinning threads would slow the next one
        (measurements: docs/deployment.md)."""
        return cls([Rollout.load(p, backend, device, thread_spinning=False, **options) for p in paths], disagreement)

    @property
    def backend_name(self) -> str:
        return f"{len(self.members)} x {self.members[0].backend_name}"

    @property
    def backend_detail(self) -> str:
        return self.members[0].backend_detail

    @property
    def objective(self) -> str:
        """How a candidate's reward comes from the members' (for reports)."""
        penalty = f" - {self.disagreement:g} x std" if self.disagreement else ""
        return f"reward: mean{penalty} of {len(self.members)} models"

    def __repr__(self) -> str:
        return f"Ensemble({len(self.members)} x {self.members[0]!r}, disagreement={self.disagreement:g})"

    def initial(self, batch: int, kind: str = "numpy") -> LatentState:
        return _join([member.initial(batch, kind) for member in self.members])

    def observe(self, state: LatentState, obs, prev_action=None) -> LatentState:
        parts = self._split(state)
        return _join([m.observe(part, obs, prev_action) for m, part in zip(self.members, parts)])

    def imagine(self, state: LatentState, actions, *, trusted: bool = False) -> Trajectory:
        """The members' trajectories side by side (z, h, prior mean and std), with their mean reward and value
        (each less `disagreement` times their std) and mean continuation [B, H]. `trusted`: as Rollout.imagine's
        (the result is built from the members' outputs, so it is never a view)."""
        parts = self._split(state)
        runs = [member.imagine(part, actions, trusted=trusted) for member, part in zip(self.members, parts)]
        heads = self.has_heads
        return Trajectory(
            z=_cat([run.z for run in runs]),
            h=_cat([run.h for run in runs]),
            prior_mean=_cat([run.prior_mean for run in runs]),
            prior_std=_cat([run.prior_std for run in runs]),
            reward=self._pessimistic([run.reward for run in runs]) if heads else None,
            cont=sum(run.cont for run in runs) / len(runs) if heads else None,
            value=self._pessimistic([run.value for run in runs]) if self.has_value else None,
        )

    def policy(self, state: LatentState):
        """The first member's actor's action in its part of `state`."""
        return self.members[0].policy(self._split(state)[0])

    def policy_plan(self, state: LatentState, horizon: int, *, trusted: bool = False):
        """The first member's actor's open-loop plan from its part of `state`."""
        return self.members[0].policy_plan(self._split(state)[0], horizon, trusted=trusted)

    def encode(self, obs):
        """-> every member's posterior mean and std side by side, [B, M*S] each."""
        means, stds = zip(*(member.encode(obs) for member in self.members))
        return _cat(list(means)), _cat(list(stds))

    def decode(self, z):
        """z [..., M*S] -> the first member's frames from its part of z."""
        return self.members[0].decode(z[..., : self._latent])

    def warmup(self, batch: int, horizon: int, *, frames: bool = True) -> None:
        for member in self.members:
            member.warmup(batch, horizon, frames=frames)

    def _pessimistic(self, predictions: list):
        """The members' mean prediction less `disagreement` times their (population) std."""
        mean = sum(predictions) / len(predictions)
        if not self.disagreement:
            return mean
        variance = sum((x - mean) ** 2 for x in predictions) / len(predictions)
        return mean - self.disagreement * variance**0.5

    def _split(self, state: LatentState) -> list[LatentState]:
        D, S, M = self._deter, self._latent, len(self.members)
        if state.h.shape[-1] != M * D or state.z.shape[-1] != M * S:
            raise ValueError(
                f"ensemble state must have h [B, {M * D}] and z [B, {M * S}], got {list(state.h.shape)} and "
                f"{list(state.z.shape)}"
            )
        return [
            LatentState(state.h[:, m * D : (m + 1) * D], state.z[:, m * S : (m + 1) * S], state.is_initial)
            for m in range(M)
        ]


def _contract(rollout: Rollout) -> tuple:
    """What members must share: the actions they take, the frames they see and how long an action is held."""
    codec = rollout.codec
    return (codec.mode, codec.dim, tuple(codec.low), tuple(codec.high), rollout.dims.frame, rollout.action_repeat)


def _cat(parts: list):
    return torch.cat(parts, -1) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts, -1)


def _join(states: list[LatentState]) -> LatentState:
    return LatentState(_cat([s.h for s in states]), _cat([s.z for s in states]), states[0].is_initial)
