"""Roll a world model out on any backend: observe real frames, imagine latent futures, decode latents.

Dimensions: B batch, H horizon, D GRU state (deter), S latent (stoch), A action width.

The semantics are training's (wm_core.model.RSSM): h_0 = 0 pairs with the first frame's posterior z_0 and
h_t+1 = GRUCell(h_t, f([z_t, a_t])) with the prior p(z_t+1 | h_t+1). So `observe` advances h with the
previous action and takes the new frame's posterior mean as z; `imagine` feeds the prior mean (or a draw from
the prior) back as the next z.

The imagine loop (`imagine_loop`) is written once, against the backend protocol (backends/base.py). Each
(batch, horizon) bucket gets a workspace of preallocated buffers, reused call after call, in which a GPU
backend captures the loop in a CUDA graph. Outputs are copied out of the workspace, so they stay valid
after the next call.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from wm_core.actions import ActionCodec, check_action_repeat
from wm_core.config import ExportConfig
from wm_core.model import WorldModel

from . import validation
from .actions import ActionWriter
from .backends.base import ArrayOps, Backend, Workspace
from .loading import Options, build_auto, build_backend, logger, open_source, resolve_device, source_action_repeat
from .state import LatentState, Trajectory

MAX_WORKSPACES = 16
"""default of `max_workspaces`: (batch, horizon) buckets kept before the least recently used is freed"""


def imagine_loop(step_into, ops: ArrayOps, ws: Workspace, sample: bool) -> None:
    """The H prior steps of one imagine call, entirely inside `ws`: z_t+1 is the prior mean (the step wrote
    it there), or with `sample` mean + std * noise_t. Allocates nothing, so a GPU backend can capture it as
    it is. The noise buffer is consumed (scaled in place); it is refilled before every call."""
    if not sample:
        for t in range(ws.steps):
            step_into(ws, t)
        return
    zs, means, stds, noises = ws.zs, ws.means, ws.stds, ws.noises
    for t in range(ws.steps):
        step_into(ws, t)
        ops.copy(means[t], zs[t + 1])
        ops.mul(noises[t], stds[t], noises[t])
        ops.add(zs[t + 1], noises[t], zs[t + 1])


class Rollout:
    """A loaded world model behind one backend. Build it with `Rollout.load` (or `Rollout.from_model`).

    Inputs may be numpy arrays or torch tensors; each call returns the kind of its main input (frames for
    `observe` and `encode`, actions for `imagine`, z for `decode`, h for `prior_step`), tensors on
    `self.device`.

    Thread safety: one Rollout may be shared by any number of threads. Its calls run one at a time (a lock
    per Rollout: calls share preallocated buffers, the noise generator and, on TensorRT, execution contexts),
    so each call sees only its own inputs, whatever the other threads do. Inputs are checked before the
    lock is taken. Threads sharing one Rollout therefore get one call's throughput between them; for
    parallel throughput on a CPU, give each thread a Rollout of its own (they share nothing).
    """

    def __init__(
        self,
        backend: Backend,
        codec: ActionCodec,
        *,
        seed: int = 0,
        reason: str = "",
        max_workspaces: int = MAX_WORKSPACES,
        action_repeat: int = 1,
    ):
        if codec.dim != backend.dims.action:
            raise ValueError(f"action codec width {codec.dim} != the model's action width {backend.dims.action}")
        self.backend = backend
        self.codec = codec
        self.action_repeat = check_action_repeat(action_repeat)
        """environment steps each action is held for: one imagined step is that many of the environment's (the
        training data's action repeat; wm_core.action_repeat)"""
        self.ops = backend.ops
        self.dims = backend.dims
        self.device = backend.device
        self.max_batch = backend.max_batch
        self.backend_reason = reason  # why `auto` chose this backend (empty when it was named)
        self._actions = ActionWriter(codec, self.ops)
        self._codec_tensors: dict[torch.device, list] = {}  # the codec's statistics and bounds by device
        self._generator = torch.Generator(self.ops.device).manual_seed(seed)
        if max_workspaces < 1:
            raise ValueError(f"max_workspaces must be >= 1, got {max_workspaces}")
        self.max_workspaces = max_workspaces
        self._workspaces: OrderedDict[tuple, Workspace] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        path: str | Path,
        backend: str = "auto",
        device: str | torch.device = "auto",
        *,
        max_batch: int | None = None,
        seed: int = 0,
        frame_threads: int | None = None,
        cuda_graphs: bool = True,
        precision: str | None = None,
        max_workspaces: int = MAX_WORKSPACES,
        thread_spinning: bool = True,
        fused: bool = False,
    ) -> Rollout:
        """Load an artifact folder (written by wm-export) or a checkpoint (torch backend only).

        backend: `auto` (the fastest available on the device; logged once), `torch`, `onnxruntime` or
        `tensorrt`. device: `auto` (CUDA when torch sees one), `cpu`, `cuda` or `cuda:N`. max_batch: the largest
        batch accepted (default: the TensorRT profile's, else the export config's). seed: of the generator that
        draws `imagine(sample=True)` noise. frame_threads: onnxruntime CPU threads of the encoder and decoder
        (default 1, right for small batches). cuda_graphs: capture the imagine loop in CUDA graphs on GPU
        (torch and TensorRT backends); off, every step is launched from Python (for comparisons).
        precision: `fp32` (the default: exact float32, TF32 off on CUDA), `tf32` (torch and onnxruntime on
        CUDA, opt-in), `bf16` or `fp16` (torch: half-precision matmuls, float32 recurrent state; meant for
        CUDA); for TensorRT the engines' precision, which `auto` uses only when it is fp32 or asked for.
        max_workspaces: (batch, horizon) buckets whose buffers (and, on GPU, captured graphs) are kept; the
        least recently used is freed beyond it, so memory stays bounded however many shapes a process sees.
        thread_spinning: onnxruntime on CPU keeps its idle worker threads spinning for the next call, which makes
        one model's back-to-back calls faster; several models that take turns on the same cores (an Ensemble)
        should turn it off, or each one's spinning threads slow the others' calls. fused (opt-in): torch on CUDA in
        fp32 runs the imagine loop as one Triton kernel (the `kernels` extra) where the model allows it, after
        checking it against the torch loop (`backend_detail` says which runs). Off by default: on an H200 it is
        slower than the captured torch loop (docs/gpu.md).
        """
        device = resolve_device(device)
        source = open_source(path)
        options = Options(max_batch, frame_threads, cuda_graphs, precision, thread_spinning, fused)
        if backend == "auto":
            built, codec, reason = build_auto(source, device, options)
            logger.info("wm_deploy: backend auto -> %s (%s); %s", built.name, built.detail, reason)
        else:
            built, codec = build_backend(backend, source, device, options)
            reason = ""
        return cls(
            built,
            codec,
            seed=seed,
            reason=reason,
            max_workspaces=max_workspaces,
            action_repeat=source_action_repeat(source),
        )

    @classmethod
    def from_model(
        cls,
        model: WorldModel,
        codec: ActionCodec,
        device: str | torch.device = "cpu",
        *,
        max_batch: int = ExportConfig.max_batch,
        seed: int = 0,
        cuda_graphs: bool = True,
        precision: str = "fp32",
        max_workspaces: int = MAX_WORKSPACES,
        action_repeat: int = 1,
    ) -> Rollout:
        """The torch backend on a model in memory (e.g. freshly trained), without a checkpoint file;
        `action_repeat`: its training data's."""
        from .backends.torch_backend import TorchBackend

        backend = TorchBackend(model, resolve_device(device), max_batch, cuda_graphs, precision)
        return cls(backend, codec, seed=seed, max_workspaces=max_workspaces, action_repeat=action_repeat)

    @property
    def has_heads(self) -> bool:
        """Whether `imagine` predicts rewards and continuation (the model was trained with heads)."""
        return self.backend.has_heads

    @property
    def has_value(self) -> bool:
        """Whether `imagine` also returns the critic's values (the model was trained with model.actor_critic)."""
        return self.backend.has_value

    @property
    def has_policy(self) -> bool:
        """Whether `policy` and `policy_plan` work (the model was trained with model.actor_critic)."""
        return self.backend.has_policy

    @property
    def has_decoder(self) -> bool:
        """Whether `decode` works (the artifacts include the decoder)."""
        return self.backend.has_decoder

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def backend_detail(self) -> str:
        return self.backend.detail

    def __repr__(self) -> str:
        return (
            f"Rollout(backend={self.backend_name!r} [{self.backend_detail}], dims={self.dims}, "
            f"max_batch={self.max_batch}, actions={self.codec.mode}[{self.codec.dim}], "
            f"action_repeat={self.action_repeat})"
        )

    # --- the API ------------------------------------------------------------------------------------------

    def initial(self, batch: int, kind: str = "numpy") -> LatentState:
        """The state before the first frame: h = 0, z = 0 (unused: the first `observe` replaces it)."""
        validation.check_batch(batch, self.max_batch, "initial")
        D, S = self.dims.deter, self.dims.latent
        if kind == "numpy":
            return LatentState(np.zeros((batch, D), np.float32), np.zeros((batch, S), np.float32), is_initial=True)
        if kind == "torch":
            h, z = torch.zeros(batch, D, device=self.device), torch.zeros(batch, S, device=self.device)
            return LatentState(h, z, is_initial=True)
        raise ValueError(f"kind must be 'numpy' or 'torch', got {kind!r}")

    def observe(self, state: LatentState, obs, prev_action=None) -> LatentState:
        """Advance `state` with the action taken since its frame, then encode the new frame.

        obs: uint8 [B, H, W, 3]. prev_action: raw [B, A] (continuous) or int [B] (discrete); ignored, and
        optional, for a state from `initial` (h stays 0 with the first frame, as in training).
        -> LatentState(h [B, D], z = posterior mean [B, S])."""
        kind = validation.array_kind(obs, "obs")
        batch = validation.check_frames(obs, self.dims, self.max_batch)
        validation.check_state(state, self.dims, self.max_batch, batch)
        if prev_action is None and not state.is_initial:
            raise ValueError(
                "prev_action: required to advance a state that has seen a frame (None is only "
                "accepted for a state from Rollout.initial)"
            )
        if prev_action is not None:
            validation.check_actions(prev_action, self.codec, batch, "prev_action", sequence=False)
        ops = self.ops
        with self._exclusive():
            ws = self._workspace(batch, 1, frames=True)
            runner = self._observe_runner(ws, state.is_initial)
            ops.write(ws.obs, obs)
            if state.is_initial:
                runner()
                ops.write(ws.hs[1], state.h)
            else:
                ops.write(ws.hs[0], state.h)
                ops.write(ws.zs[0], state.z)
                self._actions.write(ws.actions[0], prev_action)
                runner()
            return LatentState(ops.read(ws.hs[1], kind), ops.read(ws.post_mean, kind))

    def imagine(
        self,
        state: LatentState,
        actions,
        *,
        sample: bool = False,
        noise=None,
        seed: int | None = None,
        trusted: bool = False,
    ) -> Trajectory:
        """Roll the prior forward from `state` under raw `actions` [B, H, A] (continuous) or int [B, H]
        (discrete).

        By default each next z is the prior mean. With `sample=True` it is mean + std * noise: `noise`
        [B, H, S] when given (to compare backends on identical noise), else standard normal draws from the
        rollout's generator (or from a fresh one seeded with `seed`), drawn on the backend's device.
        -> Trajectory(z, prior_mean, prior_std [B, H, S], h [B, H, D], reward, cont, value [B, H]); reward and
        cont are None for a model without heads, value for a model without a critic.

        `trusted=True` is the hot path of a caller that made its inputs itself and checks its outputs (the
        Planner): shapes and dtypes are still checked, but not the numbers (finiteness, the range of discrete
        actions: on a GPU, reading them waits for the device), and the Trajectory holds views of this Rollout's
        buffers instead of copies, valid until its next call with the same batch and horizon (from any thread)."""
        batch = validation.check_state(state, self.dims, self.max_batch, finite=False)
        horizon = validation.check_actions(
            actions, self.codec, batch, "actions", sequence=True, finite=False, values=not trusted
        )
        kind = "torch" if isinstance(actions, torch.Tensor) else "numpy"
        if not sample and (noise is not None or seed is not None):
            raise ValueError("noise and seed only apply with sample=True")
        if noise is not None:
            validation.check_noise(noise, batch, horizon, self.dims, finite=False)
        if not trusted:
            finite = {"state.h": state.h, "state.z": state.z, "noise": noise}
            if self.codec.mode == "continuous":  # discrete actions are integers, range-checked above
                finite["actions"] = actions
            validation.check_finite({name: x for name, x in finite.items() if x is not None})
        ops = self.ops
        with self._exclusive():
            ws = self._workspace(batch, horizon, frames=False)
            # Compiled first: a GPU backend's warm-up and capture run the loop on the buffers, which must not
            # hold this call's inputs yet (a sampling loop scales the noise in place).
            runner = self._runner(ws, sample)
            ops.write(ws.hs[0], state.h)
            ops.write(ws.zs[0], state.z)
            self._actions.write(ws.action, actions, swap01=True)
            if sample:
                if noise is not None:
                    ops.write(ws.noise, noise, swap01=True)
                else:
                    generator = self._generator if seed is None else torch.Generator(self.ops.device).manual_seed(seed)
                    ops.as_torch(ws.noise).normal_(generator=generator)
            runner()
            views = ws.trajectory
            heads = self.backend.has_heads

            def out(name: str):
                return views[name] if trusted and ops.kind == kind else ops.read(views[name], kind)

            return Trajectory(
                z=out("z"),
                h=out("h"),
                prior_mean=out("prior_mean" if sample else "z"),
                prior_std=out("prior_std"),
                reward=out("reward") if heads else None,
                cont=out("cont") if heads else None,
                value=out("value") if self.backend.has_value else None,
            )

    def policy(self, state: LatentState):
        """The actor's deterministic action in `state` (h [B, D], z [B, S]; a model trained with
        model.actor_critic): raw float32 [B, A] within the codec's bounds (continuous) or int64 [B] (discrete),
        numpy or torch as state.h. One forward pass of the `policy` graph."""
        kind = self._check_policy(state)
        batch = state.batch
        ops = self.ops
        with self._exclusive():
            ws = self._workspace(batch, 1, frames=False)
            ops.write(ws.hs[0], state.h)
            ops.write(ws.zs[0], state.z)
            self.backend.policy_into(ws)
            return self._raw_actions(ops.read(ws.policy_action, kind))

    def policy_plan(self, state: LatentState, horizon: int, *, trusted: bool = False):
        """The actor's open-loop plan from `state`: `horizon` steps, each the actor's action in the state the prior
        mean reaches under the actions before -> raw actions [B, H, A] (continuous) or int64 [B, H] (discrete),
        the kind of state.h. 2 x horizon small graph calls. `trusted`: the state is not checked for NaN (as
        imagine's)."""
        kind = self._check_policy(state, finite=not trusted)
        if horizon < 1:
            raise ValueError(f"policy_plan: horizon must be >= 1, got {horizon}")
        ops = self.ops
        actions = []
        with self._exclusive():
            ws = self._workspace(state.batch, 1, frames=False)
            ops.write(ws.hs[0], state.h)
            ops.write(ws.zs[0], state.z)
            for _ in range(horizon):
                self.backend.policy_into(ws)
                raw = self._raw_actions(ops.read(ws.policy_action, kind))
                actions.append(raw)
                self._actions.write(ws.actions[0], raw)
                self.backend.step_into(ws, 0)
                ops.copy(ws.hs[0], ws.hs[1])
                ops.copy(ws.zs[0], ws.zs[1])
        return torch.stack(actions, 1) if kind == "torch" else np.stack(actions, 1)

    def decode(self, z):
        """z [..., S] -> frames float32 [..., H, W, 3] in [0, 1] (needs the decoder in the artifacts)."""
        if not self.has_decoder:
            raise ValueError("decode: these artifacts have no decoder (exported with --no-decoder)")
        kind = validation.array_kind(z, "z")
        if z.ndim < 2:
            raise ValueError(f"z: expected shape [..., {self.dims.latent}], got {list(z.shape)}")
        lead = tuple(z.shape[:-1])
        flat = z.reshape(math.prod(lead), z.shape[-1])
        batch = validation.check_latents(flat, self.dims, self.max_batch)
        with self._exclusive():
            ws = self._workspace(batch, 1, frames=True)
            self.ops.write(ws.post_mean, flat)
            self.backend.decode_into(ws)
            frames = self.ops.read(ws.recon, kind)
        return frames.reshape(*lead, *self.dims.frame)

    def encode(self, obs):
        """One encoder call: uint8 [B, H, W, 3] -> posterior mean, std [B, S]."""
        kind = validation.array_kind(obs, "obs")
        batch = validation.check_frames(obs, self.dims, self.max_batch)
        with self._exclusive():
            ws = self._workspace(batch, 1, frames=True)
            self.ops.write(ws.obs, obs)
            self.backend.encode_into(ws)
            return self.ops.read(ws.post_mean, kind), self.ops.read(ws.post_std, kind)

    def prior_step(self, h, z, action):
        """One prior step: h [B, D], z [B, S], raw action [B, A] (or int [B]) -> h_next [B, D], prior mean,
        std [B, S]."""
        kind = validation.array_kind(h, "h")
        batch = validation.check_state(LatentState(h, z), self.dims, self.max_batch)
        validation.check_actions(action, self.codec, batch, "action", sequence=False)
        ops = self.ops
        with self._exclusive():
            ws = self._workspace(batch, 1, frames=False)
            ops.write(ws.hs[0], h)
            ops.write(ws.zs[0], z)
            self._actions.write(ws.actions[0], action)
            self.backend.step_into(ws, 0)
            return ops.read(ws.hs[1], kind), ops.read(ws.zs[1], kind), ops.read(ws.stds[0], kind)

    def warmup(self, batch: int, horizon: int, *, frames: bool = True) -> None:
        """Allocate the buffers of (batch, horizon) and run each path once on zeros, so the first real call
        pays for no allocation, lazy runtime setup or (on GPU) CUDA-graph capture."""
        validation.check_batch(batch, self.max_batch, "warmup")
        if horizon < 1:
            raise ValueError(f"warmup: horizon must be >= 1, got {horizon}")
        with self._exclusive():
            ws = self._workspace(batch, horizon, frames=False)
            for sample in (False, True):
                self._runner(ws, sample)()
            self._workspace(batch, 1, frames=False)
            if frames:
                frames_ws = self._workspace(batch, 1, frames=True)
                for initial in (True, False):
                    self._observe_runner(frames_ws, initial)()
                if self.backend.has_decoder:
                    self.backend.decode_into(frames_ws)

    # --- internals ----------------------------------------------------------------------------------------

    def _check_policy(self, state: LatentState, finite: bool = True) -> str:
        """-> the array kind of `state`, after checking that there is a policy and that the state fits it."""
        if not self.has_policy:
            raise ValueError("policy: this model has no actor (train it with `model: actor_critic: true`)")
        if not isinstance(state, LatentState):
            raise ValueError(f"policy: expected a LatentState, got {type(state).__name__}")
        kind = validation.array_kind(state.h, "state.h")
        validation.check_state(state, self.dims, self.max_batch, finite=finite)
        return kind

    def _raw_actions(self, encoded):
        """The policy's encoded actions [B, A] -> raw: continuous decoded with the codec (mean + std x code) and
        clipped into its bounds; discrete, the most probable action [B] (int64)."""
        codec = self.codec
        if codec.mode == "discrete":
            return encoded.argmax(-1)
        if isinstance(encoded, torch.Tensor):
            tensors = self._codec_tensors.get(encoded.device)
            if tensors is None:  # made once: a copy from the host inside a tick would break its CUDA graph
                stats = [codec.mean, codec.std] + ([codec.low, codec.high] if codec.low else [])
                tensors = self._codec_tensors[encoded.device] = [torch.tensor(x, device=encoded.device) for x in stats]
            mean, std, *bounds = tensors
            raw = encoded * std + mean
            if bounds:
                raw = torch.minimum(torch.maximum(raw, bounds[0]), bounds[1])
            return raw.float()
        raw = (encoded * np.asarray(codec.std, np.float32) + np.asarray(codec.mean, np.float32)).astype(np.float32)
        return codec.clip(raw)

    @contextlib.contextmanager
    def _exclusive(self):
        """One call at a time (workspaces, generator, TensorRT contexts are shared), in the backend's scope."""
        with self._lock, self.backend.scope():
            yield

    def _workspace(self, batch: int, steps: int, frames: bool) -> Workspace:
        key = (batch, steps, frames)
        ws = self._workspaces.get(key)
        if ws is None:
            ws = self._workspaces[key] = self.backend.workspace(batch, steps, frames)
            if len(self._workspaces) > self.max_workspaces:
                _, evicted = self._workspaces.popitem(last=False)
                # Its loops, compiled or not, refer back to it: clearing them frees its buffers now rather than
                # at the garbage collector's next full pass (which let memory grow with every shape seen).
                evicted.runners.clear()
                evicted.private.clear()
        else:
            self._workspaces.move_to_end(key)
        return ws

    def _runner(self, ws: Workspace, sample: bool):
        """The imagine loop of `ws`, compiled (on a GPU, a CUDA graph replay). Inside a caller's own capture (the
        planner's tick graph) the loop itself, so that its kernels join that graph."""
        runner = ws.runners.get(sample)
        if runner is None:
            # a backend may run the whole loop as one kernel (the torch backend's fused Triton rollout on CUDA)
            fused_loop = getattr(self.backend, "fused_loop", None)
            loop = fused_loop(ws, sample) if fused_loop is not None else None
            if loop is None:
                loop = functools.partial(imagine_loop, self.backend.step_into, self.ops, ws, sample)
            ws.private[("loop", sample)] = loop
            runner = ws.runners[sample] = self.backend.compile(loop, ws)
        return ws.private[("loop", sample)] if self._capturing() else runner

    def _observe_runner(self, ws: Workspace, initial: bool):
        """Encode the frame in `ws.obs` and, unless `initial`, take the prior step from ws.hs[0], ws.zs[0] under
        ws.actions[0]: compiled once per frames workspace (on a GPU, one CUDA graph replay per control tick)."""
        key = ("observe", initial)
        runner = ws.runners.get(key)
        if runner is None:
            backend = self.backend

            def observe() -> None:
                backend.encode_into(ws)
                if not initial:
                    backend.step_into(ws, 0)

            ws.private[key] = observe
            runner = ws.runners[key] = backend.compile(observe, ws)
        return ws.private[key] if self._capturing() else runner

    def _capturing(self) -> bool:
        """Whether the current CUDA stream is capturing a graph (the planner's tick graph)."""
        return self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
