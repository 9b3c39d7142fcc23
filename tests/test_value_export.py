"""The value output of the prior step and the actor's `policy` graph: exported, parity-gated, and the same on the
torch and onnxruntime backends (Rollout.imagine's value, Rollout.policy, Rollout.policy_plan)."""

import json

import numpy as np
import pytest

from wm_core.manifest import has_policy, has_value
from wm_deploy import Rollout
from wm_export import export_artifacts
from wm_export.parity import ONNXRUNTIME_TOLERANCES

MODES = ["continuous", "discrete"]


@pytest.fixture(scope="module")
def exported(untrained_checkpoint, tmp_path_factory, one_torch_thread):
    folder = tmp_path_factory.mktemp("value_export")
    made = {}
    for mode in MODES:
        checkpoint = untrained_checkpoint(action_mode=mode, actor_critic=True)
        made[mode] = (checkpoint, export_artifacts(checkpoint, folder / mode))
    return made


@pytest.mark.parametrize("mode", MODES)
def test_value_and_policy_are_exported_and_gated(exported, mode):
    _, folder = exported[mode]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format_version"] == 3 and has_value(manifest) and has_policy(manifest)
    assert manifest["graphs"]["prior_step"]["outputs"]["value"] == {"dtype": "float32", "shape": ["batch"]}
    assert manifest["graphs"]["policy"]["inputs"] == {
        "h": {"dtype": "float32", "shape": ["batch", 32]},
        "z": {"dtype": "float32", "shape": ["batch", 8]},
    }
    report = manifest["parity"]["onnxruntime"]
    for output in ("prior_step.value", "policy.action"):
        assert report[output]["max_abs"] <= ONNXRUNTIME_TOLERANCES.latent


def test_a_folder_without_a_critic_has_no_value(tiny_artifacts):
    manifest = json.loads((tiny_artifacts("continuous") / "manifest.json").read_text())
    assert not has_value(manifest) and not has_policy(manifest)
    rollout = Rollout.load(tiny_artifacts("continuous"), "onnxruntime", "cpu")
    state = rollout.observe(rollout.initial(1), np.zeros((1, 64, 64, 3), np.uint8))
    assert rollout.imagine(state, np.zeros((1, 2, 3), np.float32)).value is None
    with pytest.raises(ValueError, match="no actor"):
        rollout.policy(state)


@pytest.mark.parametrize("mode", MODES)
def test_onnxruntime_value_and_policy_match_torch(exported, codecs, mode):
    checkpoint, folder = exported[mode]
    rollouts = [Rollout.load(checkpoint, "torch", "cpu"), Rollout.load(folder, "onnxruntime", "cpu")]
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    if mode == "discrete":
        actions = rng.integers(0, codecs[mode].dim, (5, 6))
    else:
        actions = rng.uniform(-1, 1, (5, 6, 3)).astype(np.float32)
    results = []
    for rollout in rollouts:
        assert rollout.has_value and rollout.has_policy
        state = rollout.observe(rollout.initial(5), frames)
        trajectory = rollout.imagine(state, actions)
        assert trajectory.value.shape == (5, 6)
        results.append((trajectory.value, rollout.policy(state), rollout.policy_plan(state, 4)))
    (value_t, action_t, plan_t), (value_o, action_o, plan_o) = results
    np.testing.assert_allclose(value_o, value_t, atol=1e-4)
    if mode == "discrete":
        assert action_t.dtype == np.int64 and plan_t.shape == (5, 4)
        np.testing.assert_array_equal(action_o, action_t)
        np.testing.assert_array_equal(plan_o, plan_t)
    else:
        assert action_t.shape == (5, 3) and plan_t.shape == (5, 4, 3)
        np.testing.assert_allclose(action_o, action_t, atol=1e-4)
        np.testing.assert_allclose(plan_o, plan_t, atol=1e-4)
        codec = codecs[mode]
        if codec.low:
            assert (plan_t >= np.asarray(codec.low) - 1e-6).all() and (plan_t <= np.asarray(codec.high) + 1e-6).all()
    np.testing.assert_array_equal(plan_t[:, 0], action_t)  # the plan's first action is the policy's
