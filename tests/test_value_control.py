"""The planner's use of the value and the actor (value at the horizon, the actor's plan among the candidates and as
the search's start, elite weights scaled to the elite values' spread, executing the refit mean) and `wm-control
--policy actor`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from wm_core.model import WorldModel
from wm_deploy import PlannerSettings, Rollout
from wm_deploy.control import PLANNER, run_control
from wm_deploy.plan_distributions import Arrays
from wm_deploy.planner import Planner, elite_weights
from wm_deploy.state import Trajectory

FAST = PlannerSettings(horizon=3, samples=16, iterations=1, elites=4, replay=2, policy_samples=4)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Many small torch calls: one thread is faster (see conftest.one_torch_thread)."""


def _with_actor_critic(model: WorldModel, codec, value: float, action=None) -> Rollout:
    """A rollout of `model` (with heads) plus a critic whose value is `value` in every state and, with `action`
    (raw), an actor whose action is `action` in every state; continuous actions bounded by [0, 1]."""
    codec = dataclasses.replace(codec, low=(0.0,) * codec.dim, high=(1.0,) * codec.dim)
    cfg = dataclasses.replace(model.cfg, actor_critic=True)
    built = WorldModel(cfg)
    built.load_state_dict(model.state_dict(), strict=False)
    built.actor.set_actions(codec)
    with torch.no_grad():
        last = built.critic.net[-1]
        last.weight.zero_()
        last.bias.fill_(value)
        if action is not None:
            out = built.actor.net[-1]
            out.weight.zero_()
            encoded = codec.encode(torch.tensor([action], dtype=torch.float32))[0]  # [A]
            u = (encoded - built.actor.low) / (built.actor.high - built.actor.low) * 2 - 1  # tanh(u) in (-1, 1)
            out.bias[: codec.dim] = torch.atanh(u.clamp(-0.999999, 0.999999))
    return Rollout.from_model(built.eval(), codec)


def test_value_at_the_horizon_adds_discount_h_alive_h_value_exactly(planner_model):
    model, _, codec = planner_model("continuous")
    rollout = _with_actor_critic(model, codec, 0.0)
    planner = Planner(rollout, horizon=3, samples=8, elites=2, replay=0, policy_samples=0, discount=0.9, use_value=True)
    reward = np.array([[1.0, 2.0, 3.0]], np.float32)
    cont = np.array([[0.9, 0.8, 0.5]], np.float32)
    value = np.array([[7.0, 8.0, 10.0]], np.float32)
    zeros = np.zeros((1, 3, 8), np.float32)
    trajectory = Trajectory(zeros, np.zeros((1, 3, 32), np.float32), zeros, zeros, reward, cont, value)
    within = 1.0 + 0.9 * 2.0 * 0.9 + 0.81 * 3.0 * 0.9 * 0.8
    beyond = 0.9**3 * (0.9 * 0.8 * 0.5) * 10.0
    np.testing.assert_allclose(planner._values(trajectory), [within + beyond], rtol=1e-6)
    off = Planner(rollout, planner.settings, use_value=False)
    np.testing.assert_allclose(off._values(trajectory), [within], rtol=1e-6)


def test_imagined_plans_carry_the_critics_value(planner_model):
    model, _, codec = planner_model("continuous")
    rollout = _with_actor_critic(model, codec, 3.0)
    settings = PlannerSettings(
        horizon=4, samples=32, iterations=1, elites=4, replay=0, policy_samples=0, use_value=True
    )
    state = rollout.observe(rollout.initial(1), np.zeros((1, 64, 64, 3), np.uint8))
    with_value = Planner(rollout, settings).plan(state)
    without = Planner(rollout, settings, use_value=False).plan(state)
    # the same candidates (same seed), each worth 3 x 0.99^4 x alive_4 (~1) more
    assert with_value.value - without.value == pytest.approx(3.0 * 0.99**4, rel=1e-4)


def test_scaled_elite_weights_ignore_the_scale_of_the_values():
    xp = Arrays(torch.device("cpu"))
    values = np.array([2.0, 1.9, 1.5, 1.0], np.float32)
    small, large = elite_weights(xp, values, 0.5, "scaled"), elite_weights(xp, 100 * values, 0.5, "scaled")
    np.testing.assert_allclose(small, large, rtol=1e-5)
    expected = np.exp(0.5 * (values - 2.0) / values.std())
    np.testing.assert_allclose(small, expected / expected.sum(), rtol=1e-5)
    raw = elite_weights(xp, values, 0.5, "raw")  # values ~1-2: the raw weights are near-uniform
    assert raw.max() / raw.min() < np.exp(0.5) and small.max() / small.min() > np.exp(1.0)
    equal = elite_weights(xp, np.ones(4, np.float32), 0.5, "scaled")
    np.testing.assert_allclose(equal, np.full(4, 0.25))


@pytest.mark.parametrize("arrays", ["numpy", "torch"])
def test_the_actors_plan_is_a_candidate_and_the_searchs_start(planner_model, planner_targets, arrays):
    model, _, codec = planner_model("continuous")
    target = planner_targets["continuous"]
    rollout = _with_actor_critic(model, codec, 0.0, action=target)
    state = rollout.observe(rollout.initial(1), np.zeros((1, 64, 64, 3), np.uint8))
    np.testing.assert_allclose(rollout.policy(state)[0], target, atol=1e-4)
    settings = PlannerSettings(horizon=4, samples=16, iterations=1, elites=2, replay=0, policy_samples=4)
    plan = Planner(rollout, settings, arrays=arrays, execute="mean").plan(state)
    np.testing.assert_allclose(plan.actions, np.tile(target, (4, 1)), atol=0.05)  # refit around the actor's plan
    without = Planner(rollout, settings, arrays=arrays, policy_samples=0).plan(state)
    assert plan.value > without.value  # 16 random draws do not find the optimum the actor knows


def test_planner_with_value_and_actor_drives_both_action_kinds(untrained_checkpoint):
    for env_id, mode in (("CarRacing-v3", "continuous"), ("ALE/Pong-v5", "discrete")):
        rollout = Rollout.load(untrained_checkpoint("tiny", mode, actor_critic=True), backend="torch", device="cpu")
        result = run_control(rollout, env_id, episodes=1, steps=3, seed=0, settings=FAST, record=False)
        assert result.policy == "planner" and result.episodes[PLANNER][0].length == 3


def test_wm_control_policy_actor_drives_with_the_actor(untrained_checkpoint, tmp_path):
    from wm_export import export_artifacts

    folder = export_artifacts(untrained_checkpoint("tiny", "continuous", actor_critic=True), tmp_path / "artifacts")
    out = tmp_path / "control"
    result = subprocess.run(
        [sys.executable, "-m", "wm_deploy.cli", str(folder), "--env", "CarRacing-v3", "--episodes", "1", "--steps",
         "4", "--out", str(out), "--no-progress", "--no-references", "--policy", "actor"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "control.json").read_text())
    assert report["policy"] == "actor" and report["objective"] == "actor"
    assert report["policies"][PLANNER]["episodes"][0]["length"] == 4


def test_policy_actor_needs_a_model_with_an_actor(untrained_checkpoint):
    rollout = Rollout.load(untrained_checkpoint("tiny", "continuous", heads=True), backend="torch", device="cpu")
    with pytest.raises(ValueError, match="actor_critic"):
        run_control(rollout, "CarRacing-v3", episodes=1, steps=2, seed=0, policy="actor")
