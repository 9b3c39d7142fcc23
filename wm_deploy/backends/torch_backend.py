"""The reference backend: the world model itself, in PyTorch, on CPU or CUDA.

On CUDA the whole H-step imagine loop of a (batch, horizon) bucket is captured in a CUDA graph, so a call costs
one graph launch instead of a few kernel launches per step.

Precision (`PRECISIONS`): `fp32` computes in float32 with TF32 off, so that CUDA agrees with the CPU
reference to the export gate's 1e-4; `tf32` lets matmuls and convolutions round their inputs to TF32 (an
explicit opt-in, with its own tolerance); `bf16` and `fp16` run the matrix products on half-precision weights
while the recurrent state stays float32 (backends/half_precision.py), for the 1e-2 tolerance of TensorRT fp16.

`fused=True` (opt-in, CUDA, fp32) runs the imagine loop as one Triton kernel launch where the model allows it
(backends/fused_rollout.py, the `kernels` extra); `detail` says which loop runs, and why not the fused one.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Callable

import torch

from wm_core.graphs import HalfPrecisionGraph, build_graphs
from wm_core.model import WorldModel

from .base import ArrayOps, Dims, TorchOps, Workspace, capture_cuda_graph
from .half_precision import HalfPrecisionPriorStep

if TYPE_CHECKING:
    from .fused_rollout import FusedRollout

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
FUSED_TOLERANCE = 1e-4
"""the fused rollout's largest difference from the torch loop (the export parity gate's fp32 tolerance)"""
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        model: WorldModel,
        device: torch.device,
        max_batch: int,
        cuda_graphs: bool = True,
        precision: str = "fp32",
        fused: bool = False,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.device = device
        self.precision = precision
        self.model = model.to(device).eval().requires_grad_(False)
        cfg = model.cfg
        self.dims = Dims(cfg.deter_dim, cfg.latent_dim, cfg.action_dim, (cfg.frame_size, cfg.frame_size, 3))
        self.ops: ArrayOps = TorchOps(device)
        self.max_batch = max_batch
        self.has_decoder = True
        self.has_heads = self.model.heads is not None
        self.has_value = self.model.critic is not None
        self.has_policy = self.model.actor is not None
        # The wrappers wm_export exports, so that every backend computes the same function (uint8 NHWC in, ...).
        graphs = build_graphs(self.model)
        self.encoder, self.prior_step, self.decoder = graphs["encoder"], graphs["prior_step"], graphs["decoder"]
        self.policy = graphs.get("policy")
        if precision in HALF:
            dtype = HALF[precision]
            self.encoder = HalfPrecisionGraph(self.encoder, dtype)
            self.decoder = HalfPrecisionGraph(self.decoder, dtype)
            half_step = HalfPrecisionPriorStep(self.model.rssm, dtype, self.model.heads, self.model.critic)
            self.prior_step = half_step.to(device)
        self.capture = cuda_graphs and device.type == "cuda"
        self.fused: FusedRollout | None = None
        reason = self._fused_reason(fused)
        if reason is None:
            from .fused_rollout import FusedRollout

            self.fused = FusedRollout(self.model, device)
        self._detail = f"PyTorch {torch.__version__} on {device}, {precision}" + (
            ", CUDA graphs" if self.capture else ", eager"
        )
        self.detail = self._detail + (
            ", fused Triton rollout" if reason is None else f", torch loop (fused rollout: {reason})"
        )

    def _fused_reason(self, fused: bool) -> str | None:
        """None when the imagine loop runs as the fused Triton kernel, else why it does not."""
        if not fused:
            return "turned off"
        if self.precision != "fp32":
            return f"fp32 only, not {self.precision}"
        if self.device.type != "cuda":  # said before importing the kernel module, which imports Triton
            return f"needs CUDA, not {self.device.type}"
        from .fused_rollout import fused_support

        return fused_support(self.model, self.device)

    def workspace(self, batch: int, steps: int, frames: bool) -> Workspace:
        return Workspace.allocate(self.ops, self.dims, batch, steps, frames)

    def encode_into(self, ws: Workspace) -> None:
        mean, std = self.encoder(ws.obs)
        ws.post_mean.copy_(mean)
        ws.post_std.copy_(std)

    def step_into(self, ws: Workspace, t: int) -> None:
        outputs = self.prior_step(ws.hs[t], ws.zs[t], ws.actions[t])
        ws.hs[t + 1].copy_(outputs[0])
        ws.zs[t + 1].copy_(outputs[1])
        ws.stds[t].copy_(outputs[2])
        if self.has_heads:
            ws.rewards[t].copy_(outputs[3])
            ws.conts[t].copy_(outputs[4])
        if self.has_value:
            ws.values[t].copy_(outputs[5])

    def policy_into(self, ws: Workspace) -> None:
        assert self.policy is not None, "policy_into: the model has no actor"
        ws.policy_action.copy_(self.policy(ws.hs[0], ws.zs[0]))

    def decode_into(self, ws: Workspace) -> None:
        ws.recon.copy_(self.decoder(ws.post_mean))

    def fused_loop(self, ws: Workspace, sample: bool) -> Callable[[], None] | None:
        """The imagine loop of `ws` as one fused kernel launch, or None where the torch loop runs. Checked here,
        once per workspace and outside any CUDA graph capture (the buffers hold no call's inputs yet), against
        the torch loop on random inputs: where it fails to build or differs by more than FUSED_TOLERANCE, a
        warning and the torch loop from then on."""
        if self.fused is None:
            return None
        loop = self.fused.loop(ws, sample)
        try:
            error = self._fused_error(ws, sample, loop)
            failure = None if error <= FUSED_TOLERANCE else f"differs from the torch loop by {error:.2g}"
        except Exception as exception:
            failure = f"{type(exception).__name__}: {(str(exception).strip().splitlines() or [''])[0]}"
        if failure is None:
            return loop
        warnings.warn(f"the fused Triton rollout {failure}; running the torch loop", RuntimeWarning, 2)
        self.fused = None
        self.detail = self._detail + f", torch loop (fused rollout: {failure})"
        return None

    def _fused_error(self, ws: Workspace, sample: bool, loop: Callable[[], None]) -> float:
        """The largest absolute difference between the torch loop and `loop` over every output of `ws`, from
        the same random inputs."""
        from ..rollout import imagine_loop  # the loop Rollout runs otherwise

        generator = torch.Generator(self.device).manual_seed(0)
        inputs = [ws.h[0], ws.z[0], ws.action, ws.noise]
        for x in inputs:
            x.normal_(generator=generator)
        saved = [x.clone() for x in inputs]
        imagine_loop(self.step_into, self.ops, ws, sample)  # consumes the noise
        reference = {name: view.clone() for name, view in ws.trajectory.items()}
        for x, value in zip(inputs, saved):
            x.copy_(value)
        loop()
        return max(float((ws.trajectory[name] - ref).abs().max()) for name, ref in reference.items())

    def compile(self, loop, ws: Workspace):
        return capture_cuda_graph(loop, self.device) if self.capture else loop

    def scope(self):
        if self.device.type != "cuda":
            return torch.no_grad()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(torch.cuda.device(self.device))
        stack.enter_context(float32_matmul("tf32" if self.precision == "tf32" else "ieee"))
        return stack


@contextlib.contextmanager
def float32_matmul(mode: str):
    """Float32 matmuls and convolutions on CUDA in `mode` (`ieee`: exact float32; `tf32`) inside the block,
    the caller's setting restored after. torch leaves TF32 on for cuDNN convolutions by default, which alone
    puts the encoder ~1e-3 away from the CPU reference."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    knobs: list[tuple[object, str, str | bool]]
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9; mixing it with allow_tf32 is refused there
        # torch replaces the cudnn module with a CudnnModule object; its module stub does not declare `conv`
        knobs = [(matmul, "fp32_precision", mode), (conv.conv, "fp32_precision", mode)]  # type: ignore[attr-defined]
    else:
        knobs = [(matmul, "allow_tf32", mode == "tf32"), (conv, "allow_tf32", mode == "tf32")]
    saved = [getattr(owner, name) for owner, name, _ in knobs]
    for owner, name, value in knobs:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(knobs, saved):
            setattr(owner, name, value)
