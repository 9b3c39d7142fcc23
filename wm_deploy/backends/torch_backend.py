"""The reference backend: the world model itself, in PyTorch, on CPU or CUDA.

On CUDA the whole H-step imagine loop of a (batch, horizon) bucket is captured in a CUDA graph, so a call costs
one graph launch instead of a few kernel launches per step.
"""

from __future__ import annotations

import torch

from wm_core.graphs import build_graphs
from wm_core.model import WorldModel

from .base import Dims, TorchOps, Workspace, capture_cuda_graph


class TorchBackend:
    name = "torch"

    def __init__(self, model: WorldModel, device: torch.device, max_batch: int, cuda_graphs: bool = True):
        self.device = device
        self.model = model.to(device).eval().requires_grad_(False)
        cfg = model.cfg
        self.dims = Dims(cfg.deter_dim, cfg.latent_dim, cfg.action_dim, (cfg.frame_size, cfg.frame_size, 3))
        self.ops = TorchOps(device)
        self.max_batch = max_batch
        self.has_decoder = True
        # The wrappers wm_export exports, so that every backend computes the same function (uint8 NHWC in, ...).
        graphs = build_graphs(self.model)
        self.encoder, self.prior_step, self.decoder = graphs["encoder"], graphs["prior_step"], graphs["decoder"]
        self.capture = cuda_graphs and device.type == "cuda"
        self.detail = f"PyTorch {torch.__version__} on {device}" + (", CUDA graphs" if self.capture else ", eager")

    def workspace(self, batch: int, steps: int, frames: bool) -> Workspace:
        return Workspace.allocate(self.ops, self.dims, batch, steps, frames)

    def encode_into(self, ws: Workspace) -> None:
        mean, std = self.encoder(ws.obs)
        ws.post_mean.copy_(mean)
        ws.post_std.copy_(std)

    def step_into(self, ws: Workspace, t: int) -> None:
        h_next, mean, std = self.prior_step(ws.hs[t], ws.zs[t], ws.actions[t])
        ws.hs[t + 1].copy_(h_next)
        ws.zs[t + 1].copy_(mean)
        ws.stds[t].copy_(std)

    def decode_into(self, ws: Workspace) -> None:
        ws.recon.copy_(self.decoder(ws.post_mean))

    def compile(self, loop, ws: Workspace):
        return capture_cuda_graph(loop, self.device) if self.capture else loop

    def scope(self):
        return torch.no_grad()
