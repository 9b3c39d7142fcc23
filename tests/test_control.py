"""Closed-loop control (wm_deploy.control, control_report, `wm-control`) on real gymnasium environments with tiny
models: the report's fields and files, repeatability for a seed, discrete actions, the recording policy's name,
and bad input refused in one line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import gymnasium
import numpy as np
import pytest

from wm_core import envs
from wm_deploy import PlannerSettings, Rollout
from wm_deploy.control import PLANNER, explore, planner_bounds, recording_policy, run_control
from wm_deploy.control_report import write_report
from wm_train.data import load_episode

FAST = PlannerSettings(horizon=3, samples=16, iterations=1, elites=4, replay=2)
"""a planner setting that makes a tick cheap: these tests check the loop, not the plans"""


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Many small torch calls: one thread is faster (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def heads_artifacts(untrained_checkpoint, tmp_path_factory):
    """The artifact folder of the tiny untrained continuous model with heads (no recorded action bounds)."""
    from wm_export import export_artifacts

    checkpoint = untrained_checkpoint("tiny", "continuous", heads=True)
    return export_artifacts(checkpoint, tmp_path_factory.mktemp("control") / "artifacts")


def wm_control(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wm_deploy.cli", *args], capture_output=True, text=True, timeout=300)


def test_wm_control_end_to_end_writes_the_report_plot_and_video(heads_artifacts, tmp_path):
    out = tmp_path / "control"
    settings = ["--horizon", "3", "--samples", "16", "--iterations", "1", "--elites", "4", "--replay", "2"]
    result = wm_control(
        str(heads_artifacts), "--env", "CarRacing-v3", "--episodes", "2", "--steps", "4", "--seed", "7",
        "--out", str(out), "--no-progress", *settings,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"wrote {out / 'control.json'}" in result.stdout
    report = json.loads((out / "control.json").read_text())
    assert report["env"] == "CarRacing-v3" and report["backend"] == "onnxruntime" and report["objective"] == "reward"
    assert report["planner"]["samples"] == 16 and report["skip_start"] == 50
    assert report["reference_policy"] == "carracing-driver"  # wm-collect's, as the checkpoint's data is not there
    assert list(report["policies"]) == [PLANNER, "carracing-driver", "random"]
    for name, entry in report["policies"].items():
        assert [e["seed"] for e in entry["episodes"]] == [7, 8], name
        assert all(e["length"] == 4 and np.isfinite(e["return"]) for e in entry["episodes"]), name
        assert set(entry["latency_ms"]) == {"observe", "plan", "env", "tick"}
        assert entry["latency_ms"]["env"]["p50"] > 0
    assert report["policies"][PLANNER]["latency_ms"]["plan"]["p50"] > 0
    assert report["files"] == {"returns_plot": "returns.png", "video": "episode.gif"}
    from PIL import Image

    with Image.open(out / "episode.gif") as gif:
        assert gif.n_frames == 4 and gif.size == (2 * 3 * 64, 14 + 3 * 64)  # real | imagined, 3x, under a header
    with Image.open(out / "returns.png") as plot:
        assert plot.format == "PNG"


def test_wm_control_plans_on_several_models_as_an_ensemble(heads_artifacts, tmp_path):
    out = tmp_path / "ensemble"
    settings = ["--horizon", "3", "--samples", "16", "--iterations", "1", "--elites", "4", "--replay", "2"]
    result = wm_control(
        str(heads_artifacts), str(heads_artifacts), "--episodes", "1", "--steps", "2", "--no-references",
        "--no-video", "--out", str(out), "--no-progress", "--disagreement", "1", *settings,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "control.json").read_text())
    assert report["backend"] == "2 x onnxruntime" and report["source"] == f"{heads_artifacts}, {heads_artifacts}"
    assert report["objective"] == "reward: mean - 1 x std of 2 models"
    assert report["policies"][PLANNER]["episodes"][0]["length"] == 2


def test_wm_control_saves_the_planner_episodes_as_training_episodes(heads_artifacts, tmp_path):
    folder = tmp_path / "data"
    settings = ["--horizon", "2", "--samples", "8", "--iterations", "1", "--elites", "2", "--replay", "1"]
    command = [str(heads_artifacts), "--episodes", "2", "--steps", "5", "--seed", "7", "--no-references"]
    command += ["--no-video", "--no-progress", "--out", str(tmp_path / "control"), "--save-episodes", str(folder)]
    result = wm_control(*command, *settings)
    assert result.returncode == 0, result.stderr
    assert f"wrote 2 planner episode(s) to {folder}" in result.stdout
    for seed in (7, 8):
        path = folder / f"planner_{seed:05d}.npz"
        obs, action = load_episode(path, "continuous", 3, 64)  # what training reads
        with np.load(path) as episode:
            reward, terminated = episode["reward"], episode["terminated"]
        assert obs.shape == (5, 64, 64, 3) and action.shape == (5, 3) and reward.shape == terminated.shape == (5,)
        assert action[:, 1:].min() >= 0 and np.abs(action[:, 0]).max() <= 1  # CarRacing's box
        assert terminated.dtype == bool and not terminated.any() and np.isfinite(reward).all()
    again = wm_control(*command, "--overwrite", *settings)  # the same seeds into the same folder
    assert again.returncode == 1 and "already holds planner_00007.npz, planner_00008.npz" in again.stderr
    other = tmp_path / "pong"
    other.mkdir()
    header = {"format": "wm-episodes", "format_version": 1}
    (other / "meta.json").write_text(json.dumps({**header, "env_id": "ALE/Pong-v5", "frame_size": 64}))
    mismatch = wm_control(*command[:-1], str(other), "--overwrite", *settings)
    assert mismatch.returncode == 1 and "episodes of ALE/Pong-v5 at 64 px, not CarRacing-v3" in mismatch.stderr
    assert not list(other.glob("*.npz"))  # refused before any episode ran


def test_wm_control_has_one_option_per_planner_setting():
    from wm_deploy.cli import control_command

    options = {param.name: param for param in control_command.params}
    for setting in dataclasses.fields(PlannerSettings):
        if setting.name == "seed":  # --seed seeds the episodes and the planner
            continue
        option = options[setting.name]
        assert option.opts == [f"--{setting.name.replace('_', '-')}"] and option.default == setting.default
    assert options["prior"].type.choices == ("data", "bounds")
    bad = wm_control("artifacts", "--samples", "8", "--elites", "9")  # a usage error, before any file is read
    assert bad.returncode == 2 and "elites must be in [1, samples=8]" in bad.stderr


def test_wm_control_refuses_bad_input_in_one_line(heads_artifacts, tiny_artifacts, tmp_path):
    missing = wm_control(str(tmp_path / "nothing"), "--no-progress")
    assert missing.returncode == 1 and missing.stderr.startswith("Error: ") and "nothing" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    no_heads = wm_control(str(tiny_artifacts("continuous")), "--steps", "1", "--no-progress")
    assert no_heads.returncode == 1 and "predicts no rewards" in no_heads.stderr
    discrete_on_box = wm_control(str(tiny_artifacts("discrete")), "--steps", "1", "--no-progress")
    assert discrete_on_box.returncode == 1 and "discrete actions" in discrete_on_box.stderr
    policy = wm_control(str(heads_artifacts), "--reference-policy", "driver", "--no-progress")
    assert policy.returncode == 1 and "--reference-policy must be one of" in policy.stderr
    alone = wm_control(str(heads_artifacts), "--disagreement", "1", "--no-progress")
    assert alone.returncode == 1 and "--disagreement needs several models" in alone.stderr
    assert all("Traceback" not in r.stderr for r in (missing, no_heads, discrete_on_box, policy, alone))


def test_planner_episodes_repeat_for_a_seed(heads_artifacts):
    rollout = Rollout.load(heads_artifacts, backend="onnxruntime", device="cpu")
    runs = [
        run_control(rollout, "CarRacing-v3", episodes=1, steps=6, seed=3, settings=FAST, record=False) for _ in range(2)
    ]
    first, second = (run.episodes[PLANNER][0] for run in runs)
    assert first.episode_return == second.episode_return and first.length == second.length == 6
    assert runs[0].episodes.keys() == {PLANNER}  # no references asked for


def test_control_drives_discrete_actions_in_pong(untrained_checkpoint, tmp_path):
    rollout = Rollout.load(untrained_checkpoint("tiny", "discrete", heads=True), backend="torch", device="cpu")
    result = run_control(
        rollout, "ALE/Pong-v5", episodes=1, steps=5, seed=0, settings=FAST, references=["random"], record=True
    )
    planned = result.episodes[PLANNER][0]
    assert planned.length == 5 and planned.seconds.shape == (5, 3)
    assert len(planned.frames) == 5 and planned.frames[0][1].shape == (64, 64, 3)  # real and imagined frames
    report = json.loads(write_report(result, tmp_path / "pong").read_text())
    assert report["skip_start"] == 0 and report["policies"]["random"]["episodes"][0]["length"] == 5


def test_bounds_come_from_the_environment_and_must_match_the_recorded_ones(untrained_model):
    model, _, codec = untrained_model("tiny", "continuous", heads=True)
    env = envs.make_env("CarRacing-v3")
    try:
        low, high = planner_bounds(env, Rollout.from_model(model, codec))  # the codec records none
        assert low.tolist() == [-1.0, 0.0, 0.0] and high.tolist() == [1.0, 1.0, 1.0]
        recorded = dataclasses.replace(codec, low=(-1.0, 0.0, 0.0), high=(1.0, 1.0, 1.0))
        assert planner_bounds(env, Rollout.from_model(model, recorded)) is None  # the codec's are the env's
        other = dataclasses.replace(codec, low=(-1.0, 0.0, 0.0), high=(1.0, 0.5, 1.0))
        with pytest.raises(ValueError, match=r"action-bound mismatch: .* high=\[1.0, 0.5, 1.0\]"):
            planner_bounds(env, Rollout.from_model(model, other))
    finally:
        env.close()


def test_recording_policy_is_read_from_the_data_meta_json(tmp_path):
    meta = {"format": "wm-episodes", "format_version": 1}
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "policy": "random"}))
    assert recording_policy("CarRacing-v3", "unused", data=tmp_path) == ("random", str(tmp_path / "meta.json"))
    name, where = recording_policy("CarRacing-v3", tmp_path / "no-such-checkpoint.pt")
    assert name == "carracing-driver" and "no meta.json" in where
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "policy": "autopilot"}))
    with pytest.raises(ValueError, match="policy 'autopilot' is not one of"):
        recording_policy("CarRacing-v3", "unused", data=tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"policy": "random"}))
    with pytest.raises(ValueError, match="not a dataset meta.json"):
        recording_policy("CarRacing-v3", "unused", data=tmp_path)


def test_control_leaves_the_trainer_unimported(heads_artifacts):
    script = (
        "import sys\n"
        "from wm_deploy import PlannerSettings, Rollout\n"
        "from wm_deploy.control import run_control\n"
        f"ro = Rollout.load({str(heads_artifacts)!r}, device='cpu')\n"
        "fast = PlannerSettings(horizon=2, samples=8, iterations=1, elites=2, replay=1)\n"
        "run_control(ro, 'CarRacing-v3', episodes=1, steps=2, seed=0, settings=fast, references=['random'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('wm_train')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    assert result.stdout.strip() == "[]", f"the control loop imported {result.stdout.strip()}"


def test_the_report_folder_is_replaced_only_when_it_is_an_earlier_report_and_with_overwrite(
    untrained_checkpoint, tmp_path
):
    rollout = Rollout.load(untrained_checkpoint("tiny", "discrete", heads=True), backend="torch", device="cpu")
    result = run_control(rollout, "ALE/Pong-v5", episodes=1, steps=3, seed=0, settings=FAST, references=[])
    out = tmp_path / "control"
    write_report(result, out)
    with pytest.raises(FileExistsError, match="pass --overwrite to replace it"):
        write_report(result, out)
    assert sorted(p.name for p in out.iterdir()) == ["control.json", "episode.gif", "returns.png"]
    write_report(result, out, overwrite=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds files its control.json does not list \(notes.txt\)"):
        write_report(result, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_exploration_noise_stays_in_the_bounds_and_repeats_for_a_seed():
    box = envs.make_env("CarRacing-v3").action_space
    action = np.array([0.0, 1.0, 0.0], np.float32)
    noisy = [explore(action, box, 0.3, np.random.default_rng(s)) for s in range(200)]
    assert all(box.contains(a) for a in noisy)
    steer = np.array([a[0] for a in noisy])
    assert 0.25 < steer.std() < 0.35  # 0.3 half-ranges of [-1, 1], a few clipped
    np.testing.assert_array_equal(explore(action, box, 0.3, np.random.default_rng(5)), noisy[5])
    assert explore(action, box, 0.0, np.random.default_rng(0)) is action
    discrete = gymnasium.spaces.Discrete(6)
    taken = [explore(2, discrete, 0.5, np.random.default_rng(s)) for s in range(400)]
    assert 0.35 < np.mean(np.array(taken) != 2) < 0.5  # a random action half the time, 1/6 of those the same


def test_planner_episodes_with_exploration_record_the_noisy_actions(heads_artifacts):
    rollout = Rollout.load(heads_artifacts, backend="onnxruntime")
    kwargs = dict(episodes=1, steps=6, seed=3, settings=FAST, record=False, keep_episodes=True)
    plain = run_control(rollout, "CarRacing-v3", **kwargs).episodes["planner"][0].transitions
    noisy = [run_control(rollout, "CarRacing-v3", exploration=0.3, **kwargs) for _ in range(2)]
    first, second = (result.episodes["planner"][0].transitions for result in noisy)
    np.testing.assert_array_equal(first["action"], second["action"])  # seeded by the episode's seed
    assert np.abs(first["action"] - plain["action"]).max() > 0.05
