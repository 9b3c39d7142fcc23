"""The critic's and the actor's losses never train the world model: no gradient reaches the encoder, decoder, RSSM
or the reward and continuation heads, and a step of those losses leaves their parameters bit for bit as they
were (Dreamer's `ac_grads: False`). The actor's loss does not train the critic either, nor the critic's the actor."""

import pytest
import torch

from wm_core.losses import LossSettings
from wm_train.actor_critic import ActorCritic

SETTINGS = LossSettings(imagine_horizon=4, actor_bc=1.0, actor_entropy=1e-2)
MODES = ["continuous", "discrete"]


def _world(model):
    return {"encoder": model.encoder, "decoder": model.decoder, "rssm": model.rssm, "heads": model.heads}


def _setup(untrained_model, random_batch, mode):
    model, _, codec = untrained_model(action_mode=mode, actor_critic=True)
    obs, actions = random_batch
    if mode == "discrete":
        actions = torch.nn.functional.one_hot(torch.arange(12).view(2, 6) % codec.dim, codec.dim).float()
    rewards = torch.linspace(-1, 1, 12).view(2, 6)
    continues = torch.ones(2, 6)
    return model, ActorCritic(model, 1e-3, 1e-3, 100.0), (obs, actions, rewards, continues)


@pytest.mark.parametrize("mode", MODES)
def test_actor_loss_reaches_the_actor_only(untrained_model, random_batch, mode):
    model, learner, batch = _setup(untrained_model, random_batch, mode)
    _, actor_loss, _ = learner.losses(*batch, SETTINGS)
    actor_loss.backward()
    for name, part in {**_world(model), "critic": model.critic, "critic_target": model.critic_target}.items():
        assert all(p.grad is None for p in part.parameters()), name
    assert all(p.grad is not None for p in model.actor.parameters())
    assert sum(float(p.grad.abs().sum()) for p in model.actor.parameters()) > 0


@pytest.mark.parametrize("mode", MODES)
def test_value_loss_reaches_the_critic_only(untrained_model, random_batch, mode):
    model, learner, batch = _setup(untrained_model, random_batch, mode)
    value_loss, _, _ = learner.losses(*batch, SETTINGS)
    value_loss.backward()
    for name, part in {**_world(model), "actor": model.actor, "critic_target": model.critic_target}.items():
        assert all(p.grad is None for p in part.parameters()), name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.critic.parameters())


@pytest.mark.parametrize("mode", MODES)
def test_actor_critic_step_leaves_the_world_model_bit_identical(untrained_model, random_batch, mode):
    model, learner, batch = _setup(untrained_model, random_batch, mode)
    before = {name: [p.detach().clone() for p in part.parameters()] for name, part in _world(model).items()}
    actor_before = [p.detach().clone() for p in model.actor.parameters()]
    critic_before = [p.detach().clone() for p in model.critic.parameters()]
    for _ in range(2):
        learner.step(*batch, SETTINGS)
    for name, part in _world(model).items():
        for old, new in zip(before[name], part.parameters()):
            assert torch.equal(old, new), name
            assert new.grad is None, name
    assert any(not torch.equal(old, new) for old, new in zip(actor_before, model.actor.parameters()))
    assert any(not torch.equal(old, new) for old, new in zip(critic_before, model.critic.parameters()))


def test_the_world_models_optimiser_holds_neither_critic_nor_actor(carracing_dir, tiny_config, tmp_path):
    from wm_train.trainer import Trainer

    cfg = tiny_config(carracing_dir, tmp_path / "run")
    cfg.model.heads = cfg.model.actor_critic = True
    trainer = Trainer(cfg, progress=False)
    held = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    for part in (trainer.model.critic, trainer.model.critic_target, trainer.model.actor):
        assert not held & {id(p) for p in part.parameters()}
    assert held == {id(p) for p in trainer.model.world_parameters()}
