"""The exported graphs: tiny wrapper modules with tensor-only inputs and outputs, and their I/O contract.

Dimensions: B batch (dynamic, named `batch`), H=W frame size, S latent, D deter, A encoded action.
The contract (names, dtypes, shapes) is the one in docs/artifacts.md; `graph_specs` is its single source in
code. `wm_deploy`'s torch backend runs these same wrappers, so they hold no export logic.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig
from .model import RSSM, Actor, Critic, Decoder, Encoder, Heads, WorldModel

BATCH = "batch"
"""name of the dynamic batch axis in every graph"""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    """numpy dtype name: `uint8` or `float32`"""
    shape: tuple[str | int, ...]
    """`batch` first, then fixed sizes"""

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


HEAD_OUTPUTS = ("reward", "cont")
"""outputs the prior step gains for a model with heads (model.heads)"""
VALUE_OUTPUT = "value"
"""the output the prior step gains for a model with a critic (model.actor_critic)"""
POLICY = "policy"
"""the graph of the actor (model.actor_critic): h, z -> action"""


def graph_specs(cfg: ModelConfig, decoder: bool = True) -> dict[str, GraphSpec]:
    """The graphs of an artifact folder for a model of this config, by name."""
    return graph_specs_of(
        cfg.frame_size, cfg.latent_dim, cfg.deter_dim, cfg.action_dim, decoder, cfg.heads, cfg.actor_critic
    )


def graph_specs_of(
    H: int, S: int, D: int, A: int, decoder: bool = True, heads: bool = False, actor_critic: bool = False
) -> dict[str, GraphSpec]:
    """`graph_specs` from the dimensions alone (frame size H, latent S, deter D, encoded action A); `heads`: the
    prior step also outputs the reward and continuation predicted for the new state; `actor_critic`: it also
    outputs the critic's value of the new state, and a `policy` graph gives the actor's action."""
    B = BATCH
    head_outputs = tuple(TensorSpec(name, "float32", (B,)) for name in HEAD_OUTPUTS) if heads else ()
    if actor_critic:
        head_outputs += (TensorSpec(VALUE_OUTPUT, "float32", (B,)),)
    specs = {
        "encoder": GraphSpec(
            "encoder",
            inputs=(TensorSpec("obs", "uint8", (B, H, H, 3)),),
            outputs=(TensorSpec("z_mean", "float32", (B, S)), TensorSpec("z_std", "float32", (B, S))),
        ),
        "prior_step": GraphSpec(
            "prior_step",
            inputs=(
                TensorSpec("h", "float32", (B, D)),
                TensorSpec("z", "float32", (B, S)),
                TensorSpec("action", "float32", (B, A)),
            ),
            outputs=(
                TensorSpec("h_next", "float32", (B, D)),
                TensorSpec("prior_mean", "float32", (B, S)),
                TensorSpec("prior_std", "float32", (B, S)),
                *head_outputs,
            ),
        ),
    }
    if actor_critic:
        specs[POLICY] = GraphSpec(
            POLICY,
            inputs=(TensorSpec("h", "float32", (B, D)), TensorSpec("z", "float32", (B, S))),
            outputs=(TensorSpec("action", "float32", (B, A)),),
        )
    if decoder:
        specs["decoder"] = GraphSpec(
            "decoder",
            inputs=(TensorSpec("z", "float32", (B, S)),),
            outputs=(TensorSpec("frames", "float32", (B, H, H, 3)),),
        )
    return specs


def _compute_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


class EncoderGraph(nn.Module):
    """obs uint8 [B, H, W, 3] (raw frames) -> z_mean, z_std [B, S]."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Cast before the transpose: TensorRT takes uint8 only at the network's edge, into a Cast.
        frames = obs.to(_compute_dtype(self)) / 255.0
        frames = frames.permute(0, 3, 1, 2)  # [B, H, W, 3] -> [B, 3, H, W]
        return self.encoder(frames)


class PriorStepGraph(nn.Module):
    """h [B, D], z [B, S], encoded action [B, A] -> h_next [B, D], prior_mean, prior_std [B, S]; with heads also
    reward [B] and cont [B] (the probability that the episode goes on) of the new state [h_next, prior_mean]; with
    a critic also its value [B]."""

    def __init__(self, rssm: RSSM, heads: Heads | None = None, critic: Critic | None = None):
        super().__init__()
        self.rssm = rssm
        self.heads = heads
        self.critic = critic

    def forward(self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor):
        h_next, prior_mean, prior_std = self.rssm.step(h, z, action)
        return (h_next, prior_mean, prior_std, *state_outputs(h_next, prior_mean, self.heads, self.critic))


def state_outputs(h: torch.Tensor, z: torch.Tensor, heads: Heads | None, critic: Critic | None) -> tuple:
    """What the prior step reads off its new state beside the dynamics: (reward, cont) with heads, then value with
    a critic; each [B]."""
    outputs: tuple = ()
    if heads is not None:
        outputs += heads.predict(h, z)
    if critic is not None:
        outputs += (critic.predict(h, z),)
    return outputs


class PolicyGraph(nn.Module):
    """h [B, D], z [B, S] -> action [B, A]: the actor's deterministic action, encoded (continuous: the squashed mean
    in training stds, within the environment's bounds; discrete: the probabilities of the A actions)."""

    def __init__(self, actor: Actor):
        super().__init__()
        self.actor = actor
        self.discrete = actor.is_discrete  # a Python bool: the traced graph holds one branch

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.actor.mode(torch.cat([h, z], dim=-1), self.discrete)


class DecoderGraph(nn.Module):
    """z [B, S] -> frames float [B, H, W, 3] in [0, 1]."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).permute(0, 2, 3, 1)  # [B, 3, H, W] -> [B, H, W, 3]


def build_graphs(model: WorldModel, decoder: bool = True) -> dict[str, nn.Module]:
    """The wrapper modules of `model` (sharing its weights), by graph name, in eval mode."""
    graphs: dict[str, nn.Module] = {
        "encoder": EncoderGraph(model.encoder),
        "prior_step": PriorStepGraph(model.rssm, model.heads, model.critic),
    }
    if model.actor is not None:
        graphs[POLICY] = PolicyGraph(model.actor)
    if decoder:
        graphs["decoder"] = DecoderGraph(model.decoder)
    return {name: graph.eval() for name, graph in graphs.items()}


class HalfPrecisionGraph(nn.Module):
    """A float16 (or bfloat16) copy of a graph behind float32 inputs and outputs (integer inputs pass through
    unchanged).

    TensorRT 11 has no FP16 builder flag: an FP16 engine is built from a graph whose weights and arithmetic
    are float16, and this keeps the engine's tensors float32 so it is a drop-in for the FP32 one. The torch
    backend's half-precision encoder and decoder are the same wrapper.
    """

    def __init__(self, graph: nn.Module, dtype: torch.dtype = torch.float16):
        super().__init__()
        self.dtype = dtype
        self.graph = copy.deepcopy(graph).to(dtype)

    def forward(self, *inputs: torch.Tensor):
        inputs = tuple(x.to(self.dtype) if x.is_floating_point() else x for x in inputs)
        outputs = self.graph(*inputs)
        if isinstance(outputs, torch.Tensor):
            return outputs.float()
        return tuple(y.float() for y in outputs)
