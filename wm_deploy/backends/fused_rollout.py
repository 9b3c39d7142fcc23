"""The whole imagine loop of the torch backend in one Triton kernel launch (CUDA, float32).

Dimensions: B batch, T steps, D GRU state (deter), S latent (stoch), A encoded action, K hidden width; a trailing
P (DP, SP, AP, KP) is the size padded up to a power of two of at least 16, what `tl.arange` and `tl.dot` take.

One launch runs all T prior steps of `imagine_loop`: the RSSM's input layer, GRU cell and prior MLP, the draw
z = mean + std * noise from the supplied noise, and the reward, continuation and value heads of the new state,
reading and writing the same `Workspace` buffers that `TorchBackend.step_into` does, so that the rollout, its
copies out and CUDA graph capture are unchanged. Each program owns a block of rows for the whole horizon; the
weights stream from L2 in [BK, BN] tiles, and the activations a layer reads in full (h, z, the hidden layers) go
through global memory (the workspace, or a per-workspace scratch [rows, KP]) with a block barrier between the
layer that writes them and the one that reads them. Matmuls are IEEE float32 dots (`input_precision="ieee"`):
the parity CI can check without a GPU is through Triton's interpreter, which computes every dot in float32
whatever precision is asked for, so a faster TF32 or 3xTF32 variant would go unchecked there.

The weights are packed once, when the backend is built (as the half-precision step copies them): a model changed
in place afterwards needs a new backend. `fused_support` says which models and devices the kernel takes; the
torch loop runs everything else (the tiny preset: S = 8 is under tl.dot's 16-wide minimum).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from wm_core.model import WorldModel

from .base import Workspace

try:
    import triton
    import triton.language as tl
except ImportError:  # the `kernels` extra is not installed: fused_support says so and the torch loop runs
    triton = None

MIN_WIDTH = 16
"""tl.dot's smallest dimension: S, D and K must be at least this"""
# Tile sizes and launch options: float32 IEEE dots run on FMA units, whose operands sit in registers; these keep
# the kernel within sm_90's 255 registers a thread without spilling (tests/test_fused_rollout.py checks the build).
BLOCK_N = 32
"""output columns of a layer computed at once (16 where D or K pads to 16)"""
BLOCK_K = MIN_WIDTH
"""input columns summed per tl.dot"""
MAX_ROWS = 32
"""rows per program at most"""
NUM_WARPS = 8
NUM_STAGES = 1
"""no software pipelining: the loads it would prefetch cost registers, and the weights come from L2 anyway"""


def fused_support(model: WorldModel, device: torch.device) -> str | None:
    """None when the fused kernel can run `model`'s imagine loop on `device`, else why not (one line)."""
    if triton is None:
        return 'Triton is not installed (pip install ".[kernels]")'
    if device.type != "cuda":
        return f"needs CUDA, not {device.type}"
    return shape_support(model)


def shape_support(model: WorldModel) -> str | None:
    """None when the kernel takes the model's sizes and parameters, else why not."""
    cfg = model.cfg
    for name, size in (("latent_dim", cfg.latent_dim), ("deter_dim", cfg.deter_dim), ("hidden_dim", cfg.hidden_dim)):
        if size < MIN_WIDTH:
            return f"model.{name} = {size} is under tl.dot's minimum of {MIN_WIDTH}"
    parts = [part for part in (model.rssm, model.heads, model.critic) if part is not None]
    dtypes = {p.dtype for part in parts for p in part.parameters()}
    if dtypes != {torch.float32}:
        return f"the kernel computes with float32 weights, the model's are {sorted(map(str, dtypes))}"
    return None


def padded(size: int) -> int:
    return max(MIN_WIDTH, triton.next_power_of_2(size))


def rows_per_program(batch: int) -> int:
    """16 rows (tl.dot's minimum) up to B = 2048, then 32, so that about one wave of programs covers a large B
    (every program reads all the weights every step)."""
    return min(MAX_ROWS, max(MIN_WIDTH, triton.next_power_of_2(-(-batch // 128))))


class FusedRollout:
    """The fused imagine loop of one model: its weights packed once on `device`, `loop(ws, sample)` a launch."""

    def __init__(self, model: WorldModel, device: torch.device):
        if triton is None:
            raise ImportError('the fused rollout needs Triton: pip install ".[kernels]"')
        reason = shape_support(model)
        if reason is not None:
            raise ValueError(f"the fused rollout cannot run this model: {reason}")
        cfg = model.cfg
        self.sizes = dict(S=cfg.latent_dim, A=cfg.action_dim, D=cfg.deter_dim)
        self.padded = {f"{name}P": padded(size) for name, size in (*self.sizes.items(), ("K", cfg.hidden_dim))}
        self.min_std = float(model.rssm.min_std)
        self.heads = model.heads is not None
        self.value = model.critic is not None
        with torch.no_grad():
            self.weights = {
                name: w.to(device=device, dtype=torch.float32).contiguous() for name, w in self._pack(model)
            }
        self.device = self.weights["in_z"].device  # "cuda" resolved to "cuda:N", as the workspace's tensors say

    def _pack(self, model: WorldModel) -> list[tuple[str, torch.Tensor]]:
        """Every weight as the kernel reads it: transposed to [in, out] (so that a layer is x @ W) and zero-padded
        to the padded sizes, so that padded inputs add nothing and padded outputs are never stored."""
        S, D = self.sizes["S"], self.sizes["D"]
        SP, AP, DP, KP = (self.padded[k] for k in ("SP", "AP", "DP", "KP"))
        rssm = model.rssm
        input_layer, prior1, prior2 = (
            linear(rssm.input_layer, 0),
            linear(rssm.prior_head, 0),
            linear(rssm.prior_head, 2),
        )
        gru = rssm.gru
        w_in = input_layer.weight.t()  # [S + A, K]
        packed = [
            ("in_z", fit(w_in[:S], SP, KP)),
            ("in_a", fit(w_in[S:], AP, KP)),
            ("in_b", fit(input_layer.bias, KP)),
            # GRU gates (reset, update, new), each padded to DP columns: [K, 3 DP] and [D, 3 DP]
            ("gru_x", torch.cat([fit(w.t(), KP, DP) for w in gru.weight_ih.chunk(3)], 1)),
            ("gru_h", torch.cat([fit(w.t(), DP, DP) for w in gru.weight_hh.chunk(3)], 1)),
            ("gru_bx", torch.cat([fit(b, DP) for b in gru.bias_ih.chunk(3)])),
            ("gru_bh", torch.cat([fit(b, DP) for b in gru.bias_hh.chunk(3)])),
            ("prior1", fit(prior1.weight.t(), DP, KP)),
            ("prior1_b", fit(prior1.bias, KP)),
            # mean columns, then std columns: [K, 2 SP]
            ("prior2", torch.cat([fit(w.t(), KP, SP) for w in prior2.weight.chunk(2)], 1)),
            ("prior2_b", torch.cat([fit(b, SP) for b in prior2.bias.chunk(2)])),
        ]
        unused = torch.zeros(1)
        if model.heads is not None:
            # reward then continuation hidden units: [D + S, 2 KP] as rows h (DP), then z (SP)
            first = [linear(model.heads.reward, 0), linear(model.heads.cont, 0)]
            second = [linear(model.heads.reward, 2), linear(model.heads.cont, 2)]
            packed += [
                ("head1", torch.cat([features_first(layer, D, DP, SP, KP) for layer in first], 1)),
                ("head1_b", torch.cat([fit(layer.bias, KP) for layer in first])),
                ("head2", torch.cat([fit(layer.weight[0], KP) for layer in second])),
                ("head2_b", torch.cat([layer.bias for layer in second])),
            ]
        else:
            packed += [(name, unused) for name in ("head1", "head1_b", "head2", "head2_b")]
        if model.critic is not None:
            layers = [linear(model.critic.net, i) for i in (0, 2, 4)]
            packed += [
                ("critic1", features_first(layers[0], D, DP, SP, KP)),
                ("critic1_b", fit(layers[0].bias, KP)),
                ("critic2", fit(layers[1].weight.t(), KP, KP)),
                ("critic2_b", fit(layers[1].bias, KP)),
                ("critic3", fit(layers[2].weight[0], KP)),
                ("critic3_b", layers[2].bias),
            ]
        else:
            packed += [
                (name, unused) for name in ("critic1", "critic1_b", "critic2", "critic2_b", "critic3", "critic3_b")
            ]
        return packed

    def constants(self, batch: int, sample: bool) -> dict[str, Any]:
        """The kernel's compile-time arguments for `batch` rows."""
        return dict(
            **self.sizes,
            **self.padded,
            SAMPLE=sample,
            HEADS=self.heads,
            VALUE=self.value,
            BLOCK_B=rows_per_program(batch),
            BLOCK_N=min(BLOCK_N, self.padded["DP"], self.padded["KP"]),
            BLOCK_K=BLOCK_K,
        )

    def loop(self, ws: Workspace, sample: bool) -> Callable[[], None]:
        """A callable that runs the ws.steps prior steps of `imagine_loop(..., ws, sample)` in one launch: it reads
        ws.h[0], ws.z[0], ws.action (encoded) and with `sample` ws.noise (left as it is, not consumed), and writes
        ws.h[1:], ws.z[1:], ws.prior_std, with `sample` ws.prior_mean, with heads ws.reward and ws.cont, with a
        critic ws.value."""
        buffers = [ws.h, ws.z, ws.prior_mean, ws.prior_std, ws.action, ws.noise, ws.reward, ws.cont, ws.value]
        assert all(b.is_contiguous() and b.device == self.device for b in buffers), "a torch workspace on the device"
        constants = self.constants(ws.batch, sample)
        programs = -(-ws.batch // constants["BLOCK_B"])
        # one scratch per workspace (both loops of a bucket share it: calls run one at a time)
        scratch = ws.private.get("fused_scratch")
        if scratch is None:
            shape = (programs * constants["BLOCK_B"], self.padded["KP"])
            scratch = ws.private["fused_scratch"] = torch.zeros(shape, device=self.device)
        arguments = dict(**self.weights, B=ws.batch, T=ws.steps, min_std=self.min_std, **constants)

        def launch() -> None:
            _rollout_kernel[(programs,)](*buffers, scratch, **arguments, num_warps=NUM_WARPS, num_stages=NUM_STAGES)

        return launch

    def build(self, target: Any, batch: int, sample: bool) -> Any:
        """The kernel compiled ahead of time for `target` (a triton GPUTarget), without a GPU: its `.asm` holds the
        PTX and the cubin. What CI uses to check that the kernel builds for a GPU it does not have."""
        constants = self.constants(batch, sample)
        scalars = {"B": "i32", "T": "i32", "min_std": "fp32"}
        signature = {
            name: "constexpr" if name in constants else scalars.get(name, "*fp32") for name in _rollout_kernel.arg_names
        }
        source = triton.compiler.ASTSource(fn=_rollout_kernel, signature=signature, constexprs=constants)
        return triton.compile(source, target=target, options={"num_warps": NUM_WARPS, "num_stages": NUM_STAGES})


def fit(weight: torch.Tensor, *shape: int) -> torch.Tensor:
    """`weight` in the top-left corner of zeros of `shape` (same rank)."""
    out = weight.new_zeros(shape)
    out[tuple(slice(0, n) for n in weight.shape)] = weight
    return out


def linear(layers: nn.Sequential, index: int) -> nn.Linear:
    layer = layers[index]
    assert isinstance(layer, nn.Linear), f"layer {index} of {layers}"
    return layer


def features_first(layer: nn.Linear, D: int, DP: int, SP: int, KP: int) -> torch.Tensor:
    """The first layer of a head on the features [h, z] ([K, D + S]) as [DP + SP, KP]: the h rows, then the z rows."""
    weight = layer.weight.t()  # [D + S, K]
    return torch.cat([fit(weight[:D], DP, KP), fit(weight[D:], SP, KP)])


if triton is not None:

    @triton.jit
    def _silu(x):
        return x * tl.sigmoid(x)

    @triton.jit
    def _tanh(x):
        e = tl.exp(-2.0 * tl.abs(x))  # in (0, 1]: no overflow for large |x|
        y = (1.0 - e) / (1.0 + e)
        return tl.where(x >= 0, y, -y)

    @triton.jit
    def _softplus(x):
        return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))

    @triton.jit
    def _tile(ptr, rows, row_ok, k0, WIDTH: tl.constexpr, BLOCK_K: tl.constexpr):
        """Columns k0 .. k0 + BK of `rows` of a row-major [rows, WIDTH] buffer, zeros outside it: [BB, BK]."""
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] & (cols < WIDTH)[None, :]
        return tl.load(ptr + rows[:, None] * WIDTH + cols[None, :], mask=mask, other=0.0)

    @triton.jit
    def _store(ptr, rows, row_ok, n0, value, WIDTH: tl.constexpr, BLOCK_N: tl.constexpr):
        """value [BB, BN] into columns n0 .. n0 + BN of `rows` of a row-major [rows, WIDTH] buffer, inside it."""
        cols = n0 + tl.arange(0, BLOCK_N)
        mask = row_ok[:, None] & (cols < WIDTH)[None, :]
        tl.store(ptr + rows[:, None] * WIDTH + cols[None, :], value, mask=mask)

    @triton.jit
    def _weights(ptr, k0, n0, COLS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
        """The [BK, BN] tile at (k0, n0) of a packed [in, COLS] weight."""
        k = k0 + tl.arange(0, BLOCK_K)
        n = n0 + tl.arange(0, BLOCK_N)
        return tl.load(ptr + k[:, None] * COLS + n[None, :])

    @triton.jit
    def _row(ptr, n0, BLOCK_N: tl.constexpr):
        """Entries n0 .. n0 + BN of a packed vector (a bias, a layer's weights into one output) as a row [1, BN]."""
        return tl.load(ptr + n0 + tl.arange(0, BLOCK_N))[None, :]

    @triton.jit
    def _matmul(
        acc, x_ptr, rows, row_ok, w_ptr, n0, WIDTH: tl.constexpr, IN: tl.constexpr, COLS: tl.constexpr,
        BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        """acc + x @ W[:, n0 : n0 + BN]: x [rows, WIDTH] read from memory one K tile at a time, W a packed [IN, COLS]
        weight (IN: WIDTH padded)."""
        for k0 in range(0, IN, BLOCK_K):
            x = _tile(x_ptr, rows, row_ok, k0, WIDTH, BLOCK_K)
            acc = tl.dot(x, _weights(w_ptr, k0, n0, COLS, BLOCK_K, BLOCK_N), acc, input_precision="ieee")
        return acc

    @triton.jit
    def _features_matmul(
        h_ptr, mean, rows, row_ok, w_ptr, n0, D: tl.constexpr, DP: tl.constexpr, SP: tl.constexpr,
        COLS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        """[h, mean] @ W[:, n0 : n0 + BN] for a head's first layer, W packed [DP + SP, COLS] (features_first): h read
        from memory, the prior mean [BB, SP] held in registers."""
        acc = tl.dot(mean, _weights(w_ptr + DP * COLS, 0, n0, COLS, SP, BLOCK_N), input_precision="ieee")
        return _matmul(acc, h_ptr, rows, row_ok, w_ptr, n0, D, DP, COLS, BLOCK_K, BLOCK_N)

    @triton.jit
    def _gate(
        x_ptr, h_ptr, rows, row_ok, gru_x, gru_h, gru_bx, gru_bh, col, D: tl.constexpr, DP: tl.constexpr,
        KP: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        """Columns col .. col + BN of the GRU's input and hidden products with their biases, (x W_ih^T + b_ih,
        h W_hh^T + b_hh): [BB, BN] each."""
        zeros = tl.zeros((rows.shape[0], BLOCK_N), dtype=tl.float32)
        from_x = _matmul(zeros, x_ptr, rows, row_ok, gru_x, col, KP, KP, 3 * DP, BLOCK_K, BLOCK_N)
        from_h = _matmul(zeros, h_ptr, rows, row_ok, gru_h, col, D, DP, 3 * DP, BLOCK_K, BLOCK_N)
        return from_x + _row(gru_bx, col, BLOCK_N), from_h + _row(gru_bh, col, BLOCK_N)

    @triton.jit
    def _rollout_kernel(
        h_ptr,  # [T + 1, B, D]
        z_ptr,  # [T + 1, B, S]
        mean_ptr,  # [T, B, S]
        std_ptr,  # [T, B, S]
        action_ptr,  # [T, B, A]
        noise_ptr,  # [T, B, S]
        reward_ptr,  # [T, B]
        cont_ptr,  # [T, B]
        value_ptr,  # [T, B]
        scratch_ptr,  # [programs * BLOCK_B, KP]
        in_z, in_a, in_b, gru_x, gru_h, gru_bx, gru_bh, prior1, prior1_b, prior2, prior2_b,
        head1, head1_b, head2, head2_b, critic1, critic1_b, critic2, critic2_b, critic3, critic3_b,
        B, T, min_std,
        S: tl.constexpr, A: tl.constexpr, D: tl.constexpr,
        SP: tl.constexpr, AP: tl.constexpr, DP: tl.constexpr, KP: tl.constexpr,
        SAMPLE: tl.constexpr, HEADS: tl.constexpr, VALUE: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """Rows BLOCK_B * program .. of every workspace buffer, for all T steps. The scratch holds one layer's
        output [BB, KP] at a time (the input layer's, the prior's hidden layer, the critic's first); each
        tl.debug_barrier orders one layer's writes to memory before the next layer's reads by the other threads
        of the block, or its reads before the next writes."""
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        row_ok = rows < B
        s_cols = tl.arange(0, SP)
        s_mask = row_ok[:, None] & (s_cols < S)[None, :]
        s_offsets = rows[:, None] * S + s_cols[None, :]
        for _t in range(T):
            # this step's slices; the pointers move on by one step at its end (64-bit, whatever T * B * D)
            h_next_ptr = h_ptr + B * D
            z_next_ptr = z_ptr + B * S
            tl.debug_barrier()
            # input layer: silu([z, a] W + b) -> scratch
            action = _tile(action_ptr, rows, row_ok, 0, A, AP)
            for n0 in range(0, KP, BLOCK_N):
                acc = tl.dot(action, _weights(in_a, 0, n0, KP, AP, BLOCK_N), input_precision="ieee")
                acc = _matmul(acc, z_ptr, rows, row_ok, in_z, n0, S, SP, KP, BLOCK_K, BLOCK_N)
                _store(scratch_ptr, rows, row_ok, n0, _silu(acc + _row(in_b, n0, BLOCK_N)), KP, BLOCK_N)
            tl.debug_barrier()
            # GRU cell, as torch.nn.GRUCell (gates reset, update, new) -> h[t + 1]
            for n0 in range(0, DP, BLOCK_N):
                x_r, h_r = _gate(scratch_ptr, h_ptr, rows, row_ok, gru_x, gru_h, gru_bx, gru_bh, n0, D, DP, KP,
                                 BLOCK_K, BLOCK_N)  # fmt: skip
                x_u, h_u = _gate(scratch_ptr, h_ptr, rows, row_ok, gru_x, gru_h, gru_bx, gru_bh, DP + n0, D, DP, KP,
                                 BLOCK_K, BLOCK_N)  # fmt: skip
                x_n, h_n = _gate(scratch_ptr, h_ptr, rows, row_ok, gru_x, gru_h, gru_bx, gru_bh, 2 * DP + n0, D, DP,
                                 KP, BLOCK_K, BLOCK_N)  # fmt: skip
                reset = tl.sigmoid(x_r + h_r)
                update = tl.sigmoid(x_u + h_u)
                new = _tanh(x_n + reset * h_n)
                h = _tile(h_ptr, rows, row_ok, n0, D, BLOCK_N)
                _store(h_next_ptr, rows, row_ok, n0, new + update * (h - new), D, BLOCK_N)  # (1 - u) n + u h
            tl.debug_barrier()
            # prior: hidden silu(h_next W1 + b1) -> scratch, then mean and std [BB, SP] in registers
            for n0 in range(0, KP, BLOCK_N):
                acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
                acc = _matmul(acc, h_next_ptr, rows, row_ok, prior1, n0, D, DP, KP, BLOCK_K, BLOCK_N)
                _store(scratch_ptr, rows, row_ok, n0, _silu(acc + _row(prior1_b, n0, BLOCK_N)), KP, BLOCK_N)
            tl.debug_barrier()
            mean = tl.zeros((BLOCK_B, SP), dtype=tl.float32)
            mean = _matmul(mean, scratch_ptr, rows, row_ok, prior2, 0, KP, KP, 2 * SP, BLOCK_K, SP)
            mean += _row(prior2_b, 0, SP)
            raw_std = tl.zeros((BLOCK_B, SP), dtype=tl.float32)
            raw_std = _matmul(raw_std, scratch_ptr, rows, row_ok, prior2, SP, KP, KP, 2 * SP, BLOCK_K, SP)
            std = _softplus(raw_std + _row(prior2_b, SP, SP)) + min_std
            tl.store(std_ptr + s_offsets, std, mask=s_mask)
            if SAMPLE:
                noise = tl.load(noise_ptr + s_offsets, mask=s_mask, other=0.0)
                tl.store(mean_ptr + s_offsets, mean, mask=s_mask)
                tl.store(z_next_ptr + s_offsets, mean + std * noise, mask=s_mask)
            else:
                tl.store(z_next_ptr + s_offsets, mean, mask=s_mask)
            # the heads read the state [h_next, prior mean] (not the draw), as PriorStepGraph does
            if HEADS:
                reward = tl.zeros((BLOCK_B,), dtype=tl.float32)
                cont = tl.zeros((BLOCK_B,), dtype=tl.float32)
                for n0 in range(0, KP, BLOCK_N):
                    acc = _features_matmul(h_next_ptr, mean, rows, row_ok, head1, n0, D, DP, SP, 2 * KP, BLOCK_K,
                                           BLOCK_N)  # fmt: skip
                    hidden = _silu(acc + _row(head1_b, n0, BLOCK_N))
                    reward += tl.sum(hidden * _row(head2, n0, BLOCK_N), axis=1)
                    acc = _features_matmul(h_next_ptr, mean, rows, row_ok, head1, KP + n0, D, DP, SP, 2 * KP, BLOCK_K,
                                           BLOCK_N)  # fmt: skip
                    hidden = _silu(acc + _row(head1_b, KP + n0, BLOCK_N))
                    cont += tl.sum(hidden * _row(head2, KP + n0, BLOCK_N), axis=1)
                tl.store(reward_ptr + rows, reward + tl.load(head2_b), mask=row_ok)
                tl.store(cont_ptr + rows, tl.sigmoid(cont + tl.load(head2_b + 1)), mask=row_ok)
            if VALUE:
                # critic: its first layer -> scratch (once the prior's reads of it are done), then the second and
                # the output summed tile by tile
                tl.debug_barrier()
                for n0 in range(0, KP, BLOCK_N):
                    acc = _features_matmul(h_next_ptr, mean, rows, row_ok, critic1, n0, D, DP, SP, KP, BLOCK_K,
                                           BLOCK_N)  # fmt: skip
                    _store(scratch_ptr, rows, row_ok, n0, _silu(acc + _row(critic1_b, n0, BLOCK_N)), KP, BLOCK_N)
                tl.debug_barrier()
                value = tl.zeros((BLOCK_B,), dtype=tl.float32)
                for n0 in range(0, KP, BLOCK_N):
                    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
                    acc = _matmul(acc, scratch_ptr, rows, row_ok, critic2, n0, KP, KP, KP, BLOCK_K, BLOCK_N)
                    value += tl.sum(_silu(acc + _row(critic2_b, n0, BLOCK_N)) * _row(critic3, n0, BLOCK_N), axis=1)
                tl.store(value_ptr + rows, value + tl.load(critic3_b), mask=row_ok)
            h_ptr, z_ptr = h_next_ptr, z_next_ptr
            mean_ptr += B * S
            std_ptr += B * S
            noise_ptr += B * S
            action_ptr += B * A
            reward_ptr += B
            cont_ptr += B
            value_ptr += B
