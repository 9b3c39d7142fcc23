"""Action encoding shared by training, export and deployment.

Continuous actions are normalised with statistics of the training split; discrete actions are one-hot
encoded. The codec is stored as plain data in checkpoints and manifests so that every consumer encodes raw
actions exactly as training did.
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

    @classmethod
    def fit(cls, mode: str, dim: int, actions: list[np.ndarray]) -> ActionCodec:
        """Statistics from the training split's raw actions (one array per episode)."""
        if mode == "discrete":
            return cls(mode, dim)
        stacked = np.concatenate(actions).astype(np.float64)  # [N, A]
        std = stacked.std(axis=0)
        std = np.where(std < MIN_STD, 1.0, std)
        return cls(mode, dim, tuple(stacked.mean(axis=0).tolist()), tuple(std.tolist()))

    def to_dict(self) -> dict:
        return {"mode": self.mode, "dim": self.dim, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, raw: dict) -> ActionCodec:
        return cls(raw["mode"], int(raw["dim"]), tuple(raw["mean"]), tuple(raw["std"]))

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
