"""The planner (wm_deploy.planner) on hand-built models whose optimum is known (conftest.planner_model): it finds
the optimum, stays within the bounds, repeats itself for a seed, warm-starts from its previous plan, plans the
same on torch and onnxruntime, and refuses bad input with a message naming it.

Dimensions: N samples, H horizon, A action width.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from wm_core.actions import ActionCodec
from wm_deploy import LatentState, Planner, Rollout
from wm_deploy.plan_distributions import Arrays, Gaussian
from wm_deploy.planner import DATA_PRIOR_SCALE
from wm_deploy.tick_graph import TickGraph

BOUNDS = ([-1.0, 0.0, 0.0], [1.0, 1.0, 1.0])  # CarRacing's: steering, gas, brake
GOAL = np.zeros((64, 64, 3), np.uint8)  # any frame: the hand-built encoder maps every frame to the target's latent
SETTINGS = dict(horizon=3, samples=256, iterations=6, seed=0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Hundreds of small torch calls: one thread is faster (see conftest.one_torch_thread)."""


def observed(rollout: Rollout) -> LatentState:
    return rollout.observe(rollout.initial(1), GOAL[None])


def planner_on(rollout: Rollout, objective: str = "reward", **settings) -> Planner:
    bounds = None if rollout.codec.mode == "discrete" else BOUNDS
    goal = GOAL if objective == "goal" else None
    return Planner(rollout, goal=goal, bounds=bounds, **{**SETTINGS, **settings})


class ImagineRecorder:
    """Records the actions of every imagine call a rollout makes, and passes each call on unchanged."""

    def __init__(self, rollout: Rollout, monkeypatch):
        self.calls: list[np.ndarray] = []
        imagine = rollout.imagine

        def recorded(state, actions, **kwargs):
            self.calls.append(np.array(actions.detach().cpu() if isinstance(actions, torch.Tensor) else actions))
            return imagine(state, actions, **kwargs)

        monkeypatch.setattr(rollout, "imagine", recorded)


@pytest.fixture(scope="module")
def continuous_rollout(planner_model):
    model, _, codec = planner_model("continuous")
    return Rollout.from_model(model, codec)


@pytest.mark.parametrize("objective", ["reward", "goal"])
def test_planner_finds_the_optimum_of_a_hand_built_model(continuous_rollout, planner_targets, objective):
    planner = planner_on(continuous_rollout, objective)
    state = observed(continuous_rollout)
    for tick in range(3):
        action = planner.act(state)
        assert action.dtype == np.float32 and action.shape == (3,)
        error = np.abs(action - planner_targets["continuous"]).max()
        assert error < 0.08, f"tick {tick}: action {action} is {error:.3f} from the optimum"
    plan = planner.last_plan
    assert plan is not None and plan.actions.shape == (3, 3) and plan.z.shape == (3, 8)
    assert plan.reward is not None and plan.cont is not None and plan.reward.shape == plan.cont.shape == (3,)
    if objective == "reward":  # 3 steps of nearly the best reward, 10 each, discounted by 0.99
        assert plan.value == pytest.approx(10 * (1 + 0.99 + 0.99**2), abs=1.0)
    else:  # the latent distance to the goal, summed over 3 steps, is near 0
        assert -1.0 < plan.value <= 0.0


@pytest.mark.parametrize("objective", ["reward", "goal"])
def test_categorical_planner_finds_the_optimum_of_a_hand_built_model(planner_model, planner_targets, objective):
    model, _, codec = planner_model("discrete")
    rollout = Rollout.from_model(model, codec)
    planner = planner_on(rollout, objective, iterations=3)
    state = observed(rollout)
    actions = [planner.act(state) for _ in range(3)]
    assert all(isinstance(a, int) for a in actions)
    assert actions == [planner_targets["discrete"]] * 3
    assert planner.last_plan is not None and planner.last_plan.actions.tolist() == [planner_targets["discrete"]] * 3


def test_planner_weighs_rewards_by_the_predicted_continuation(planner_model, planner_targets):
    """Make the best action end the episode: its reward (10) is still received, nothing after it. Over 8 steps,
    any other action (about 2.2 a step) is worth more, as long as the best one comes last."""
    model, cfg, codec = planner_model("discrete")
    best, D = planner_targets["discrete"], cfg.model.deter_dim
    rollout = Rollout.from_model(model, codec)
    state = observed(rollout)
    assert planner_on(rollout, horizon=8, iterations=4).act(state) == best  # the continuation is ~1 everywhere
    with torch.no_grad():  # continuation logit 20 - 10 silu(z[best]): about -20 after the best action, 20 otherwise
        model.heads.cont[0].weight[0, D + best] = 1.0
        model.heads.cont[2].weight[0, 0] = -10.0
    planner = planner_on(rollout, horizon=8, iterations=4)
    assert planner.act(state) != best
    assert planner.last_plan.cont[0] > 0.99 and planner.last_plan.actions[-1] == best


def test_planner_keeps_every_candidate_within_the_bounds(continuous_rollout, monkeypatch):
    # The optimum's brake (0.2) lies above this upper bound: the planner must stop at the bound, not beyond.
    low, high = [-0.5, 0.0, 0.0], [0.5, 1.0, 0.1]
    recorder = ImagineRecorder(continuous_rollout, monkeypatch)
    planner = Planner(continuous_rollout, bounds=(low, high), **SETTINGS)
    state = observed(continuous_rollout)
    actions = np.stack([planner.act(state) for _ in range(3)])
    candidates = np.concatenate(recorder.calls)  # [calls * N, H, A]
    assert len(recorder.calls) == 3 * SETTINGS["iterations"]
    assert (candidates >= np.float32(low)).all() and (candidates <= np.float32(high)).all()
    assert candidates[..., 2].max() == pytest.approx(0.1)  # the bound itself is reached (clipped samples)
    assert (actions[:, 2] > 0.05).all(), f"brake {actions[:, 2]} should press against its bound 0.1"


def test_planner_is_deterministic_for_a_seed(continuous_rollout):
    state = observed(continuous_rollout)
    first, again, other = (planner_on(continuous_rollout, iterations=2, seed=seed) for seed in (3, 3, 4))
    plans = [np.stack([p.act(state) for _ in range(4)]) for p in (first, again, other)]
    np.testing.assert_array_equal(plans[0], plans[1])
    assert not np.array_equal(plans[0], plans[2])


def test_reset_forgets_the_previous_plan_and_reseeds(continuous_rollout):
    state = observed(continuous_rollout)
    used = planner_on(continuous_rollout, iterations=1, seed=1)
    fresh_action = planner_on(continuous_rollout, iterations=1, seed=1).act(state)
    first = used.act(state)
    for _ in range(3):
        used.act(state)
    used.reset(seed=1)
    np.testing.assert_array_equal(used.act(state), fresh_action)
    np.testing.assert_array_equal(first, fresh_action)


def test_planner_replays_its_previous_plan_shifted_one_step(continuous_rollout, monkeypatch):
    recorder = ImagineRecorder(continuous_rollout, monkeypatch)
    planner = planner_on(continuous_rollout, horizon=4, iterations=2, replay=4)
    state = observed(continuous_rollout)
    planner.act(state)
    chosen = planner.last_plan.actions  # [H, A]
    planner.act(state)
    second_tick = recorder.calls[2]  # after the first tick's 2 iterations
    shifted = np.concatenate([chosen[1:], chosen[-1:]])
    np.testing.assert_allclose(second_tick[0], shifted, atol=1e-6)


def test_planner_plans_alike_on_torch_and_onnxruntime(planner_model, tmp_path):
    from wm_core.checkpoint import save_checkpoint
    from wm_export import export_artifacts

    model, cfg, codec = planner_model("continuous")
    save_checkpoint(tmp_path / "planner.pt", model, cfg, codec)
    folder = export_artifacts(tmp_path / "planner.pt", tmp_path / "artifacts")
    rollouts = {name: Rollout.load(folder, backend=name, device="cpu") for name in ("torch", "onnxruntime")}
    actions = {}
    for name, rollout in rollouts.items():
        planner = planner_on(rollout, iterations=3)
        state = observed(rollout)
        actions[name] = np.stack([planner.act(state) for _ in range(3)])
        assert planner.last_plan.reward is not None  # the exported prior step predicts rewards too
    # The elites of this model are far apart compared with the backends' 1e-5 differences, so both pick the same
    # candidates; what differs is the refit mean's last digits.
    np.testing.assert_allclose(actions["onnxruntime"], actions["torch"], atol=1e-4)


@pytest.mark.parametrize("mode", ["continuous", "discrete"])
def test_planner_plans_alike_on_numpy_and_torch_arrays(planner_model, mode):
    """On a GPU the planner computes with torch tensors on the device; here that path runs on the CPU, against
    the numpy one, from the same draws."""
    model, _, codec = planner_model(mode)
    rollout = Rollout.from_model(model, codec)
    state = observed(rollout)
    plans = {}
    for arrays in ("numpy", "torch"):
        planner = planner_on(rollout, iterations=3, arrays=arrays)
        actions = [planner.act(state) for _ in range(3)]
        plans[arrays] = (np.asarray(actions), planner.last_plan)
    np.testing.assert_allclose(plans["torch"][0], plans["numpy"][0], atol=1e-5)
    np.testing.assert_allclose(plans["torch"][1].z, plans["numpy"][1].z, atol=1e-4)
    assert plans["torch"][1].value == pytest.approx(plans["numpy"][1].value, abs=1e-4)


@pytest.mark.parametrize("mode", ["continuous", "discrete"])
def test_a_tick_on_device_arrays_reads_back_to_the_host_once(planner_model, mode, monkeypatch):
    """On a GPU every host read of a device tensor (item, int(), bool(), tolist, numpy) waits for the device. The
    torch path, run here on the CPU, must make none inside a tick but the one copy of Arrays.to_host, and the
    Rollout's finiteness check (another wait) must not run on the planner's trusted path."""
    model, _, codec = planner_model(mode)
    rollout = Rollout.from_model(model, codec)
    observed_state = observed(rollout)
    state = LatentState(torch.as_tensor(observed_state.h), torch.as_tensor(observed_state.z))
    planner = planner_on(rollout, iterations=3, arrays="torch")
    expected = [planner.act(state) for _ in range(2)]
    planner.reset(seed=SETTINGS["seed"])

    def host_read(*args, **kwargs):
        raise AssertionError("a tick read a tensor back to the host")

    numpy = torch.Tensor.numpy
    reads = []

    def to_host(parts):
        reads.append(len(parts))
        return numpy(torch.cat([p.reshape(-1).double() for p in parts]).cpu())

    monkeypatch.setattr(planner.xp, "to_host", to_host)
    monkeypatch.setattr("wm_deploy.validation.check_finite", host_read)
    for name in ("item", "tolist", "numpy", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    actions = [planner.act(state) for _ in range(2)]
    monkeypatch.undo()
    assert len(reads) == 2
    np.testing.assert_array_equal(np.asarray(actions), np.asarray(expected))


@pytest.mark.parametrize("model_kind", ["continuous", "discrete", "actor", "mean"])
def test_the_tick_graphs_fixed_buffers_carry_ticks_over_as_the_eager_path(planner_model, untrained_model, model_kind):
    """On a GPU the tick graph replays Planner._search on fixed buffers (wm_deploy.tick_graph). Run eagerly on
    the CPU, on those buffers, its ticks must be the planner's own to the last bit: through an episode's first tick
    (no replayed elites: the eager path), the captured shape, a reset, the actor's plan, execute="mean"."""
    if model_kind == "actor":
        model, _, codec = untrained_model("tiny", "continuous", actor_critic=True)
    else:
        model, _, codec = planner_model("continuous" if model_kind == "mean" else model_kind)
    rollout = Rollout.from_model(model, codec)
    first = observed(rollout)
    states = [LatentState(torch.as_tensor(first.h), torch.as_tensor(first.z))]
    states.append(LatentState(states[0].h.flip(-1), states[0].z.flip(-1)))
    extra = {"execute": "mean"} if model_kind == "mean" else {}
    plans = {}
    for graph in (False, True):
        planner = planner_on(rollout, iterations=2, replay=4, arrays="torch", **extra)
        assert planner._tick_graph is None  # not on a CPU
        if graph:
            planner._tick_graph = TickGraph(planner, compile=lambda tick, device: tick)
        plans[graph] = []
        for episode in range(2):
            planner.reset(seed=episode)
            plans[graph] += [planner.plan(states[tick % 2]) for tick in range(3)]
        assert planner._tick_graph is None or planner._tick_graph.captured
    for eager, graph in zip(plans[False], plans[True]):
        np.testing.assert_array_equal(graph.actions, eager.actions)
        np.testing.assert_array_equal(graph.z, eager.z)
        assert graph.value == eager.value


# --- bad input ----------------------------------------------------------------------------------------------


def test_planner_on_a_model_without_heads_needs_a_goal(untrained_model):
    model, _, codec = untrained_model("tiny", "continuous")
    with pytest.raises(ValueError, match="predicts no rewards.*no goal frame"):
        Planner(Rollout.from_model(model, codec), bounds=BOUNDS)


@pytest.mark.parametrize(
    "bounds, message",
    [
        (([-1.0, 0.0], [1.0, 1.0]), "width 3 each, got 2 and 2"),
        (([-1.0, 0.0, 0.0], [1.0, 0.0, 1.0]), "low < high in every dimension"),
        (([-1.0, 0.0, 0.0], [1.0, np.inf, 1.0]), "must be finite"),
        (None, "records no action bounds.*pass bounds="),
    ],
)
def test_planner_refuses_bounds_that_do_not_fit_the_actions(continuous_rollout, bounds, message):
    with pytest.raises(ValueError, match=message):
        Planner(continuous_rollout, goal=GOAL, bounds=bounds)


def test_planner_refuses_bounds_beyond_the_recorded_ones(planner_model):
    model, _, codec = planner_model("continuous")
    bounded = dataclasses.replace(codec, low=(-1.0, 0.0, 0.0), high=(1.0, 1.0, 1.0))
    rollout = Rollout.from_model(model, bounded)
    with pytest.raises(ValueError, match=r"reach outside the action codec's low=\[-1.0, 0.0, 0.0\]"):
        Planner(rollout, goal=GOAL, bounds=([-2.0, 0.0, 0.0], [1.0, 1.0, 1.0]))
    narrowed = Planner(rollout, goal=GOAL, bounds=([-0.5, 0.0, 0.0], [0.5, 1.0, 0.5]))
    assert narrowed.low.tolist() == [-0.5, 0.0, 0.0] and narrowed.high.tolist() == [0.5, 1.0, 0.5]
    assert Planner(rollout, goal=GOAL).high.tolist() == [1.0, 1.0, 1.0]  # the recorded bounds by default


def test_planner_refuses_bounds_for_discrete_actions(planner_model):
    model, _, codec = planner_model("discrete")
    with pytest.raises(ValueError, match="bounds apply to continuous actions"):
        Planner(Rollout.from_model(model, codec), goal=GOAL, bounds=BOUNDS)


def test_planner_refuses_more_samples_than_the_rollout_takes_at_once(planner_model):
    model, _, codec = planner_model("continuous")
    rollout = Rollout.from_model(model, codec, max_batch=64)
    with pytest.raises(ValueError, match="samples=128 exceeds the rollout's maximum batch 64"):
        Planner(rollout, goal=GOAL, bounds=BOUNDS, samples=128)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(horizon=0), "horizon must be >= 1"),
        (dict(elites=300), r"elites must be in \[1, samples=256\]"),
        (dict(replay=40), "replay must be in"),
        (dict(temperature=float("nan")), "temperature must be finite"),
        (dict(min_std=0.5, max_std=0.1), "min_std <= max_std"),
        (dict(discount=1.5), "discount must be in"),
        (dict(action_penalty=-0.1), "action_penalty must be finite and >= 0"),
        (dict(samplez=3), r"unknown setting\(s\) \['samplez'\]"),
    ],
)
def test_planner_refuses_settings_out_of_range(continuous_rollout, settings, message):
    with pytest.raises(ValueError, match=message):
        Planner(continuous_rollout, goal=GOAL, bounds=BOUNDS, **settings)


def test_planner_refuses_a_non_finite_state(continuous_rollout):
    planner = planner_on(continuous_rollout)
    state = observed(continuous_rollout)
    h = state.h.copy()
    h[0, 3] = np.nan
    with pytest.raises(ValueError, match="state.h contains NaN"):
        planner.act(LatentState(h, state.z))


def test_planner_refuses_a_state_of_several_frames_or_none(continuous_rollout):
    planner = planner_on(continuous_rollout)
    state = continuous_rollout.observe(continuous_rollout.initial(2), np.stack([GOAL, GOAL]))
    with pytest.raises(ValueError, match="one state at a time; got a state of batch 2"):
        planner.act(state)
    with pytest.raises(ValueError, match="has seen no frame"):
        planner.act(continuous_rollout.initial(1))


def test_data_prior_searches_near_the_training_actions_and_bounds_prior_the_whole_box():
    # CarRacing's codec: steering in [-1, 1], gas and brake in [0, 1]; the training actions brake rarely.
    low, high = np.array([-1.0, 0.0, 0.0], np.float32), np.array([1.0, 1.0, 1.0], np.float32)
    mean, std = np.array([-0.14, 0.26, 0.011], np.float32), np.array([0.56, 0.18, 0.066], np.float32)
    xp = Arrays(torch.device("cpu"))
    rng = np.random.default_rng(0)
    data = Gaussian(xp, low, high, horizon=4, min_std=0.05, max_std=1.0, prior=(mean, 2 * std))
    actions = data.to_actions(data.sample(data.draw(rng, 4096))).reshape(-1, 3)  # [N*H, A]
    assert ((actions >= low) & (actions <= high)).all()
    assert abs(actions[:, 1].mean() - 0.26) < 0.05 and actions[:, 1].std() < 2 * 0.18 + 0.02
    assert np.quantile(actions[:, 2], 0.9) < 0.2  # brake stays near what the model has seen
    box = Gaussian(xp, low, high, horizon=4, min_std=0.05, max_std=1.0)
    actions = box.to_actions(box.sample(box.draw(rng, 4096))).reshape(-1, 3)
    assert abs(actions[:, 2].mean() - 0.5) < 0.05 and np.quantile(actions[:, 2], 0.9) > 0.8


def test_action_penalty_holds_the_search_near_the_training_actions_where_rewards_tie(planner_model):
    # Every candidate earns the same reward here, as the brake does in a model that never saw it. The search starts
    # in the middle of the box (brake 0.5, 3.5 training stds out): without the penalty nothing brings it back.
    model, _, _ = planner_model("continuous")
    with torch.no_grad():
        model.heads.reward[2].weight.zero_()  # the predicted reward: REWARD_AT_TARGET whatever the actions
    mean, std = np.array([0.0, 0.36, 0.04]), np.array([0.7, 0.21, 0.13])  # CarRacing's training actions
    codec = ActionCodec("continuous", 3, tuple(mean), tuple(std), *BOUNDS)
    rollout = Rollout.from_model(model, codec)
    state = observed(rollout)
    beyond = {}
    for penalty in (0.0, 1.0):
        planner = Planner(rollout, **{**SETTINGS, "prior": "bounds", "action_penalty": penalty})
        actions = np.stack([planner.act(state) for _ in range(5)])  # [ticks, A]
        beyond[penalty] = (np.abs(actions - mean) / std - DATA_PRIOR_SCALE).max()
    assert beyond[0.0] > 0.5, "without the penalty the search should stay where it started, far from the data"
    assert beyond[1.0] < 0.2, f"the penalty should hold every action within {DATA_PRIOR_SCALE} training stds"


@pytest.mark.parametrize("arrays", ["numpy", "torch"])
def test_action_penalty_is_zero_within_the_training_actions_and_grows_squared_beyond(continuous_rollout, arrays):
    planner = planner_on(continuous_rollout, horizon=2, discount=0.5, action_penalty=3.0, arrays=arrays)
    mean, std = (np.asarray(x, np.float32) for x in (continuous_rollout.codec.mean, continuous_rollout.codec.std))
    inside = np.broadcast_to(mean + 1.9 * std, (1, 2, 3)).copy()  # [N, H, A]
    outside = (mean - (DATA_PRIOR_SCALE + np.array([0.0, 0.0, 1.0])) * std)[None, None].repeat(2, 1)
    assert float(planner._penalty(planner.xp.asarray(inside))[0]) == 0.0
    penalty = float(planner._penalty(planner.xp.asarray(outside))[0])
    assert penalty == pytest.approx(3.0 * (1.0 + 0.5))  # 1 std beyond in one dimension, squared, discounted


def test_action_penalty_refuses_discrete_actions(planner_model):
    model, _, codec = planner_model("discrete")
    with pytest.raises(ValueError, match="action_penalty applies to continuous actions"):
        Planner(Rollout.from_model(model, codec), action_penalty=0.1)
