"""The gradient-isolated world model: a VAE (encoder, decoder) and an RSSM that learns latent dynamics only.

Dimensions: B batch, T time, C=3 colour channels, H=W frame size, S latent (stoch), D GRU state (deter),
A encoded action, K hidden width, N any number of rows.

The VAE loss never reaches the RSSM (the RSSM is not in its graph) and the RSSM loss never reaches the
encoder or decoder (its inputs and targets are detached), so each part is trained for one job only. The
optional reward and continuation heads read detached RSSM features: they learn from the latents and change
nothing else. So do the optional value (critic) and policy prior (actor) of model.actor_critic, which
wm_train.actor_critic trains in imagination on a frozen copy of the dynamics and the heads.
What isolation buys against training the RSSM through pixel reconstruction (the coupled design,
wm_train.coupled) is measured by benchmarks/isolation_ablation.py; see docs/isolation_study.md.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .losses import (
    PLAIN_LOSS,
    LossSettings,
    WorldModelOutput,
    change_weights,
    free_nats_kl,
    gaussian_kl,
    gaussian_kl_per_dim,
    reconstruction_loss,
    with_overrides,
)

CONV_LAYERS = 4  # each halves the frame: 64 -> 4
POSTERIOR_MIN_STD = 1e-3  # keeps log(std) finite in the KLs


def gaussian_params(raw: torch.Tensor, min_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split [..., 2S] into a mean and a positive std, both [..., S]."""
    mean, raw_std = raw.chunk(2, dim=-1)
    return mean, F.softplus(raw_std) + min_std


class Encoder(nn.Module):
    """Frames [N, C, H, W] in [0, 1] -> posterior q(z|x) as mean, std [N, S]."""

    def __init__(self, frame_size: int, channels: int, latent_dim: int):
        super().__init__()
        layers, in_ch = [], 3
        for i in range(CONV_LAYERS):
            layers += [nn.Conv2d(in_ch, channels * 2**i, 4, stride=2, padding=1), nn.SiLU()]
            in_ch = channels * 2**i
        self.convs = nn.Sequential(*layers, nn.Flatten())
        feature_dim = in_ch * (frame_size // 2**CONV_LAYERS) ** 2
        self.posterior_head = nn.Linear(feature_dim, 2 * latent_dim)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.convs(frames - 0.5)  # [N, C', H/16, W/16] -> [N, F]
        return gaussian_params(self.posterior_head(features), POSTERIOR_MIN_STD)


class Decoder(nn.Module):
    """Latents [N, S] -> frames [N, C, H, W] in [0, 1]."""

    def __init__(self, frame_size: int, channels: int, latent_dim: int):
        super().__init__()
        self.base_channels = channels * 2 ** (CONV_LAYERS - 1)
        self.base_size = frame_size // 2**CONV_LAYERS
        self.latent_proj = nn.Linear(latent_dim, self.base_channels * self.base_size**2)
        layers: list[nn.Module] = []
        for i in reversed(range(CONV_LAYERS)):
            out_ch = channels * 2 ** (i - 1) if i > 0 else 3
            layers.append(nn.ConvTranspose2d(channels * 2**i, out_ch, 4, stride=2, padding=1))
            if i > 0:
                layers.append(nn.SiLU())
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        features = self.latent_proj(z)
        features = features.view(-1, self.base_channels, self.base_size, self.base_size)  # [N, F] -> [N, C', h, w]
        return torch.sigmoid(self.deconvs(features))


class RSSM(nn.Module):
    """h_t+1 = GRUCell(h_t, f([z_t, a_t])); prior p(z_t+1 | h_t+1) = N(mean, std >= min_std)."""

    def __init__(self, latent_dim: int, action_dim: int, deter_dim: int, hidden_dim: int, min_std: float):
        super().__init__()
        self.deter_dim = deter_dim
        self.min_std = min_std
        self.input_layer = nn.Sequential(nn.Linear(latent_dim + action_dim, hidden_dim), nn.SiLU())
        self.gru = nn.GRUCell(hidden_dim, deter_dim)
        self.prior_head = nn.Sequential(
            nn.Linear(deter_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 2 * latent_dim)
        )

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(batch, self.deter_dim, device=device)

    def step(self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor):
        """One step: h [B, D], z [B, S], encoded action [B, A] -> h_next [B, D], prior mean, std [B, S]."""
        h_next = self.gru(self.input_layer(torch.cat([z, action], dim=-1)), h)
        prior_mean, prior_std = gaussian_params(self.prior_head(h_next), self.min_std)
        return h_next, prior_mean, prior_std

    def observe(self, z: torch.Tensor, actions: torch.Tensor, states: bool = False):
        """Teacher-forced priors: z [B, T, S] (posterior), actions [B, T, A] -> prior mean, std [B, T-1, S]
        for steps 1..T-1, each predicted from the posterior z and the action of the step before; with
        `states`, also the GRU states h [B, T-1, D] they were predicted from."""
        h = self.initial_state(z.shape[0], z.device)
        means, stds, hs = [], [], []
        for t in range(z.shape[1] - 1):
            h, mean, std = self.step(h, z[:, t], actions[:, t])
            means.append(mean)
            stds.append(std)
            hs.append(h)
        if states:
            return torch.stack(means, 1), torch.stack(stds, 1), torch.stack(hs, 1)
        return torch.stack(means, 1), torch.stack(stds, 1)

    def overshoot(self, h: torch.Tensor, z: torch.Tensor, actions: torch.Tensor, distance: int):
        """Latent overshooting (Hafner et al. 2019, PlaNet, section 4): open-loop priors k = 2..distance steps
        ahead of every step t of a window, all starts at once.

        h [B, T-1, D] and z [B, T-1, S] are the teacher-forced state and prior mean one step after each start t
        (what `observe` returns); actions [B, T, A]. -> for k = 2..distance, the GRU state h [B, T-k, D] and prior
        mean, std [B, T-k, S] of steps k..T-1, each predicted k steps open loop (prior means fed back, true
        actions) from step k - 1 before it."""
        B, T = actions.shape[:2]
        priors = []
        for k in range(2, distance + 1):
            n = T - k  # starts t = 0..n-1 still have a target t + k inside the window
            h, z = h[:, :n], z[:, :n]
            h_next, mean, std = self.step(h.flatten(0, 1), z.flatten(0, 1), actions[:, k - 1 : k - 1 + n].flatten(0, 1))
            h, z, std = (x.view(B, n, -1) for x in (h_next, mean, std))  # [B*n, ...] -> [B, n, ...]
            priors.append((h, z, std))
        return priors

    def imagine(self, h: torch.Tensor, z: torch.Tensor, actions: torch.Tensor):
        """Open loop from (h [B, D], z [B, S]) feeding the prior mean back: actions [B, H, A] ->
        z, prior std [B, H, S] and h [B, H, D] for the H steps ahead."""
        zs, stds, hs = [], [], []
        for t in range(actions.shape[1]):
            h, z, std = self.step(h, z, actions[:, t])
            zs.append(z)
            stds.append(std)
            hs.append(h)
        return torch.stack(zs, 1), torch.stack(stds, 1), torch.stack(hs, 1)


class Heads(nn.Module):
    """What a controller needs beside the dynamics, read off the RSSM features [h, z] of a state: the reward
    received on arriving at it and the probability that the episode goes on after it.

    features [N, D + S] -> reward [N], continuation logit [N]."""

    def __init__(self, deter_dim: int, latent_dim: int, hidden_dim: int):
        super().__init__()

        def mlp() -> nn.Sequential:
            return nn.Sequential(nn.Linear(deter_dim + latent_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 1))

        self.reward = mlp()
        self.cont = mlp()

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.reward(features).squeeze(-1), self.cont(features).squeeze(-1)  # [N, 1] -> [N]

    def predict(self, h: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What a rollout reports for the state (h [N, D], z [N, S]): reward [N] and the probability [N] that the
        episode goes on."""
        reward, cont_logit = self(torch.cat([h, z], dim=-1))
        return reward, torch.sigmoid(cont_logit)


def two_layer_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Two hidden layers of `hidden_dim`: in_dim -> out_dim."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
        nn.Linear(hidden_dim, out_dim),
    )  # fmt: skip


class Critic(nn.Module):
    """The value of a state: the expected discounted sum of the rewards the reward head predicts from its next
    action on, each weighted by the chance that the episode is still going (train.discount per decision).

    features [N, D + S] -> value [N]."""

    def __init__(self, deter_dim: int, latent_dim: int, hidden_dim: int):
        super().__init__()
        self.net = two_layer_mlp(deter_dim + latent_dim, hidden_dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)  # [N, 1] -> [N]

    def predict(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The value [N] of the state (h [N, D], z [N, S])."""
        return self(torch.cat([h, z], dim=-1))


class Actor(nn.Module):
    """The policy prior: a distribution over ENCODED actions (what the RSSM takes) given the features [h, z].

    features [N, D + S] -> [N, 2A]. Continuous actions: the mean and a softplus std of a Gaussian whose draws are
    squashed by tanh onto [low, high], the environment's bounds in encoded units (set_actions), so that the actor
    never asks for an action outside them. Discrete actions: the first A outputs are the logits of a categorical.
    The action mode and the bounds are buffers (saved with the weights), set from the action codec."""

    low: torch.Tensor
    high: torch.Tensor
    discrete: torch.Tensor
    return_low: torch.Tensor
    return_high: torch.Tensor

    def __init__(self, deter_dim: int, latent_dim: int, hidden_dim: int, action_dim: int):
        super().__init__()
        self.action_dim = action_dim
        self.net = two_layer_mlp(deter_dim + latent_dim, hidden_dim, 2 * action_dim)
        self.register_buffer("low", -torch.ones(action_dim))
        self.register_buffer("high", torch.ones(action_dim))
        self.register_buffer("discrete", torch.zeros((), dtype=torch.bool))
        # The running 5% and 95% percentiles of the imagined returns (DreamerV3's return normalisation): kept with
        # the weights so that a resumed run scales its returns as the run it continues.
        self.register_buffer("return_low", torch.zeros(()))
        self.register_buffer("return_high", torch.zeros(()))

    def set_actions(self, codec) -> None:
        """Take the action mode and the encoded bounds from the training run's ActionCodec."""
        with torch.no_grad():
            self.discrete.fill_(codec.mode == "discrete")
            if codec.mode == "continuous" and codec.low:
                low = torch.tensor([codec.low], dtype=torch.float32)  # [1, A]
                high = torch.tensor([codec.high], dtype=torch.float32)
                self.low.copy_(codec.encode(low)[0])
                self.high.copy_(codec.encode(high)[0])

    @property
    def is_discrete(self) -> bool:
        return bool(self.discrete)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)

    def squash(self, u: torch.Tensor) -> torch.Tensor:
        """Unbounded u [N, A] -> encoded actions in [low, high]."""
        return self.low + 0.5 * (torch.tanh(u) + 1.0) * (self.high - self.low)

    def mode(self, features: torch.Tensor, discrete: bool) -> torch.Tensor:
        """The deterministic action [N, A]: continuous, the squashed mean (encoded); discrete, the probabilities
        of the A actions."""
        raw = self(features)
        if discrete:
            return torch.softmax(raw[..., : self.action_dim], dim=-1)
        return self.squash(raw[..., : self.action_dim])

    def distribution(self, features: torch.Tensor, discrete: bool) -> torch.distributions.Distribution:
        """discrete: a Categorical over action indices; continuous: the Normal in the unbounded space (its draws
        go through `squash`)."""
        raw = self(features)
        if discrete:
            return torch.distributions.Categorical(logits=raw[..., : self.action_dim])
        mean, raw_std = raw.chunk(2, dim=-1)
        return torch.distributions.Normal(mean, F.softplus(raw_std) + 0.05)


class WorldModel(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        *,
        rssm_gate_threshold: float | None = None,
        grad_detach_schedule_k: int | None = None,
    ):
        """`rssm_gate_threshold` and `grad_detach_schedule_k` are parameters of the original design, accepted so
        that its training scripts still run: they warn and change nothing (config.LEGACY_KEYS)."""
        super().__init__()
        for name, value in (
            ("rssm_gate_threshold", rssm_gate_threshold),
            ("grad_detach_schedule_k", grad_detach_schedule_k),
        ):
            if value is not None:
                warnings.warn(f"WorldModel({name}=...) is deprecated and ignored", DeprecationWarning, stacklevel=2)
        self.cfg = cfg
        self.encoder = Encoder(cfg.frame_size, cfg.channels, cfg.latent_dim)
        self.decoder = Decoder(cfg.frame_size, cfg.channels, cfg.latent_dim)
        self.rssm = RSSM(cfg.latent_dim, cfg.action_dim, cfg.deter_dim, cfg.hidden_dim, cfg.min_std)
        self.heads = Heads(cfg.deter_dim, cfg.latent_dim, cfg.hidden_dim) if cfg.heads else None
        self.critic: Critic | None = None
        self.critic_target: Critic | None = None
        self.actor: Actor | None = None
        if cfg.actor_critic:
            self.critic = Critic(cfg.deter_dim, cfg.latent_dim, cfg.hidden_dim)
            # The slow copy the value targets bootstrap from (an exponential moving average of the critic, updated
            # by wm_train.actor_critic; DreamerV3's slow critic, TD-MPC2's target Q). Never trained by a gradient.
            self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
            self.actor = Actor(cfg.deter_dim, cfg.latent_dim, cfg.hidden_dim, cfg.action_dim)

    def parts(self) -> dict[str, list[nn.Parameter]]:
        """The parameters each loss trains, grouped as the isolation separates them (VAE: encoder and decoder;
        RSSM; heads), so that the trainer can clip each group's gradient on its own."""
        groups = {"vae": [*self.encoder.parameters(), *self.decoder.parameters()], "rssm": [*self.rssm.parameters()]}
        if self.heads is not None:
            groups["heads"] = [*self.heads.parameters()]
        return groups

    def world_parameters(self) -> list[nn.Parameter]:
        """The parameters the world model's loss trains (every part of `parts()`): not the critic and the actor,
        which have optimisers of their own (wm_train.actor_critic)."""
        return [p for group in self.parts().values() for p in group]

    def encode(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs [B, T, C, H, W] -> posterior mean, std [B, T, S]."""
        B, T = obs.shape[:2]
        mean, std = self.encoder(obs.flatten(0, 1))  # [B*T, C, H, W] -> [B*T, S]
        return mean.view(B, T, -1), std.view(B, T, -1)  # [B*T, S] -> [B, T, S]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., S] -> frames [..., C, H, W]."""
        frames = self.decoder(z.reshape(-1, z.shape[-1]))  # [..., S] -> [N, S]
        return frames.view(*z.shape[:-1], *frames.shape[1:])  # [N, C, H, W] -> [..., C, H, W]

    def head_losses(
        self,
        hs: torch.Tensor,
        prior_mean: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor | None,
        continues: torch.Tensor | None,
        distance: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads' losses on the states 1..`distance` steps open loop after every step of the window: hs
        [B, T-1, D] and prior_mean [B, T-1, S] after actions 0..T-2 (what RSSM.observe returns), actions [B, T, A],
        targets rewards, continues [B, T] -> (reward_loss, cont_loss), each the mean over the distances; zeros for
        a model without heads or without targets."""
        if self.heads is None or rewards is None or continues is None:
            zero = torch.zeros((), device=hs.device)
            return zero, zero
        # Detached: keeps the head losses out of the RSSM (and so out of the encoder). Distance 1 is the
        # teacher-forced prior [h_t+1, prior mean of z_t+1]; distances 2..K feed prior means back as a planner's
        # imagination does (TD-MPC trains its reward head along such latent rollouts too).
        with torch.no_grad():  # the open-loop states feed the heads only: no graph through the RSSM
            ahead = [(h, mean) for h, mean, _ in self.rssm.overshoot(hs, prior_mean, actions, distance)]
        reward_losses, cont_losses = [], []
        for k, (h, mean) in enumerate([(hs, prior_mean), *ahead], start=1):  # state k..T-1 follows action k-1..T-2
            features = torch.cat([h, mean], dim=-1).detach()  # [B, T-k, D + S]
            reward, cont_logit = self.heads(features)  # [B, T-k] each
            reward_losses.append((reward - rewards[:, k - 1 : -1]).pow(2).mean())
            cont_losses.append(F.binary_cross_entropy_with_logits(cont_logit, continues[:, k - 1 : -1]))
        return torch.stack(reward_losses).mean(), torch.stack(cont_losses).mean()

    def forward(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        settings: LossSettings = PLAIN_LOSS,
        *,
        rewards: torch.Tensor | None = None,
        continues: torch.Tensor | None = None,
        **overrides,
    ) -> WorldModelOutput:
        """obs float32 [B, T, C, H, W] in [0, 1], encoded actions [B, T, A] -> WorldModelOutput under `settings`
        (the plain loss unless given); `overrides` replace single fields of it (`model(obs, actions, beta=0.5)`).
        `beta` is the KL's weight as given: a warm-up is the caller's (LossSettings.at_step), and reward_window
        shapes the targets, not this. With heads, `rewards` [B, T] (the reward-head target after action t) and
        `continues` [B, T] (1 - terminated) train them; without these the head losses are 0."""
        settings = with_overrides(settings, overrides)
        mean, std = self.encode(obs)
        z = mean + std * torch.randn_like(std)
        recon = self.decode(z)
        weight = change_weights(obs, settings.recon_change_weight) if settings.recon_change_weight > 0 else None
        recon_loss = reconstruction_loss(recon, obs, weight)
        kl_per_dim = gaussian_kl_per_dim(  # [B, S]
            mean[:, 0], std[:, 0], torch.zeros_like(mean[:, 0]), torch.ones_like(std[:, 0])
        )
        kld = kl_per_dim.sum(-1).mean()
        kl_loss = free_nats_kl(kl_per_dim, settings.free_nats) if settings.free_nats > 0 else kld

        # Detached: keeps the RSSM loss out of the encoder (inputs z_t and targets q(z_t+1|x_t+1) alike).
        mu_detached, std_detached = mean.detach(), std.detach()
        prior_mean, prior_std, hs = self.rssm.observe(mu_detached, actions, states=True)
        rssm_loss = gaussian_kl(mu_detached[:, 1:], std_detached[:, 1:], prior_mean, prior_std).mean()
        # Overshooting reads the same detached posteriors: it trains the RSSM alone, like rssm_loss. PlaNet
        # weights every distance alike (its beta_d = 1/D): the RSSM term is the mean over k = 1..K.
        overshoot_kls = [
            gaussian_kl(mu_detached[:, k:], std_detached[:, k:], mean_k, std_k).mean()
            for k, (_, mean_k, std_k) in enumerate(
                self.rssm.overshoot(hs, prior_mean, actions, settings.overshooting), start=2
            )
        ]
        overshoot = torch.stack(overshoot_kls).mean() if overshoot_kls else torch.zeros((), device=obs.device)

        with torch.no_grad():
            one_step = (self.decode(prior_mean) - obs[:, 1:]).pow(2).mean()

        dynamics = (rssm_loss + len(overshoot_kls) * overshoot) / (1 + len(overshoot_kls))
        loss = recon_loss + settings.beta * kl_loss + settings.rssm_scale * dynamics
        reward_loss, cont_loss = self.head_losses(
            hs, prior_mean, actions, rewards, continues, settings.head_overshooting
        )
        loss = loss + reward_loss + cont_loss
        return WorldModelOutput(loss, recon_loss, kld, rssm_loss, one_step, overshoot, reward_loss, cont_loss)
