"""The value function (critic) and the policy prior (actor) of model.actor_critic, trained beside the world model
and never through it.

Dimensions: B batch, T window, N = B*T start states, H imagine horizon, D deter, S latent, A encoded action.

Each training step, after the world model's own step:
1. The window's posterior states s_t = [h_t, z_t]: the RSSM teacher-forced on the posterior means, h_0 = 0, as
   `Rollout.observe` builds them at control time (no_grad).
2. Real value targets (DreamerV3's repval): the lambda-returns of the window's reward targets and continuation
   flags, bootstrapped by the target critic at the window's last state.
3. Imagination: from every s_t the actor picks actions for `imagine_horizon` steps on a FROZEN copy of the RSSM
   (prior means fed back, as the planner imagines), scored by frozen copies of the reward and continuation heads,
   bootstrapped by the target critic -> lambda-returns.
4. The critic regresses on both targets (detached inputs, targets under no_grad). The actor maximises the
   imagined returns divided by their running 5-95% percentile range (at least 1; DreamerV3), plus an entropy
   bonus, less actor_bc times a behaviour-cloning loss towards the recorded actions (TD3+BC, MBOP): offline, the
   actor must not wander to actions the model never saw. Continuous actions get the gradient of the return
   through the frozen dynamics (pathwise, as Dreamer on continuous control); discrete ones a REINFORCE gradient
   with the critic as baseline.

The reward the critic sums is the reward head's target (train.reward_window's mean of the next rewards; the real
reward at the default window of 1): the planner adds the value to the sum of the reward head's predictions, so
both must be in the same units.

Isolation: the frozen copies are separate modules whose parameters require no grad, refreshed from the world
model before every step; no graph built here holds a parameter of the encoder, decoder, RSSM or heads, and the
critic's loss sees only detached inputs (Dreamer's `ac_grads: False`). tests/test_value_actor_isolation.py checks
it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from wm_core.losses import ActorCriticOutput, LossSettings
from wm_core.model import WorldModel

RETURN_PERCENTILES = (0.05, 0.95)
"""the imagined returns are divided by the range between these quantiles (DreamerV3's return normalisation)"""
RETURN_RANGE_DECAY = 0.99
"""per step, the running percentiles keep this share of themselves (DreamerV3)"""


def lambda_returns(
    rewards: torch.Tensor, continues: torch.Tensor, values: torch.Tensor, discount: float, lam: float
) -> torch.Tensor:
    """rewards, continues [B, T]: the reward for action t and whether the episode goes on after it; values
    [B, T+1]: the value of state t, the last one the bootstrap -> lambda-returns [B, T]:
        G_t = r_t + discount * c_t * ((1 - lam) * V_t+1 + lam * G_t+1),   G_T = V_T."""
    returns = []
    last = values[:, -1]
    for t in reversed(range(rewards.shape[1])):
        last = rewards[:, t] + discount * continues[:, t] * ((1 - lam) * values[:, t + 1] + lam * last)
        returns.append(last)
    return torch.stack(returns[::-1], 1)


@torch.no_grad()
def posterior_states(model: WorldModel, obs: torch.Tensor, actions: torch.Tensor):
    """obs [B, T, C, H, W], encoded actions [B, T, A] -> h [B, T, D] and z [B, T, S] of every frame of the window:
    z the posterior mean, h the RSSM teacher-forced on them (h_0 = 0)."""
    mean, _ = model.encode(obs)
    _, _, hs = model.rssm.observe(mean, actions, states=True)  # [B, T-1, D]: h_1..h_T-1
    h0 = model.rssm.initial_state(obs.shape[0], obs.device)[:, None]  # [B, 1, D]
    return torch.cat([h0, hs], 1), mean


@torch.no_grad()
def window_value_targets(
    model: WorldModel, h: torch.Tensor, z: torch.Tensor, rewards: torch.Tensor, continues: torch.Tensor, settings
) -> torch.Tensor:
    """The critic's targets on a real window: states h [B, T, D], z [B, T, S], rewards and continues [B, T] (the
    heads' targets) -> lambda-returns [B, T-1] of states 0..T-2, bootstrapped by the target critic at state T-1."""
    assert model.critic_target is not None
    values = model.critic_target.predict(h, z)  # [B, T]
    return lambda_returns(rewards[:, :-1], continues[:, :-1], values, settings.discount, settings.value_lambda)


def behaviour_cloning_loss(model: WorldModel, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """features [..., D + S], recorded encoded actions [..., A] -> the actor's behaviour-cloning loss: squared error
    of its deterministic action (encoded units, mean over dimensions) or cross-entropy of its logits."""
    actor = model.actor
    assert actor is not None
    if actor.is_discrete:
        logits = actor(features)[..., : actor.action_dim]
        return F.cross_entropy(logits.flatten(0, -2), actions.argmax(-1).flatten())
    return (actor.mode(features, discrete=False) - actions).pow(2).mean()


class ActorCritic:
    """The critic's and the actor's optimisers and their step; see the module docstring."""

    def __init__(self, model: WorldModel, value_lr: float, actor_lr: float, grad_clip: float):
        if model.critic is None or model.actor is None or model.heads is None:
            raise ValueError("ActorCritic needs a model with heads and model.actor_critic")
        self.model = model
        self.grad_clip = grad_clip
        # Frozen copies the actor imagines on: the actor's loss has a path to them, none to the world model.
        self.frozen_rssm = copy.deepcopy(model.rssm).requires_grad_(False)
        self.frozen_heads = copy.deepcopy(model.heads).requires_grad_(False)
        self.value_optimizer = torch.optim.Adam(model.critic.parameters(), lr=value_lr)
        self.actor_optimizer = torch.optim.Adam(model.actor.parameters(), lr=actor_lr)

    def state_dict(self) -> dict:
        return {"value": self.value_optimizer.state_dict(), "actor": self.actor_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.value_optimizer.load_state_dict(state["value"])
        self.actor_optimizer.load_state_dict(state["actor"])

    @torch.no_grad()
    def _refresh(self) -> None:
        self.frozen_rssm.load_state_dict(self.model.rssm.state_dict())
        self.frozen_heads.load_state_dict(self.model.heads.state_dict())  # type: ignore[union-attr]

    def imagine(self, h: torch.Tensor, z: torch.Tensor, horizon: int):
        """From start states h [N, D], z [N, S]: the actor's actions for `horizon` steps on the frozen RSSM ->
        (features [N, H+1, D+S] of states 0..H, rewards, continues [N, H] of actions 0..H-1 from the frozen heads,
        log-probabilities and entropies [N, H] of the actions)."""
        actor = self.model.actor
        assert actor is not None
        discrete = actor.is_discrete
        features = [torch.cat([h, z], -1)]
        log_probs, entropies = [], []
        for _ in range(horizon):
            dist = actor.distribution(features[-1], discrete)
            if discrete:
                index = dist.sample()  # [N]
                action = F.one_hot(index, actor.action_dim).float()
                log_probs.append(dist.log_prob(index))
                entropies.append(dist.entropy())
            else:
                u = dist.rsample()  # [N, A]
                action = actor.squash(u)
                log_probs.append(dist.log_prob(u).sum(-1))
                entropies.append(dist.entropy().sum(-1))
            h, z, _ = self.frozen_rssm.step(h, z, action)
            features.append(torch.cat([h, z], -1))
        stacked = torch.stack(features, 1)  # [N, H+1, D+S]
        reward, cont_logit = self.frozen_heads(stacked[:, 1:])  # [N, H] each
        return stacked, reward, torch.sigmoid(cont_logit), torch.stack(log_probs, 1), torch.stack(entropies, 1)

    def losses(
        self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, continues: torch.Tensor,
        settings: LossSettings, update_range: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, ActorCriticOutput]:  # fmt: skip
        """The critic's and the actor's losses on a batch of windows (obs [B, T, C, H, W], encoded actions
        [B, T, A], reward and continuation targets [B, T]) -> (value loss, actor loss, what is logged).
        `update_range`: move the running return percentiles (off for a validation pass)."""
        model = self.model
        critic, target, actor = model.critic, model.critic_target, model.actor
        assert critic is not None and target is not None and actor is not None
        self._refresh()
        h, z = posterior_states(model, obs, actions)  # [B, T, D], [B, T, S]
        real = torch.cat([h, z], -1)  # [B, T, D+S], no graph: built under no_grad
        real_targets = window_value_targets(model, h, z, rewards, continues, settings)  # [B, T-1]
        repval_loss = (critic(real[:, :-1]) - real_targets).pow(2).mean()

        starts = h.flatten(0, 1), z.flatten(0, 1)  # [B, T, ...] -> [N, ...]
        features, reward, cont, log_prob, entropy = self.imagine(*starts, settings.imagine_horizon)
        values = target(features)  # [N, H+1]; the target critic requires no grad: the actor's loss cannot train it
        returns = lambda_returns(reward, cont, values, settings.discount, settings.value_lambda)  # [N, H]
        with torch.no_grad():
            # the chance that state k is reached at all: a rollout past a predicted end counts for less
            alive = torch.cumprod(torch.cat([torch.ones_like(cont[:, :1]), cont[:, :-1]], 1), 1)
            if update_range:
                quantiles = torch.tensor(RETURN_PERCENTILES, device=obs.device)
                low, high = torch.quantile(returns.flatten().float(), quantiles)
                actor.return_low.lerp_(low, 1 - RETURN_RANGE_DECAY)
                actor.return_high.lerp_(high, 1 - RETURN_RANGE_DECAY)
            scale = torch.clamp(actor.return_high - actor.return_low, min=1.0)
        if actor.is_discrete:
            advantage = ((returns - values[:, :-1]) / scale).detach()
            objective = log_prob * advantage
        else:
            objective = returns / scale  # pathwise: the gradient flows through the frozen dynamics to the actions
        bc_loss = behaviour_cloning_loss(model, real, actions)
        entropy_bonus = settings.actor_entropy * (alive * entropy).mean()
        actor_loss = -(alive * objective).mean() - entropy_bonus + settings.actor_bc * bc_loss
        # Detached: the critic's loss trains the critic alone (not the actor through the imagined states).
        value_loss = (alive * (critic(features[:, :-1].detach()) - returns.detach()).pow(2)).mean()
        total_value_loss = value_loss + settings.value_repval * repval_loss
        output = ActorCriticOutput(
            value_loss=value_loss.detach(),
            repval_loss=repval_loss.detach(),
            actor_loss=actor_loss.detach(),
            bc_loss=bc_loss.detach(),
            imagined_return=returns.detach().mean(),
            return_range=scale,
        )
        return total_value_loss, actor_loss, output

    def step(
        self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, continues: torch.Tensor,
        settings: LossSettings,
    ) -> ActorCriticOutput:  # fmt: skip
        """One optimiser step of the actor and one of the critic, then the target critic's average."""
        model = self.model
        assert model.critic is not None and model.critic_target is not None and model.actor is not None
        value_loss, actor_loss, output = self.losses(obs, actions, rewards, continues, settings)
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.actor.parameters(), self.grad_clip)
        self.actor_optimizer.step()
        self.value_optimizer.zero_grad(set_to_none=True)
        value_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.critic.parameters(), self.grad_clip)
        self.value_optimizer.step()
        with torch.no_grad():
            for slow, fast in zip(model.critic_target.parameters(), model.critic.parameters()):
                slow.lerp_(fast, 1 - settings.value_target_decay)
        return output
