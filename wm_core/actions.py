"""Action encoding shared by training, export and deployment.

Continuous actions are normalised with statistics of the training split; discrete actions are one-hot
encoded. Continuous codecs also carry the raw action bounds (for a planner to search within). The codec is
stored as plain data in checkpoints and manifests so that every consumer encodes raw actions exactly as training
did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Dimensions whose training std is below this are treated as constant: dividing by ~0 would blow up.
MIN_STD = 1e-6


@dataclass(frozen=True)
class ActionCodec:
    mode: str
    """`continuous` or `discrete`"""
    dim: int
    """A: encoded width (continuous: action width; discrete: number of actions)"""
    mean: tuple[float, ...] = ()
    """continuous only: per-dimension mean of the training actions"""
    std: tuple[float, ...] = ()
    """continuous only: per-dimension std of the training actions (constant dimensions get 1)"""
    low: tuple[float, ...] = ()
    """continuous only: per-dimension lower bound of raw actions (the environment's, else the training
    actions' minimum); empty for discrete codecs and codecs read from files that predate bounds"""
    high: tuple[float, ...] = ()
    """continuous only: per-dimension upper bound of raw actions, as `low`"""

    @classmethod
    def fit(
        cls,
        mode: str,
        dim: int,
        actions: list[np.ndarray],
        bounds: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> ActionCodec:
        """Statistics from the training split's raw actions (one array per episode). `bounds`: (low, high) [A] of
        the environment's action space; where absent or not finite, the training actions' minimum and maximum."""
        if mode == "discrete":
            return cls(mode, dim)
        stacked = np.concatenate(actions).astype(np.float64)  # [N, A]
        std = stacked.std(axis=0)
        std = np.where(std < MIN_STD, 1.0, std)
        low, high = stacked.min(axis=0), stacked.max(axis=0)
        if bounds is not None:
            given_low, given_high = (np.asarray(b, dtype=np.float64) for b in bounds)
            if given_low.shape != (dim,) or given_high.shape != (dim,):
                raise ValueError(f"action bounds must be [{dim}] each, got {given_low.shape} and {given_high.shape}")
            low = np.where(np.isfinite(given_low), given_low, low)
            high = np.where(np.isfinite(given_high), given_high, high)
        return cls(
            mode,
            dim,
            tuple(stacked.mean(axis=0).tolist()),
            tuple(std.tolist()),
            tuple(low.tolist()),
            tuple(high.tolist()),
        )

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "dim": self.dim,
            "mean": list(self.mean),
            "std": list(self.std),
            "low": list(self.low),
            "high": list(self.high),
        }

    @classmethod
    def from_dict(cls, raw: dict) -> ActionCodec:
        # "low"/"high" arrived after format version 1; a codec saved without them has no bounds.
        return cls(
            raw["mode"],
            int(raw["dim"]),
            tuple(raw["mean"]),
            tuple(raw["std"]),
            tuple(raw.get("low", ())),
            tuple(raw.get("high", ())),
        )

    def clip(self, actions: np.ndarray) -> np.ndarray:
        """Raw continuous actions [..., A] clipped into [low, high]; unchanged when the codec has no bounds
        (discrete, or read from a file that predates them)."""
        if self.mode == "discrete" or not self.low:
            return actions
        return np.clip(actions, np.asarray(self.low, actions.dtype), np.asarray(self.high, actions.dtype))

    def validate(self, actions: np.ndarray | torch.Tensor, where: str = "actions") -> None:
        """Raise ValueError unless `actions` are raw actions of this codec (any leading shape)."""
        array = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        if self.mode == "discrete":
            if array.dtype.kind not in "iu":
                raise ValueError(f"{where}: discrete actions must be integers, got dtype {array.dtype}")
            if array.size and (array.min() < 0 or array.max() >= self.dim):
                raise ValueError(
                    f"{where}: discrete actions must lie in [0, {self.dim - 1}], got [{array.min()}, {array.max()}]"
                )
            return
        if array.shape[-1:] != (self.dim,):
            raise ValueError(f"{where}: expected continuous actions [..., {self.dim}], got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"{where}: actions contain NaN or infinite values")

    def encode(self, actions: torch.Tensor) -> torch.Tensor:
        """Raw actions [..., A] (continuous) or [...] (discrete) -> encoded float32 [..., A]."""
        if self.mode == "discrete":
            return torch.nn.functional.one_hot(actions.long(), self.dim).float()
        mean = torch.tensor(self.mean, dtype=torch.float32, device=actions.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=actions.device)
        return (actions.float() - mean) / std

    def encode_numpy(self, actions: np.ndarray) -> np.ndarray:
        if self.mode == "discrete":
            return np.eye(self.dim, dtype=np.float32)[actions.astype(np.int64)]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return (actions.astype(np.float32) - mean) / std


def read_action_repeat(record: dict, source: str) -> int:
    """The action repeat K that a checkpoint, a manifest or a dataset's meta.json records under "action_repeat":
    every action of the data was held for K environment steps (wm_core.action_repeat). 1 where the key is absent
    (files written before it existed); ValueError naming `source` for anything but an integer >= 1."""
    return check_action_repeat(record.get("action_repeat", 1), f"{source}: action_repeat")


def check_action_repeat(value, name: str = "action_repeat") -> int:
    """`value` when it is an integer >= 1; ValueError naming `name` and the value otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value
