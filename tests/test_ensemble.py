"""An ensemble of rollouts (wm_deploy.ensemble): each member sees the same frames and actions in its own part of
the state, the ensemble's reward is the members' mean (less the disagreement penalty), copies of one model plan
exactly as that model, the control loop runs on it, and members that do not fit are refused.

Dimensions: B batch, H horizon, D GRU state, S latent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wm_deploy import Planner, PlannerSettings, Rollout
from wm_deploy.control import PLANNER, run_control
from wm_deploy.ensemble import Ensemble

BOUNDS = ([-1.0, 0.0, 0.0], [1.0, 1.0, 1.0])  # CarRacing's: steering, gas, brake


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Many small torch calls: one thread is faster (see conftest.one_torch_thread)."""


def perturbed(untrained_model, seed: int) -> Rollout:
    """The tiny continuous model with heads, its weights moved by seeded noise: another model of the same shape."""
    model, _, codec = untrained_model("tiny", "continuous", heads=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    return Rollout.from_model(model, codec)


def test_ensemble_imagines_each_member_in_its_part_and_averages_their_rewards(untrained_model):
    members = [perturbed(untrained_model, seed) for seed in (1, 2)]
    ensemble = Ensemble(members)
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    actions = np.random.default_rng(1).uniform(0, 1, (2, 4, 3)).astype(np.float32)  # [B, H, A]
    state = ensemble.observe(ensemble.initial(2), frames)
    trajectory = ensemble.imagine(state, actions)
    D, S = members[0].dims.deter, members[0].dims.latent
    assert state.h.shape == (2, 2 * D) and trajectory.z.shape == (2, 4, 2 * S) and trajectory.reward.shape == (2, 4)
    alone = []
    for m, member in enumerate(members):
        own = member.observe(member.initial(2), frames)
        np.testing.assert_array_equal(state.z[:, m * S : (m + 1) * S], own.z)
        alone.append(member.imagine(own, actions))
        np.testing.assert_array_equal(trajectory.h[..., m * D : (m + 1) * D], alone[-1].h)
    assert not np.allclose(alone[0].reward, alone[1].reward, atol=1e-3)  # the members do differ
    np.testing.assert_allclose(trajectory.reward, (alone[0].reward + alone[1].reward) / 2, rtol=1e-6)
    np.testing.assert_allclose(trajectory.cont, (alone[0].cont + alone[1].cont) / 2, rtol=1e-6)


def test_disagreement_scores_a_candidate_below_the_members_mean_by_their_spread(untrained_model):
    members = [perturbed(untrained_model, seed) for seed in (1, 2, 3)]
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    actions = np.random.default_rng(1).uniform(0, 1, (2, 4, 3)).astype(np.float32)  # [B, H, A]
    alone = np.stack([m.imagine(m.observe(m.initial(2), frames), actions).reward for m in members])  # [M, B, H]
    for group, weight, expected in (
        (members[:2], 1.0, alone[:2].min(0)),  # two members, weight 1: the lesser reward
        (members, 0.5, alone.mean(0) - 0.5 * alone.std(0)),
    ):
        ensemble = Ensemble(group, disagreement=weight)
        reward = ensemble.imagine(ensemble.observe(ensemble.initial(2), frames), actions).reward
        np.testing.assert_allclose(reward, expected, rtol=1e-5, atol=1e-6)
    assert Ensemble(members, disagreement=0.5).objective == "reward: mean - 0.5 x std of 3 models"


def test_an_ensemble_of_copies_plans_exactly_as_one_model(planner_model):
    model, _, codec = planner_model("continuous")
    one = Rollout.from_model(model, codec)
    plans = []
    for rollout in (one, Ensemble([one, Rollout.from_model(model, codec)])):
        planner = Planner(rollout, bounds=BOUNDS, horizon=3, samples=64, iterations=2, seed=0)
        state = rollout.observe(rollout.initial(1), np.zeros((1, 64, 64, 3), np.uint8))
        plans.append(np.stack([planner.act(state) for _ in range(3)]))
    np.testing.assert_array_equal(plans[0], plans[1])


def test_ensemble_load_keeps_onnxruntime_threads_from_spinning_between_its_members_calls(tiny_artifacts):
    pytest.importorskip("onnxruntime")
    folder = tiny_artifacts("continuous")

    def spinning(rollout: Rollout) -> set[str]:
        sessions = rollout.backend.sessions.values()
        return {s.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") for s in sessions}

    ensemble = Ensemble.load([folder, folder], "onnxruntime", "cpu", disagreement=0.5)
    assert ensemble.disagreement == 0.5 and all(spinning(member) == {"0"} for member in ensemble.members)
    with pytest.raises(RuntimeError, match="allow_spinning"):  # Rollout.load leaves onnxruntime's default (spin)
        spinning(Rollout.load(folder, "onnxruntime", "cpu"))


def test_control_loop_runs_on_an_ensemble_and_shows_the_first_members_imagination(untrained_model):
    ensemble = Ensemble([perturbed(untrained_model, seed) for seed in (1, 2)])
    settings = PlannerSettings(horizon=3, samples=16, iterations=1, elites=4, replay=2)
    result = run_control(ensemble, "CarRacing-v3", episodes=1, steps=3, seed=0, settings=settings, record=True)
    episode = result.episodes[PLANNER][0]
    assert episode.length == 3 and np.isfinite(episode.episode_return)
    assert result.backend == "2 x torch" and episode.frames[0][1].shape == (64, 64, 3)


def test_ensemble_refuses_a_single_member_and_members_that_do_not_fit(untrained_model):
    continuous = perturbed(untrained_model, 1)
    model, _, codec = untrained_model("tiny", "discrete", heads=True)
    with pytest.raises(ValueError, match="at least 2 models"):
        Ensemble([continuous])
    with pytest.raises(ValueError, match="member 1 does not fit member 0"):
        Ensemble([continuous, Rollout.from_model(model, codec)])
    with pytest.raises(ValueError, match="disagreement must be a finite number >= 0, got -1"):
        Ensemble([continuous, continuous], disagreement=-1.0)
    with pytest.raises(ValueError, match=r"ensemble state must have h \[B, 64\]"):
        ensemble = Ensemble([continuous, continuous])
        ensemble.imagine(
            continuous.observe(continuous.initial(1), np.zeros((1, 64, 64, 3), np.uint8)), np.zeros((1, 2, 3))
        )
