"""Checks on everything a caller hands to `Rollout`, before any of it reaches a runtime.

Every failure is a ValueError naming the argument, the expected and the actual value: a wrong shape or dtype
must never turn into a silent wrong answer or a crash inside onnxruntime or TensorRT.

Dimensions: B batch, H horizon, D GRU state (deter), S latent (stoch), A action width.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from wm_core.actions import ActionCodec

from .backends.base import Dims
from .state import LatentState


def array_kind(x: Any, where: str) -> str:
    """`numpy` or `torch`; anything else is refused."""
    if isinstance(x, np.ndarray):
        return "numpy"
    if isinstance(x, torch.Tensor):
        return "torch"
    raise ValueError(f"{where}: expected a numpy array or a torch tensor, got {type(x).__name__}")


def _is_float(x) -> bool:
    return x.dtype.is_floating_point if isinstance(x, torch.Tensor) else x.dtype.kind == "f"


def _is_real(x) -> bool:
    if isinstance(x, torch.Tensor):
        return x.dtype.is_floating_point or (not x.dtype.is_complex and x.dtype != torch.bool)
    return x.dtype.kind in "fiu"


def _all_finite(x) -> bool:
    """NaN propagates through max and min, and an infinite element becomes one of them: two reductions with no
    temporary array, a third of isfinite(x).all() on the small arrays of a control loop."""
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all())  # one host sync for a device tensor
    if x.dtype.kind != "f" or x.size == 0:
        return True
    return math.isfinite(x.max()) and math.isfinite(x.min())


def _is_integer(x) -> bool:
    if isinstance(x, torch.Tensor):
        return not x.dtype.is_floating_point and not x.dtype.is_complex and x.dtype != torch.bool
    return x.dtype.kind in "iu"


def _dtype_name(x) -> str:
    return str(x.dtype).removeprefix("torch.")


def check_batch(batch: int, max_batch: int, where: str) -> None:
    if not 1 <= batch <= max_batch:
        raise ValueError(f"{where}: batch must be in [1, {max_batch}] (the artifact's maximum), got {batch}")


def check_frames(obs, dims: Dims, max_batch: int, where: str = "obs") -> int:
    """uint8 [B, H, W, 3] -> B."""
    array_kind(obs, where)
    expected = ("B", *dims.frame)
    if obs.ndim != 4 or tuple(obs.shape[1:]) != dims.frame:
        raise ValueError(
            f"{where}: expected frames of shape [{', '.join(map(str, expected))}] (uint8, HWC), "
            f"got shape {list(obs.shape)}"
        )
    if obs.dtype != (torch.uint8 if isinstance(obs, torch.Tensor) else np.uint8):
        raise ValueError(f"{where}: expected dtype uint8 (raw frames, 0..255), got {_dtype_name(obs)}")
    check_batch(obs.shape[0], max_batch, where)
    return int(obs.shape[0])


def _check_float(x, shape: tuple, where: str, finite: bool = True) -> None:
    """x is float of `shape` (a tuple of ints and names), finite (unless `finite` is False: the caller checks
    that with `check_finite`)."""
    array_kind(x, where)
    if x.ndim != len(shape) or any(isinstance(s, int) and n != s for n, s in zip(x.shape, shape)):
        raise ValueError(f"{where}: expected shape [{', '.join(map(str, shape))}], got {list(x.shape)}")
    if not _is_float(x):
        raise ValueError(f"{where}: expected a float array, got dtype {_dtype_name(x)}")
    if finite and not _all_finite(x):
        raise ValueError(f"{where}: contains NaN or infinite values")


def check_finite(arrays: dict[str, Any]) -> None:
    """Raise ValueError naming the first of `arrays` (name -> array) that holds NaN or infinite values. Device
    tensors are reduced on the device and read back together: one host synchronisation, not one each."""
    on_device = {name: x for name, x in arrays.items() if isinstance(x, torch.Tensor) and x.device.type != "cpu"}
    if on_device:
        flags = torch.stack([torch.isfinite(x).all() for x in on_device.values()]).tolist()
        finite = dict(zip(on_device, flags))
    else:
        finite = {}
    for name, x in arrays.items():
        if not (finite[name] if name in finite else _all_finite(x)):
            what = "actions contain" if name.endswith("action") or name.endswith("actions") else "contains"
            raise ValueError(f"{name}: {what} NaN or infinite values")


def check_state(state: LatentState, dims: Dims, max_batch: int, batch: int | None = None, finite: bool = True) -> int:
    """h [B, D], z [B, S] -> B; `batch` is the batch of the other inputs of the call."""
    if not isinstance(state, LatentState):
        raise ValueError(f"state: expected a LatentState (from Rollout.initial or observe), got {type(state).__name__}")
    _check_float(state.h, ("B", dims.deter), "state.h", finite)
    _check_float(state.z, ("B", dims.latent), "state.z", finite)
    if state.h.shape[0] != state.z.shape[0]:
        raise ValueError(f"state: h and z disagree on the batch size: {state.h.shape[0]} vs {state.z.shape[0]}")
    if batch is not None and state.h.shape[0] != batch:
        raise ValueError(
            f"state: batch size {state.h.shape[0]} does not match the batch size {batch} of the "
            "inputs; start a state of this batch size with Rollout.initial(batch)"
        )
    check_batch(int(state.h.shape[0]), max_batch, "state")
    return int(state.h.shape[0])


def check_actions(
    actions, codec: ActionCodec, batch: int, where: str, sequence: bool, finite: bool = True, values: bool = True
) -> int:
    """Raw actions of `codec`: continuous [B, H, A] (or [B, A] when not `sequence`), discrete int [B, H] (or [B]).
    Returns H (1 when not `sequence`). Without `values`, shapes and dtypes only: no look at the numbers (the
    range of discrete actions, finiteness), which on a GPU waits for the device."""
    array_kind(actions, where)
    continuous = codec.mode == "continuous"
    ndim = (2 if sequence else 1) + continuous
    if actions.ndim != ndim or actions.shape[0] != batch or (continuous and actions.shape[-1] != codec.dim):
        shape = (["B", "H"] if sequence else ["B"]) + ([str(codec.dim)] if continuous else [])
        raise ValueError(
            f"{where}: expected {codec.mode} actions of shape [{', '.join(shape)}] with B={batch}, "
            f"got {list(actions.shape)}"
        )
    horizon = int(actions.shape[1]) if sequence else 1
    if horizon < 1:
        raise ValueError(f"{where}: the horizon (axis 1) must be >= 1, got {horizon}")
    if not continuous:
        if values:
            codec.validate(actions, where)  # integer dtype, range
        elif not _is_integer(actions):
            raise ValueError(f"{where}: discrete actions must be integers, got dtype {_dtype_name(actions)}")
    elif not _is_real(actions):
        raise ValueError(f"{where}: expected real-valued continuous actions, got dtype {_dtype_name(actions)}")
    elif finite and not _all_finite(actions):  # what ActionCodec.validate checks beyond the shape
        raise ValueError(f"{where}: actions contain NaN or infinite values")
    return horizon


def check_noise(noise, batch: int, horizon: int, dims: Dims, finite: bool = True) -> None:
    _check_float(noise, (batch, horizon, dims.latent), "noise", finite)


def check_latents(z, dims: Dims, max_batch: int, where: str = "z") -> int:
    """[N, S] -> N."""
    _check_float(z, ("N", dims.latent), where)
    check_batch(int(z.shape[0]), max_batch, where)
    return int(z.shape[0])
