"""The sampling distributions of the planner (wm_deploy.planner): a diagonal Gaussian over continuous action
sequences (MPPI / CEM, as in TD-MPC2) and a per-step categorical over discrete ones (the cross-entropy method
on a categorical). Each draws candidates, refits itself to weighted elites and warm-starts the next tick by
shifting its parameters one step; and the few array operations they and the planner need, on numpy or torch.

Dimensions: N candidates, K elites, H horizon, A action width, n number of discrete actions.

Candidates live in the distribution's own coordinates: for the Gaussian, u in [-1, 1]^A per step, mapped
linearly onto each dimension's bounds (so the std floor and ceiling mean the same for steering in [-1, 1] and
gas in [0, 1]); for the categorical, the action indices themselves. `to_actions` turns them into the raw actions
`Rollout.imagine` takes. The noise comes from the planner's numpy generator on the host whatever the device, so
a seed gives the same candidates on every backend: `draw` makes a tick's worth at once (one copy to the device),
and `sample` and `around` turn slices of it into candidates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class Arrays:
    """The planner's array operations, on numpy arrays (`kind="numpy"`) or torch tensors on `device`.

    On a CPU the planner computes in numpy: torch's intra-op thread pool, woken by element-wise ops on the
    [N, H, S] trajectories, competes with onnxruntime's for the same cores (docs/control.md). On a GPU it keeps
    everything on the device.
    `kind` overrides the choice (tests run the GPU's torch path on a CPU)."""

    def __init__(self, device: torch.device, kind: str | None = None):
        if kind not in (None, "numpy", "torch") or (kind == "numpy" and device.type != "cpu"):
            raise ValueError(f"planner arrays must be 'numpy' (on a CPU) or 'torch', got {kind!r} on {device}")
        self.device = device
        self.kind = kind or ("numpy" if device.type == "cpu" else "torch")

    def asarray(self, x, dtype=np.float32) -> Any:
        """numpy array or tensor -> this kind (no copy where none is needed)."""
        if self.kind == "numpy":
            x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
            return np.asarray(x, dtype=dtype)
        torch_dtype = torch.int64 if np.dtype(dtype).kind in "iu" else torch.float32
        return torch.as_tensor(x).to(self.device, torch_dtype)

    def upload(self, x: np.ndarray) -> Any:
        """A host array -> this kind, its dtype kept: on a GPU one copy from pinned memory that does not wait for
        the device (the planner's noise for a whole tick)."""
        if self.kind == "numpy":
            return x
        tensor = torch.from_numpy(np.ascontiguousarray(x))
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def numpy(self, x) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    def arange(self, n: int):
        return np.arange(n) if self.kind == "numpy" else torch.arange(n, device=self.device)

    def fill_at(self, x, index, value: float):
        """x[index] = value in place, `index` a 1-d array -> x. (On torch a value passed as a number: an assigned
        number becomes a tensor copied from the host, which a CUDA graph cannot capture.)"""
        if self.kind == "numpy":
            x[index] = value
            return x
        return x.index_fill_(0, index, value)

    def argmax(self, x):
        """-> the index of the largest entry, as a 0-d array or tensor (not read back to the host)."""
        return np.argmax(x) if self.kind == "numpy" else torch.argmax(x)

    def log(self, x):
        """log, with log 0 = -inf and no warning."""
        if self.kind == "numpy":
            with np.errstate(divide="ignore"):
                return np.log(x)
        return torch.log(x)

    def std(self, x):
        """The population std (numpy's, torch's correction 0), as a 0-d array or tensor."""
        return x.std() if self.kind == "numpy" else x.std(correction=0)

    def maximum(self, x, floor: float):
        return np.maximum(x, floor) if self.kind == "numpy" else x.clamp(min=floor)

    def ones_like(self, x):
        return np.ones_like(x) if self.kind == "numpy" else torch.ones_like(x)

    def cat(self, xs: list, axis: int = 0):
        return np.concatenate(xs, axis) if self.kind == "numpy" else torch.cat(xs, axis)

    def clip(self, x, low: float, high: float):
        """In place."""
        return np.clip(x, low, high, out=x) if self.kind == "numpy" else x.clamp_(low, high)

    def sqrt(self, x):
        return np.sqrt(x) if self.kind == "numpy" else x.sqrt()

    def minimum(self, a, b):
        return np.minimum(a, b) if self.kind == "numpy" else torch.minimum(a, b)

    def expand(self, x, count: int):
        """[1, ...] -> [count, ...] without a copy."""
        if self.kind == "numpy":
            return np.broadcast_to(x, (count, *x.shape[1:]))
        return x.expand(count, *x.shape[1:])

    def top(self, values, k: int):
        """-> the k largest values, best first, and their indices (a stable sort: ties keep their order, as on
        the other kind)."""
        if self.kind == "numpy":
            best = np.argsort(-values, kind="stable")[:k]
            return values[best], best
        index = torch.sort(values, descending=True, stable=True).indices[:k]
        return values[index], index

    def softmax(self, x):
        """[K] -> exp(x - max) / sum: TD-MPC2's elite weights, computed without overflow."""
        e = np.exp(x - x.max()) if self.kind == "numpy" else torch.exp(x - x.max())
        return e / e.sum()

    def count_nonfinite(self, x):
        """-> the number of NaN and infinite entries, a 0-d array or tensor (read it back once per tick)."""
        return (~np.isfinite(x)).sum() if self.kind == "numpy" else (~torch.isfinite(x)).sum()

    def join(self, parts: list):
        """Arrays of any shape -> their values raveled and joined as one float64 array of this kind."""
        if self.kind == "numpy":
            return np.concatenate([np.asarray(p, np.float64).ravel() for p in parts])
        return torch.cat([p.reshape(-1).double() for p in parts])

    def to_host(self, parts: list) -> np.ndarray:
        """`join(parts)` as a numpy array: one device->host copy for everything a tick reads back."""
        joined = self.join(parts)
        return joined if self.kind == "numpy" else joined.cpu().numpy()

    def cumprod(self, x, axis: int):
        return np.cumprod(x, axis) if self.kind == "numpy" else torch.cumprod(x, axis)

    def norm(self, x, axis: int):
        return np.linalg.norm(x, axis=axis) if self.kind == "numpy" else x.norm(dim=axis)

    def one_hot(self, indices, n: int):
        if self.kind == "numpy":
            return np.eye(n, dtype=np.float32)[indices]
        return torch.nn.functional.one_hot(indices, n).float()


def shift(sequences):
    """[M, H, ...] one step earlier along H, the last step repeated: the warm start of the next tick. (Slices, not a
    list index, which torch would copy from the host: a CUDA graph cannot capture that.)"""
    if isinstance(sequences, np.ndarray):
        return np.concatenate([sequences[:, 1:], sequences[:, -1:]], 1)
    return torch.cat([sequences[:, 1:], sequences[:, -1:]], 1)


class Gaussian:
    """N(mean, std) per step and dimension in u-space, clamped to [-1, 1]; std between min_std and max_std."""

    def __init__(self, xp: Arrays, low, high, horizon: int, min_std: float, max_std: float, prior=None):
        """prior: (mean, std) [A] each in raw units, where a fresh plan starts and the widest the std gets (per
        dimension, within min_std and max_std); None: the middle of the bounds and max_std."""
        self.xp = xp
        self.low, self.high = xp.asarray(low), xp.asarray(high)  # [A]
        self.half_range = 0.5 * (self.high - self.low)
        self.min_std, self.max_std = min_std, max_std
        self.shape = (horizon, len(low))  # [H, A]
        center, ceiling = np.zeros(len(low), np.float32), np.full(len(low), max_std, np.float32)
        if prior is not None:
            half_range = 0.5 * (np.asarray(high, np.float32) - np.asarray(low, np.float32))
            center = np.clip((np.asarray(prior[0], np.float32) - low) / half_range - 1.0, -1.0, 1.0)
            ceiling = np.clip(np.asarray(prior[1], np.float32) / half_range, min_std, max_std)
        self.center = xp.asarray(np.broadcast_to(center, self.shape).copy())  # [H, A]
        self.ceiling = xp.asarray(np.broadcast_to(ceiling, self.shape).copy())  # [H, A]
        self.reset()

    def reset(self) -> None:
        """Forget the previous plan: the next tick starts from the prior's centre."""
        self.mean = self.center + 0.0  # a copy
        self.std = self.ceiling + 0.0

    def state(self) -> list:
        """What carries over from one tick to the next (the planner's tick graph keeps it in fixed buffers)."""
        return [self.mean, self.std]

    def load(self, state: list) -> None:
        self.mean, self.std = state

    def begin(self, start=None) -> None:
        """Start a tick from the (already shifted) mean, or from `start` u [H, A] (the actor's plan), with the
        widest std. TD-MPC2 resets the std every step too: a std that shrank onto last tick's elites would hide
        what changed since."""
        self.std = self.ceiling + 0.0
        if start is not None:
            self.mean = start + 0.0

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """The noise of `count` candidates, on the host: standard normal float32 [count, H, A]."""
        return rng.standard_normal((count, *self.shape), dtype=np.float32)

    def around(self, u, noise):
        """Copies of the sequence u [H, A] jittered by min_std, one per row of `noise` (from `draw`) -> [count, H, A]
        in [-1, 1]."""
        return self.xp.clip(u + self.min_std * noise, -1.0, 1.0)

    def from_actions(self, actions):
        """Raw actions [..., A] -> u [..., A] (clipped into [-1, 1])."""
        return self.xp.clip((actions - self.low) / self.half_range - 1.0, -1.0, 1.0)

    def mode(self):
        """The distribution's most likely sequence: its mean u [H, A]."""
        return self.mean + 0.0

    def sample(self, noise):
        """`noise` [count, H, A] (from `draw`) -> candidates u [count, H, A] in [-1, 1]."""
        return self.xp.clip(self.mean + self.std * noise, -1.0, 1.0)

    def refit(self, elites, weights) -> None:
        """elites u [K, H, A], weights [K] summing to 1 -> the weighted mean and std (TD-MPC2's update)."""
        w = weights[:, None, None]  # [K] -> [K, 1, 1]
        self.mean = (w * elites).sum(0)
        variance = (w * (elites - self.mean) ** 2).sum(0)
        self.std = self.xp.minimum(self.xp.clip(self.xp.sqrt(variance), self.min_std, self.max_std), self.ceiling)

    def end(self) -> None:
        """After a tick: shift the mean one step for the next tick's warm start."""
        self.mean = shift(self.mean[None])[0]

    def to_actions(self, u):
        """u [..., A] in [-1, 1] -> raw actions [..., A] in [low, high]."""
        return self.low + (u + 1.0) * self.half_range


class Categorical:
    """Independent categoricals per step over n actions, each probability at least min_prob."""

    def __init__(self, xp: Arrays, actions: int, horizon: int, min_prob: float):
        self.xp = xp
        self.actions, self.horizon, self.min_prob = actions, horizon, min_prob
        self.uniform = xp.asarray(np.full((1, actions), 1.0 / actions, np.float32))  # [1, n]
        self.reset()

    def reset(self) -> None:
        self.probs = self.xp.cat([self.uniform] * self.horizon)  # [H, n]

    def begin(self, start=None) -> None:
        """Start a tick from the (already shifted) probabilities, or from the sequence `start` int [H] (the actor's
        plan) floored at min_prob. Otherwise nothing widens between ticks: the floor keeps every action
        possible."""
        if start is not None:
            self.probs = self._floored(self.xp.one_hot(start, self.actions))

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """The noise of `count` candidates, on the host: one uniform number per step, float32 [count, H, 1]."""
        return rng.random((count, self.horizon, 1), dtype=np.float32)

    def around(self, indices, noise):
        """Draws from the sequence `indices` int [H] floored at min_prob, one per row of `noise` -> int64
        [count, H]."""
        saved = self.probs
        self.probs = self._floored(self.xp.one_hot(indices, self.actions))
        try:
            return self.sample(noise)
        finally:
            self.probs = saved

    def from_actions(self, actions):
        return actions

    def mode(self):
        """The most probable action of every step: int64 [H]."""
        return self.probs.argmax(-1)

    def _floored(self, frequencies):
        return (1.0 - self.actions * self.min_prob) * frequencies + self.min_prob

    def sample(self, uniform):
        """`uniform` [count, H, 1] (from `draw`) -> int64 [count, H]: inverse-CDF draws."""
        cdf = self.probs.cumsum(-1)  # [H, n]
        indices = (cdf < uniform).sum(-1)  # [count, H, n] -> [count, H]
        # float rounding can leave the last cdf entry just under 1
        return self.xp.clip(self.xp.asarray(indices, np.int64), 0, self.actions - 1)

    def refit(self, elites, weights) -> None:
        """elites int [K, H], weights [K] -> each step's weighted action frequencies, floored at min_prob by
        mixing with the uniform distribution (which keeps them summing to 1)."""
        onehot = self.xp.one_hot(elites, self.actions)  # [K, H] -> [K, H, n]
        frequencies = (weights[:, None, None] * onehot).sum(0)  # [H, n]
        self.probs = self._floored(frequencies)

    def state(self) -> list:
        return [self.probs]

    def load(self, state: list) -> None:
        (self.probs,) = state

    def end(self) -> None:
        """Shift one step; the new last step is uniform (nothing is known about it yet)."""
        self.probs = self.xp.cat([self.probs[1:], self.uniform])

    def to_actions(self, indices):
        return indices
