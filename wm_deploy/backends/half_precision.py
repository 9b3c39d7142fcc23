"""The prior step in half precision (bfloat16 or float16) with the recurrent state carried in float32.

Dimensions: B batch, D GRU state (deter), S latent (stoch), A encoded action, K hidden width.

Every matrix product runs in half precision on half-precision weights; the GRU's gate arithmetic, the state
update h' = n + u * (h - n) and the prior's softplus run in float32 on float32 copies of the products. So h
itself is never rounded to 16 bits between steps: only its copy that enters the hidden-state product is. This
is PyTorch's GRUCell (torch.nn.GRUCell's equations, gates ordered reset, update, new) written out so that the
precision of each part can be chosen.

On CUDA the gate products come out of the half-precision matmul as float32 (`out_dtype`, where this torch
has it) and the gate arithmetic is torch's own fused GRU-cell kernel: a dozen elementwise kernels fewer per
step, which is most of a step's time at large batches.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from wm_core.graphs import state_outputs
from wm_core.model import RSSM, Critic, Heads, gaussian_params


class HalfPrecisionPriorStep(nn.Module):
    """h [B, D], z [B, S], encoded action [B, A], all float32 -> h_next [B, D], prior mean, std [B, S] float32;
    with heads also reward, cont [B] float32, with a critic also value [B] (the heads and the critic run in float32:
    small MLPs, a sliver of a step)."""

    # the half-precision weights, registered as buffers
    input_w: torch.Tensor
    input_b: torch.Tensor
    w_ih: torch.Tensor
    b_ih: torch.Tensor
    w_hh: torch.Tensor
    b_hh: torch.Tensor
    head1_w: torch.Tensor
    head1_b: torch.Tensor
    head2_w: torch.Tensor
    head2_b: torch.Tensor

    def __init__(self, rssm: RSSM, dtype: torch.dtype, heads: Heads | None = None, critic: Critic | None = None):
        super().__init__()
        self.dtype = dtype
        self.heads = heads
        self.critic = critic
        self.min_std = rssm.min_std
        input_linear, gru, head = rssm.input_layer[0], rssm.gru, rssm.prior_head
        assert isinstance(input_linear, nn.Linear) and isinstance(head[0], nn.Linear) and isinstance(head[2], nn.Linear)
        weights = {
            "input_w": input_linear.weight,  # [K, S + A]
            "input_b": input_linear.bias,
            "w_ih": gru.weight_ih,  # [3D, K]
            "b_ih": gru.bias_ih,
            "w_hh": gru.weight_hh,  # [3D, D]
            "b_hh": gru.bias_hh,
            "head1_w": head[0].weight,  # [K, D]
            "head1_b": head[0].bias,
            "head2_w": head[2].weight,  # [2S, K]
            "head2_b": head[2].bias,
        }
        for name, weight in weights.items():
            self.register_buffer(name, weight.detach().to(dtype).clone())
        # float32 copies of the gate biases for the fused CUDA kernel, which adds them in float32
        self.register_buffer("b_ih32", gru.bias_ih.detach().float().clone())
        self.register_buffer("b_hh32", gru.bias_hh.detach().float().clone())

    def forward(self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor):
        half = self.dtype
        x = F.silu(F.linear(torch.cat([z, action], dim=-1).to(half), self.input_w, self.input_b))  # [B, K]
        if h.is_cuda:
            gates_x = _mm_float32(x, self.w_ih)  # [B, 3D]
            gates_h = _mm_float32(h.to(half), self.w_hh)  # [B, 3D]
            h_next = torch.ops.aten._thnn_fused_gru_cell(gates_x, gates_h, h, self.b_ih32, self.b_hh32)[0]
        else:
            gates_x = F.linear(x, self.w_ih, self.b_ih).float()  # [B, 3D]
            gates_h = F.linear(h.to(half), self.w_hh, self.b_hh).float()  # [B, 3D]
            x_r, x_u, x_n = gates_x.chunk(3, dim=-1)
            h_r, h_u, h_n = gates_h.chunk(3, dim=-1)
            reset = torch.sigmoid(x_r + h_r)
            update = torch.sigmoid(x_u + h_u)
            new = torch.tanh(x_n + reset * h_n)
            h_next = new + update * (h - new)  # (1 - u) * n + u * h, in float32
        hidden = F.silu(F.linear(h_next.to(half), self.head1_w, self.head1_b))
        raw = F.linear(hidden, self.head2_w, self.head2_b).float()  # [B, 2S]
        prior_mean, prior_std = gaussian_params(raw, self.min_std)
        return (h_next, prior_mean, prior_std, *state_outputs(h_next, prior_mean, self.heads, self.critic))


def _mm_float32(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T of half-precision operands, accumulated and returned in float32 (biases added later)."""
    if _has_out_dtype():
        return torch.mm(x, weight.t(), out_dtype=torch.float32)
    return torch.mm(x, weight.t()).float()  # rounded to half once, then widened


@functools.cache
def _has_out_dtype() -> bool:
    """Whether this torch's mm takes `out_dtype` (asked once, on shape-only meta tensors)."""
    meta = torch.empty(1, 1, dtype=torch.bfloat16, device="meta")
    try:
        torch.mm(meta, meta, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        return False
    return True
