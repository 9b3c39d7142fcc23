"""Action repeat (wm_core.action_repeat): the wrapper's hold-and-sum, and K travelling from wm-collect's meta.json
through training and export to `Rollout.action_repeat` and wm-control, which holds each decision K environment
steps and counts its episodes in environment steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from wm_core.action_repeat import ActionRepeat
from wm_core.envs import env_frameskip, make_env


class Counter(gym.Env):
    """Step t (from 1) returns observation [t] and reward t; terminates at step `end` when given."""

    observation_space = gym.spaces.Box(0.0, 1e6, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, end: int | None = None):
        self.end, self.t = end, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), float(self.t), self.t == self.end, False, {"t": self.t}


def test_a_step_holds_the_action_k_steps_and_sums_their_rewards():
    env = ActionRepeat(Counter(), 3)
    env.reset()
    observation, reward, terminated, truncated, info = env.step(0)
    assert observation.tolist() == [3.0] and reward == 1 + 2 + 3 and not terminated and not truncated
    assert info == {"t": 3, "frames": 3}  # the last step's info, and the environment steps taken
    observation, reward, *_ = env.step(1)
    assert observation.tolist() == [6.0] and reward == 4 + 5 + 6
    observation, reward, _, _, info = env.hold(1, 1)  # one environment step, whatever K
    assert observation.tolist() == [7.0] and reward == 7 and info["frames"] == 1


def test_a_termination_inside_a_hold_ends_it_terminated():
    env = ActionRepeat(Counter(end=5), 3)
    env.reset()
    env.step(0)
    observation, reward, terminated, truncated, info = env.step(0)
    assert observation.tolist() == [5.0] and reward == 4 + 5 and terminated and not truncated and info["frames"] == 2


def test_a_truncation_inside_a_hold_ends_it_truncated_not_terminated():
    env = ActionRepeat(gym.wrappers.TimeLimit(Counter(), max_episode_steps=4), 3)
    env.reset()
    env.step(0)
    _, reward, terminated, truncated, info = env.step(0)
    assert reward == 4 and truncated and not terminated and info["frames"] == 1


def test_action_repeat_must_be_a_positive_integer():
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"action_repeat must be an integer >= 1, got"):
            ActionRepeat(Counter(), bad)
    with pytest.raises(ValueError, match="frames must be >= 1"):
        ActionRepeat(Counter(), 2).hold(0, 0)


def test_make_env_wraps_with_the_action_repeat_on_top_of_the_environments_frameskip():
    pong = make_env("ALE/Pong-v5", action_repeat=2)
    car = make_env("CarRacing-v3")
    try:
        assert isinstance(pong, ActionRepeat) and pong.repeat == 2 and env_frameskip(pong) == 4
        assert isinstance(car, ActionRepeat) and car.repeat == 1 and env_frameskip(car) == 1
    finally:
        pong.close()
        car.close()


# --- end to end ---------------------------------------------------------------------------------------------


def _module(*args: str) -> subprocess.CompletedProcess:
    """A command of this checkout, as `python -m module ...` (the console scripts may point at another one)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def repeat_run(tmp_path_factory, tiny_config):
    """wm-collect --action-repeat 2 (CarRacing, 4 episodes of 12 decisions), one epoch of the tiny model with
    heads, wm-export -> (data folder, checkpoint, artifact folder)."""
    import torch

    from wm_export import export_artifacts
    from wm_train.trainer import train

    folder = tmp_path_factory.mktemp("repeat")
    data = folder / "data"
    command = ["wm_train.cli", "collect", "CarRacing-v3", "-o", str(data), "--episodes", "4", "--steps", "12"]
    collected = _module(*command, "--action-repeat", "2", "--workers", "1", "--no-progress")
    assert collected.returncode == 0, collected.stderr
    cfg = tiny_config(data, folder / "run", epochs=1)
    cfg.model.heads = True
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, progress=False)
        artifacts = export_artifacts(folder / "run" / "best.pt", folder / "artifacts")
    finally:
        torch.set_num_threads(threads)
    return data, folder / "run" / "best.pt", artifacts


def test_the_action_repeat_travels_from_meta_json_to_the_checkpoint_manifest_and_rollout(repeat_run):
    from wm_core.checkpoint import load_checkpoint
    from wm_core.manifest import load_manifest
    from wm_deploy import Rollout

    data, checkpoint, artifacts = repeat_run
    assert json.loads((data / "meta.json").read_text())["action_repeat"] == 2
    assert load_checkpoint(checkpoint)[2]["action_repeat"] == 2
    assert load_manifest(artifacts)["action_repeat"] == 2
    assert Rollout.load(artifacts, backend="onnxruntime", device="cpu").action_repeat == 2
    assert Rollout.load(checkpoint, backend="torch", device="cpu").action_repeat == 2


def test_control_holds_each_decision_k_steps_and_counts_environment_steps(repeat_run, tmp_path):
    from wm_deploy import PlannerSettings, Rollout
    from wm_deploy.control import PLANNER, run_control

    _, _, artifacts = repeat_run
    fast = PlannerSettings(horizon=2, samples=8, iterations=1, elites=2, replay=1)
    rollout = Rollout.load(artifacts, backend="onnxruntime", device="cpu")
    result = run_control(rollout, "CarRacing-v3", episodes=1, steps=7, seed=3, settings=fast, references=["random"])
    assert result.action_repeat == 2
    for name in (PLANNER, "random"):
        episode = result.episodes[name][0]
        assert episode.length == 7 and episode.seconds.shape == (4, 3), name  # 3 holds of 2, then 1 step

    out = tmp_path / "control"
    settings = ["--horizon", "2", "--samples", "8", "--iterations", "1", "--elites", "2", "--replay", "1"]
    command = [str(artifacts), "--episodes", "1", "--steps", "6", "--no-video", "--no-progress", "--out", str(out)]
    ran = _module("wm_deploy.cli", *command, "--action-repeat", "2", *settings)
    assert ran.returncode == 0, ran.stderr
    report = json.loads((out / "control.json").read_text())
    assert report["action_repeat"] == 2 and report["steps"] == 6
    assert all(p["episodes"][0]["length"] == 6 for p in report["policies"].values())

    refused = _module("wm_deploy.cli", *command, "--action-repeat", "4", *settings)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "--action-repeat 4 asked for, but" in refused.stderr and "action_repeat 2" in refused.stderr


def test_saved_planner_episodes_must_match_the_folders_action_repeat(repeat_run, tmp_path):
    from wm_deploy.control import check_episode_folder

    data, _, _ = repeat_run
    check_episode_folder(data, "CarRacing-v3", 64, [100], action_repeat=2)
    with pytest.raises(ValueError, match="recorded with action_repeat 2, the model holds each action 1"):
        check_episode_folder(data, "CarRacing-v3", 64, [100], action_repeat=1)


def test_resuming_on_data_of_another_action_repeat_is_refused(repeat_run, tmp_path, tiny_config):
    import shutil

    from wm_train.trainer import Trainer

    data, checkpoint, _ = repeat_run
    shutil.copytree(data, tmp_path / "data")
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    (tmp_path / "data" / "meta.json").write_text(json.dumps({**meta, "action_repeat": 1}))
    (tmp_path / "run").mkdir()
    shutil.copy(checkpoint.parent / "last.pt", tmp_path / "run" / "last.pt")
    cfg = tiny_config(tmp_path / "data", tmp_path / "run", epochs=2)
    cfg.model.heads = True
    refused = r"last.pt was trained on data recorded with action_repeat 2, .* holds action_repeat 1"
    with pytest.raises(ValueError, match=refused):
        Trainer(cfg, progress=False).resume()
