"""wm-loop: rounds of planner-driven collection, fine-tuning, export and evaluation; exact resume after a failure
at any stage; the settings' checks."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from wm_core import envs
from wm_core.dataset_meta import build_meta, meta_bytes
from wm_loop import load_loop_config, read_curve, run_loop
from wm_loop.loop import Loop

LOOP = {"rounds": 1, "episodes": 2, "steps": 12, "epochs": 1, "eval_episodes": 1}
PLANNER = {"horizon": 3, "samples": 16, "iterations": 1, "elites": 4, "replay": 2}


def write_config(tmp_path, data_dir, name="loop", **loop):
    config = {
        "data": {"path": str(data_dir), "seq_len": 8, "val_fraction": 0.25},
        "model": {"size": "tiny", "heads": True},
        "train": {"epochs": 1, "batch_size": 4, "head_overshooting": 2},
        "loop": {**LOOP, "out_dir": str(tmp_path / name), **loop},
        "planner": PLANNER,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def summary(folder):
    """What must come out the same, run whole or resumed: the curve without timings, the episodes, the weights."""
    rows = [{**dataclasses.asdict(row), "seconds": None} for row in read_curve(folder)]
    episodes = {p.name: np.load(p)["action"].tolist() for p in sorted((folder / "episodes").glob("*.npz"))}
    weights = torch.load(folder / "round_01" / "train" / "best.pt", weights_only=False)["model"]
    return rows, episodes, weights


@pytest.fixture(scope="module")
def recorded(carracing_dir, tmp_path_factory):
    """carracing_dir's episodes with the meta.json wm-collect writes (the environment and its action bounds)."""
    folder = tmp_path_factory.mktemp("recorded")
    for path in carracing_dir.glob("*.npz"):
        (folder / path.name).write_bytes(path.read_bytes())
    env = envs.make_env("CarRacing-v3")
    meta = build_meta("CarRacing-v3", env.action_space, 64, 0, 4, 24, 96, "carracing-driver")
    env.close()
    (folder / "meta.json").write_bytes(meta_bytes(meta))
    return folder


@pytest.fixture(scope="module")
def whole_loop(recorded, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("loop")
    settings = load_loop_config(write_config(tmp_path, recorded))
    rows = run_loop(settings, progress=False, log=lambda line: None)
    return tmp_path / "loop", rows


def test_a_loop_collects_fine_tunes_and_writes_its_curve(whole_loop):
    folder, rows = whole_loop
    assert [row.round for row in rows] == [0, 1]
    planner_files = sorted(p.name for p in (folder / "episodes").glob("planner_*.npz"))
    assert planner_files == ["planner_10000.npz", "planner_10001.npz"]
    assert rows[0].env_steps == 0 and rows[1].episodes_collected == 2
    assert rows[1].env_steps == 2 * (12 + 50)  # 12 controlled steps after CarRacing's 50-frame zoom, each episode
    assert rows[1].data_frames == rows[0].data_frames + 2 * 12
    assert all(len(row.returns) == 1 and row.reward_r2 is not None for row in rows)
    assert set(rows[1].seconds) == {"collect", "train", "export", "evaluate"}
    assert read_curve(folder) == rows
    assert (folder / "curve.md").read_text().count("\n") == 4 and (folder / "curve.png").stat().st_size > 0
    # round 1 fine-tuned from round 0's checkpoint with its action codec, on all the episodes
    round_1 = torch.load(folder / "round_01" / "train" / "best.pt", weights_only=False)
    round_0 = torch.load(folder / "round_00" / "train" / "best.pt", weights_only=False)
    assert round_1["config"]["train"]["init_from"] == str(folder / "round_00" / "train" / "best.pt")
    assert round_1["action_codec"] == round_0["action_codec"]
    assert round_1["config"]["data"]["path"] == str(folder / "episodes")


@pytest.mark.parametrize("stage", ["data", "train", "export", "evaluate", "collect"])
def test_a_loop_stopped_at_any_stage_resumes_to_the_same_end(whole_loop, recorded, tmp_path, monkeypatch, stage):
    """A stage that fails part-way (after its files were written, before loop.json records it) is redone on
    --resume, and the run ends as the uninterrupted one did."""
    settings = load_loop_config(write_config(tmp_path, recorded))
    original = getattr(Loop, stage)
    calls = []

    def fails_once(self, round_):
        original(self, round_)
        if round_ == (0 if stage in ("data",) else 1) and not calls:
            calls.append(round_)
            raise KeyboardInterrupt  # what a kill leaves: the stage's work done, not recorded

    monkeypatch.setattr(Loop, stage, fails_once)
    with pytest.raises(KeyboardInterrupt):
        run_loop(settings, progress=False, log=lambda line: None)
    with pytest.raises(FileExistsError, match="--resume"):
        run_loop(settings, progress=False, log=lambda line: None)
    run_loop(settings, resume=True, progress=False, log=lambda line: None)
    resumed, whole = summary(tmp_path / "loop"), summary(whole_loop[0])
    assert resumed[0] == whole[0] and resumed[1] == whole[1]
    assert resumed[2].keys() == whole[2].keys()
    assert all(torch.equal(resumed[2][key], whole[2][key]) for key in whole[2])


def test_a_collection_cut_between_episodes_skips_the_saved_ones(whole_loop, recorded, tmp_path):
    settings = load_loop_config(write_config(tmp_path, recorded, rounds=0))
    run_loop(settings, progress=False, log=lambda line: None)
    # the same loop, one round more, with one of round 1's episodes already saved by a run that was killed
    folder = tmp_path / "loop"
    saved = whole_loop[0] / "episodes" / "planner_10000.npz"
    (folder / "episodes" / saved.name).write_bytes(saved.read_bytes())
    state = json.loads((folder / "loop.json").read_text())
    state["collected"]["10000"] = 62
    (folder / "loop.json").write_text(json.dumps(state))
    settings = load_loop_config(write_config(tmp_path, recorded))
    run_loop(settings, resume=True, progress=False, log=lambda line: None)
    assert summary(folder)[0] == summary(whole_loop[0])[0]


def test_resume_refuses_other_settings_and_a_folder_that_is_not_a_loop(recorded, tmp_path):
    settings = load_loop_config(write_config(tmp_path, recorded, rounds=0))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        run_loop(settings, resume=True, progress=False)
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no loop"):
        run_loop(settings, progress=False)
    (tmp_path / "loop" / "notes.txt").unlink()
    run_loop(settings, progress=False, log=lambda line: None)
    other = load_loop_config(write_config(tmp_path, recorded, rounds=0, exploration=0.1))
    with pytest.raises(ValueError, match="other settings"):
        run_loop(other, resume=True, progress=False)


@pytest.mark.parametrize(
    "override, message",
    [
        ("loop.rounds=-1", "loop.rounds must be >= 0"),
        ("loop.policy=actor", "loop.policy actor needs model.actor_critic"),
        ("loop.eval_seed=10001", "overlap the collection's 10000..10001"),
        ("loop.exploration=2", "loop.exploration must be in [0, 1]"),
        ("loop.epoch=3", "unknown key(s) ['epoch'] in section 'loop'"),
        ("planner.weights=best", "planner.weights must be one of ['scaled', 'raw']"),
        ("planner.elites=99", "elites must be in [1, samples=16]"),
    ],
)
def test_wm_loop_refuses_bad_settings_in_one_line(recorded, tmp_path, override, message):
    config = write_config(tmp_path, recorded)
    run = subprocess.run(
        [sys.executable, "-m", "wm_loop.cli", str(config), "--set", override], capture_output=True, text=True
    )
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and message in run.stderr, run.stderr
    assert not (tmp_path / "loop").exists()
