"""The backend protocol: what torch, onnxruntime and TensorRT each provide so that the rollout loop
(`wm_deploy.rollout`) is written once.

Dimensions: B batch, T steps of a workspace, D GRU state (deter), S latent (stoch), A encoded action,
H, W frame height and width.

A backend computes three graphs, the ones `wm_export` exports (docs/artifacts.md): the encoder (uint8 frames
[B, H, W, 3] -> posterior mean, std [B, S]), the prior step (h [B, D], z [B, S], encoded action [B, A] ->
h_next [B, D], prior mean, std [B, S], for a model with heads reward, cont [B], and with a critic value [B]), the
decoder (z [B, S] -> frames [B, H, W, 3] in [0, 1]) and, for a model with an actor, the policy (h [B, D],
z [B, S] -> encoded action [B, A]). It reads and writes preallocated buffers held in a `Workspace`, one per
(batch, steps) bucket, so that a call allocates nothing per step and a GPU backend can capture the whole loop
in a CUDA graph.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class Dims:
    deter: int
    """D: size of the GRU state h"""
    latent: int
    """S: size of the latent z"""
    action: int
    """A: encoded action width (continuous: action width; discrete: number of actions)"""
    frame: tuple[int, int, int]
    """(H, W, 3): one uint8 observation"""


class ArrayOps(Protocol):
    """The few array operations the rollout needs, for the arrays a backend computes on (numpy on the host, or
    torch tensors on the backend's device). Every method writes into `out`/`dst`, so a loop built from them
    allocates nothing and is capturable in a CUDA graph."""

    kind: str
    """`numpy` or `torch`"""
    device: torch.device

    def zeros(self, shape: tuple[int, ...], dtype: str) -> Any: ...

    def copy(self, dst, src) -> None: ...

    def mul(self, a, b, out) -> None: ...

    def add(self, a, b, out) -> None: ...

    def write(self, dst, src, swap01: bool = False) -> None:
        """dst[...] = src (or src with its first two axes swapped); `src` may be a numpy array or a tensor."""

    def read(self, src, kind: str) -> Any:
        """A fresh, contiguous, caller-owned copy of `src` as `kind` (`numpy` or `torch`)."""

    def as_torch(self, array) -> torch.Tensor:
        """A tensor sharing memory with `array` (to fill it from torch's seeded generators)."""


class NumpyOps:
    kind = "numpy"
    device = torch.device("cpu")

    def zeros(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def copy(self, dst, src) -> None:
        dst[...] = src  # same as np.copyto, a third of its call overhead

    def mul(self, a, b, out) -> None:
        np.multiply(a, b, out=out)

    def add(self, a, b, out) -> None:
        np.add(a, b, out=out)

    def write(self, dst, src, swap01: bool = False) -> None:
        if isinstance(src, torch.Tensor):
            src = src.detach().cpu().numpy()
        dst[...] = src.swapaxes(0, 1) if swap01 else src

    def read(self, src, kind: str) -> Any:
        out = src.copy()  # C-contiguous, whatever the strides of `src`
        return torch.from_numpy(out) if kind == "torch" else out

    def as_torch(self, array) -> torch.Tensor:
        return torch.from_numpy(array)


class TorchOps:
    kind = "torch"

    def __init__(self, device: torch.device):
        self.device = device

    def zeros(self, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
        return torch.zeros(shape, dtype=getattr(torch, dtype), device=self.device)

    def copy(self, dst, src) -> None:
        dst.copy_(src)

    def mul(self, a, b, out) -> None:
        torch.mul(a, b, out=out)

    def add(self, a, b, out) -> None:
        torch.add(a, b, out=out)

    def write(self, dst, src, swap01: bool = False) -> None:
        if isinstance(src, np.ndarray):
            src = numpy_to_torch(src)
        dst.copy_(src.swapaxes(0, 1) if swap01 else src)

    def read(self, src, kind: str) -> Any:
        if kind == "torch":
            return src.clone(memory_format=torch.contiguous_format)  # a copy even when `src` is contiguous
        if src.device.type == "cpu":
            return src.numpy().copy()
        return np.ascontiguousarray(src.cpu().numpy())  # .cpu() of a device tensor is already a copy

    def as_torch(self, array) -> torch.Tensor:
        return array


def numpy_to_torch(array: np.ndarray) -> torch.Tensor:
    """A tensor of `array`'s values, sharing its memory where torch can (a read-only array, such as a frame
    from PIL, is copied: torch warns about tensors over memory it may not write)."""
    return torch.from_numpy(np.require(array, requirements=("C", "W")))


@dataclass(eq=False)
class Workspace:
    """Preallocated buffers for one (batch, steps) bucket.

    Time-major, so that every step reads and writes contiguous [B, ...] slices: h [T+1, B, D] and z [T+1, B, S]
    hold the start state at index 0 and the state after step t at t+1; prior_mean, prior_std, noise [T, B, S]
    and action [T, B, A] are indexed by step. A step writes its prior mean into z[t+1], which is the next z
    as it stands when rolling out the mean (no copy per step); only a sampling loop keeps the mean apart in
    prior_mean[t] before replacing z[t+1] with the draw. reward and cont [T, B] hold the heads' predictions for
    the state after step t (left at 0 by a model without heads), value [T, B] the critic's (left at 0 without
    one); policy_action [B, A] is the policy's encoded action for (h[0], z[0]). With `frames`, also obs uint8
    [B, H, W, 3],
    the posterior post_mean, post_std [B, S] and the decoded recon float32 [B, H, W, 3].
    """

    batch: int
    steps: int
    h: Any
    z: Any
    prior_mean: Any
    prior_std: Any
    action: Any
    noise: Any
    reward: Any
    cont: Any
    value: Any
    policy_action: Any
    obs: Any = None
    post_mean: Any = None
    post_std: Any = None
    recon: Any = None
    runners: dict = field(default_factory=dict)
    """compiled imagine loops, keyed by `sample` (see `Backend.compile`)"""
    private: dict = field(default_factory=dict)
    """what the backend keeps per workspace (IO bindings, tensor addresses)"""

    def __post_init__(self):
        # Per-step views, made once: indexing a Python list is cheaper than slicing an array in the loop.
        self.hs = [self.h[t] for t in range(self.steps + 1)]
        self.zs = [self.z[t] for t in range(self.steps + 1)]
        self.means = [self.prior_mean[t] for t in range(self.steps)]
        self.stds = [self.prior_std[t] for t in range(self.steps)]
        self.actions = [self.action[t] for t in range(self.steps)]
        self.noises = [self.noise[t] for t in range(self.steps)]
        self.rewards = [self.reward[t] for t in range(self.steps)]
        self.conts = [self.cont[t] for t in range(self.steps)]
        self.values = [self.value[t] for t in range(self.steps)]
        # Batch-major [B, T, ...] views of what a trajectory returns, made once for the copy out of each call.
        self.trajectory = {
            "z": self.z[1:].swapaxes(0, 1),
            "h": self.h[1:].swapaxes(0, 1),
            "prior_mean": self.prior_mean.swapaxes(0, 1),
            "prior_std": self.prior_std.swapaxes(0, 1),
            "reward": self.reward.swapaxes(0, 1),
            "cont": self.cont.swapaxes(0, 1),
            "value": self.value.swapaxes(0, 1),
        }

    @classmethod
    def allocate(cls, ops: ArrayOps, dims: Dims, batch: int, steps: int, frames: bool, align: int = 0) -> Workspace:
        """Zeroed buffers (so that a warm-up or capture run on a fresh workspace computes on finite numbers).
        With `align` (bytes; torch buffers only), every per-step slice and every frame buffer starts at a
        multiple of it: TensorRT needs 256-byte aligned tensor addresses, which a time-major [T, B, ...] buffer
        gives its step slices only when B x width x 4 happens to be a multiple of 256."""
        B, T, D, S, A = batch, steps, dims.deter, dims.latent, dims.action

        def slabs(count: int, shape: tuple[int, ...], dtype: str = "float32"):
            return aligned_zeros(ops, count, shape, dtype, align) if align else ops.zeros((count, *shape), dtype)

        extra = {}
        if frames:
            extra = dict(
                obs=slabs(1, (B, *dims.frame), "uint8")[0],
                post_mean=slabs(1, (B, S))[0],
                post_std=slabs(1, (B, S))[0],
                recon=slabs(1, (B, *dims.frame))[0],
            )
        return cls(
            B,
            T,
            h=slabs(T + 1, (B, D)),
            z=slabs(T + 1, (B, S)),
            prior_mean=slabs(T, (B, S)),
            prior_std=slabs(T, (B, S)),
            action=slabs(T, (B, A)),
            noise=slabs(T, (B, S)),
            reward=slabs(T, (B,)),
            cont=slabs(T, (B,)),
            value=slabs(T, (B,)),
            policy_action=slabs(1, (B, A))[0],
            **extra,
        )


def aligned_zeros(ops: ArrayOps, count: int, shape: tuple[int, ...], dtype: str, align: int) -> torch.Tensor:
    """Zeros [count, *shape] whose `count` slices are each contiguous and start at a multiple of `align` bytes
    (rows padded to the alignment inside one allocation)."""
    assert ops.kind == "torch", "aligned buffers are for device tensors"
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    per = align // itemsize  # elements per alignment unit
    row = math.prod(shape)
    stride = -(-row // per) * per  # row padded up to whole units
    flat = ops.zeros((count * stride + per,), dtype)
    offset = (-flat.data_ptr() // itemsize) % per
    rows = flat[offset : offset + count * stride].view(count, stride)[:, :row]
    return rows.view(count, *shape)  # [count, row] with row stride `stride` -> [count, *shape]


class Backend(Protocol):
    """What every backend provides. Arrays are those of `ops` (numpy on the host or tensors on `device`).

    mypy checks each backend against this protocol where `wm_deploy.loading` builds it, and NumpyOps and
    TorchOps against ArrayOps where the backends assign `ops`."""

    name: str
    """`torch`, `onnxruntime` or `tensorrt`"""
    detail: str
    """what runs it, for logs: execution provider, GPU, precision"""
    device: torch.device
    ops: ArrayOps
    dims: Dims
    max_batch: int
    has_decoder: bool
    has_heads: bool
    """the prior step also predicts reward and continuation (a model trained with heads)"""
    has_value: bool
    """the prior step also predicts the critic's value (a model trained with model.actor_critic)"""
    has_policy: bool
    """`policy_into` works (a model trained with model.actor_critic)"""

    def workspace(self, batch: int, steps: int, frames: bool) -> Workspace:
        """Buffers for `batch` rows and `steps` prior steps (and frames when `frames`)."""

    def encode_into(self, ws: Workspace) -> None:
        """ws.obs -> ws.post_mean, ws.post_std."""

    def step_into(self, ws: Workspace, t: int) -> None:
        """(ws.h[t], ws.z[t], ws.action[t]) -> h_next into ws.h[t + 1], prior mean into ws.z[t + 1], prior std
        into ws.prior_std[t]; with heads, reward and cont into ws.reward[t], ws.cont[t]; with a critic, value into
        ws.value[t]."""

    def policy_into(self, ws: Workspace) -> None:
        """(ws.h[0], ws.z[0]) -> the actor's encoded action into ws.policy_action."""

    def decode_into(self, ws: Workspace) -> None:
        """ws.post_mean -> ws.recon."""

    def compile(self, loop: Callable[[], None], ws: Workspace) -> Callable[[], None]:
        """A callable that runs `loop` (which only touches `ws`): `loop` itself on CPU, a CUDA graph replay
        where the backend can capture one."""

    def scope(self) -> ContextManager:
        """Entered around every call that runs the backend (its stream, its grad mode)."""


class CaptureError(RuntimeError):
    """Something in the loop cannot be captured in a CUDA graph (the eager loop is used instead)."""


def capture_cuda_graph(loop: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """Capture `loop` in a CUDA graph on `device` and return its replay; where the capture fails, warn and
    return `loop` itself (eager, still correct).

    Warm-up runs on a side stream first, as torch.cuda.graphs asks: they let libraries (cuBLAS, TensorRT) finish
    their lazy initialisation and shape-dependent setup outside the capture. The warm-up computes on whatever
    the buffers hold, so callers capture before writing a call's inputs. `loop` must only read and write
    tensors that outlive the graph (the workspace), since replay reuses their addresses.

    `device` is made current and the capture runs on a stream of that device: torch's default capture stream
    belongs to whichever device was current when it was first made, and a graph captured there while the work
    launches on another device's stream is empty.
    """
    with torch.cuda.device(device):
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                loop()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        try:
            graph = _capture(loop, device)
        except CaptureError as error:
            warnings.warn(f"CUDA graph capture failed, running the loop eagerly: {error}", RuntimeWarning, 2)
            return loop
    return graph.replay


def _capture(loop: Callable[[], None], device: torch.device) -> torch.cuda.CUDAGraph:
    """The capture itself, with begin and end called here rather than by `torch.cuda.graph`, whose exit would
    mask an error raised inside the capture with its own failure to end it."""
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        graph.capture_begin()
        try:
            loop()
        except Exception as error:
            with contextlib.suppress(RuntimeError):  # the capture is invalidated; ending it may report that
                graph.capture_end()
            torch.cuda.synchronize(device)
            raise CaptureError(f"{type(error).__name__}: {str(error).strip().splitlines()[0]}") from error
        graph.capture_end()
    torch.cuda.current_stream(device).wait_stream(stream)
    return graph


@contextlib.contextmanager
def on_stream(stream: torch.cuda.Stream):
    """Run on `stream` with its device current, ordered after the caller's pending work and before the
    caller's next (so that a backend's eager calls never land on the device-wide legacy default stream)."""
    caller = torch.cuda.current_stream(stream.device)
    stream.wait_stream(caller)
    with torch.no_grad(), torch.cuda.device(stream.device), torch.cuda.stream(stream):
        yield
    caller.wait_stream(stream)
