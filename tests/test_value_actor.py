"""The critic's targets, the actor's behaviour cloning and training with model.actor_critic end to end."""

import numpy as np
import pytest
import torch

from wm_core.checkpoint import load_checkpoint
from wm_core.losses import LossSettings
from wm_train.actor_critic import ActorCritic, lambda_returns, window_value_targets
from wm_train.eval_report import summary_lines
from wm_train.evaluate import evaluate_checkpoint
from wm_train.trainer import train
from wm_train.value_metrics import returns_to_go, value_r2


def _constant_target(model, value: float) -> None:
    with torch.no_grad():
        last = model.critic_target.net[-1]
        last.weight.zero_()
        last.bias.fill_(value)


def test_window_value_targets_equal_the_hand_computed_lambda_return(untrained_model):
    model, _, _ = untrained_model(actor_critic=True)
    _constant_target(model, 5.0)  # V_target = 5 in every state
    h, z = torch.randn(1, 4, 32), torch.randn(1, 4, 8)
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    continues = torch.tensor([[1.0, 1.0, 0.0, 1.0]])  # the episode ends after action 2
    settings = LossSettings(discount=0.9, value_lambda=0.5)
    targets = window_value_targets(model, h, z, rewards, continues, settings)
    g2 = 3.0  # terminal: no bootstrap
    g1 = 2.0 + 0.9 * (0.5 * 5.0 + 0.5 * g2)  # 5.6
    g0 = 1.0 + 0.9 * (0.5 * 5.0 + 0.5 * g1)  # 5.77
    torch.testing.assert_close(targets, torch.tensor([[g0, g1, g2]]))


def test_lambda_one_is_the_discounted_sum_and_lambda_zero_one_step_td():
    rewards, continues = torch.tensor([[1.0, 1.0]]), torch.ones(1, 2)
    values = torch.tensor([[0.0, 10.0, 20.0]])
    torch.testing.assert_close(lambda_returns(rewards, continues, values, 0.5, 1.0), torch.tensor([[6.5, 11.0]]))
    torch.testing.assert_close(lambda_returns(rewards, continues, values, 0.5, 0.0), torch.tensor([[6.0, 11.0]]))


@pytest.mark.parametrize("mode", ["continuous", "discrete"])
def test_behaviour_cloning_pulls_the_actor_to_the_recorded_actions(untrained_model, random_batch, mode):
    model, _, codec = untrained_model(action_mode=mode, actor_critic=True)
    obs, _ = random_batch
    if mode == "discrete":
        recorded = torch.nn.functional.one_hot(torch.full((2, 6), 4), codec.dim).float()
    else:
        recorded = torch.tensor([0.5, -1.0, 0.8]).expand(2, 6, 3)  # inside the codec's encoded bounds
    rewards, continues = torch.zeros(2, 6), torch.ones(2, 6)
    learner = ActorCritic(model, value_lr=1e-3, actor_lr=3e-3, grad_clip=100.0)
    settings = LossSettings(actor_bc=10.0, actor_entropy=0.0, imagine_horizon=2)
    torch.manual_seed(0)
    first = learner.step(obs, recorded, rewards, continues, settings).bc_loss
    for _ in range(40):
        last = learner.step(obs, recorded, rewards, continues, settings).bc_loss
    assert float(last) < 0.25 * float(first)


def test_training_with_actor_critic_writes_a_loadable_checkpoint(carracing_dir, tiny_config, tmp_path):
    cfg = tiny_config(carracing_dir, tmp_path / "run", epochs=1, imagine_horizon=3)
    cfg.model.heads = cfg.model.actor_critic = True
    history = train(cfg, progress=False)
    for split in ("train", "val"):
        assert {"value_loss", "repval_loss", "actor_loss", "bc_loss"} <= set(getattr(history[-1], split))
    model, _, extras = load_checkpoint(tmp_path / "run" / "last.pt")
    assert model.critic is not None and model.actor is not None and not model.actor.is_discrete
    assert set(extras["actor_critic_optimizers"]) == {"value", "actor"}


def test_returns_to_go_discount_and_stop_at_a_termination():
    rewards = np.array([1.0, 2.0, 3.0, 4.0])
    continues = np.array([1.0, 0.0, 1.0, 1.0])  # the episode ends after action 1 (a later one starts anew)
    np.testing.assert_allclose(returns_to_go(rewards, continues, 0.5), [2.0, 2.0, 5.0, 4.0])


def test_wm_eval_reports_the_value_r2_on_both_splits(carracing_dir, tiny_config, tmp_path):
    cfg = tiny_config(carracing_dir, tmp_path / "run", epochs=1, imagine_horizon=2)
    cfg.model.heads = cfg.model.actor_critic = True
    train(cfg, progress=False)
    report = evaluate_checkpoint(tmp_path / "run" / "last.pt", carracing_dir, context=2, horizon=3, progress=False)
    for split in ("train", "val"):
        r2 = report.splits[split].value_r2
        assert r2 is not None and np.isfinite(r2) and r2 <= 1.0
    assert any("value (critic)" in line for line in summary_lines(report))


def test_a_model_without_a_critic_has_no_value_r2(untrained_model, carracing_dir, tiny_config, tmp_path):
    from wm_train.data import load_splits

    cfg = tiny_config(carracing_dir, tmp_path / "run")
    cfg.model.heads = True
    _, val, codec = load_splits(cfg)
    model, _, _ = untrained_model(heads=True)
    assert value_r2(model, codec, val, 0.99) is None


def test_a_run_with_actor_critic_resumes_exactly(carracing_dir, tiny_config, tmp_path):
    def config(name: str, epochs: int):
        cfg = tiny_config(carracing_dir, tmp_path / name, epochs=epochs, imagine_horizon=2)
        cfg.model.heads = cfg.model.actor_critic = True
        return cfg

    straight = train(config("straight", 2), progress=False)
    train(config("split", 1), progress=False)
    resumed = train(config("split", 2), resume=True, progress=False)
    assert [(m.train, m.val) for m in resumed] == [(m.train, m.val) for m in straight]
    changed = config("split", 3)
    changed.train.actor_bc = 0.5
    with pytest.raises(ValueError, match="train.actor_bc=1.0"):
        train(changed, resume=True, progress=False)
