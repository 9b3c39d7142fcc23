"""The episode store: frames on disk read a window at a time, the same episodes and split as the .npz folder."""

import json
import subprocess
import sys

import numpy as np
import pytest

from wm_train.data import episode_paths, load_episode, load_splits, npz_to_store, read_meta, save_episode
from wm_train.store import DiskFrames, is_store
from wm_train.trainer import train


@pytest.fixture(scope="module")
def carracing_store(carracing_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stores") / "carracing"
    npz_to_store(carracing_dir, folder)
    return folder


def test_store_holds_the_episodes_of_its_folder_in_the_same_split(carracing_dir, carracing_store, tiny_config):
    assert is_store(carracing_store) and not is_store(carracing_dir)
    from_folder = load_splits(tiny_config(carracing_dir, "unused"))
    from_store = load_splits(tiny_config(carracing_store, "unused"))
    for folder_split, store_split in zip(from_folder[:2], from_store[:2]):
        assert all(isinstance(obs, DiskFrames) for obs in store_split.obs)
        assert len(folder_split.obs) == len(store_split.obs)
        for a, b in zip(folder_split.obs, store_split.obs):
            np.testing.assert_array_equal(np.asarray(b), a)
        for a, b in zip(folder_split.actions, store_split.actions):
            np.testing.assert_array_equal(b, a)
    assert from_folder[2] == from_store[2]  # the action codec


def test_training_on_the_store_equals_training_in_memory(carracing_dir, carracing_store, tmp_path, tiny_config):
    in_memory = train(tiny_config(carracing_dir, tmp_path / "memory"), progress=False)
    on_disk = train(tiny_config(carracing_store, tmp_path / "store"), progress=False)
    assert [(m.train, m.val) for m in on_disk] == [(m.train, m.val) for m in in_memory]


def test_store_keeps_the_rewards_the_heads_train_on(carracing_dir, carracing_store, tmp_path, tiny_config):
    def heads_config(data):
        cfg = tiny_config(data, tmp_path / "run", reward_window=3)
        cfg.model.heads = True
        return cfg

    from_folder, from_store = (load_splits(heads_config(data))[0] for data in (carracing_dir, carracing_store))
    assert from_folder.rewards is not None and from_store.rewards is not None
    assert any(r.std() > 0 for r in from_folder.rewards)  # CarRacing's tile rewards, not a constant
    for targets, stored in ((from_folder.rewards, from_store.rewards), (from_folder.continues, from_store.continues)):
        for a, b in zip(targets, stored):
            np.testing.assert_array_equal(b, a)
    old = tmp_path / "old"
    for name in ("a", "b"):  # episodes recorded before rewards were
        save_episode(old / f"{name}.npz", np.zeros((8, 64, 64, 3), np.uint8), np.eye(8, 3, dtype=np.float32))
    npz_to_store(old, tmp_path / "old_store")
    load_splits(tiny_config(tmp_path / "old_store", tmp_path / "run"))  # without heads it loads
    with pytest.raises(ValueError, match=r"old_store/[ab]: model.heads .* no \['reward', 'terminated'\]; re-record"):
        load_splits(heads_config(tmp_path / "old_store"))


def test_disk_frames_slice_like_the_array(carracing_dir, carracing_store):
    obs, _ = load_episode(episode_paths(carracing_dir)[0], "continuous", 3, 64)
    frames = DiskFrames(carracing_store / f"{episode_paths(carracing_dir)[0].stem}.obs.npy")
    assert len(frames) == len(obs) and frames.shape == obs.shape
    for window in (slice(0, 8), slice(5, 13), slice(16, 24), slice(20, 40), slice(None)):
        np.testing.assert_array_equal(frames[window], obs[window])
    with pytest.raises(TypeError, match="contiguous slice"):
        frames[::2]


def test_store_that_does_not_fit_the_config_is_an_error_naming_it(carracing_store, tmp_path, tiny_config):
    with pytest.raises(ValueError, match=r"episode_00000.*action_mode is 'discrete'.*continuous"):
        load_splits(tiny_config(carracing_store, tmp_path, action_mode="discrete", action_dim=6))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "store.json").write_text(json.dumps({"format": "wm-episode-store", "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99, expected 1"):
        load_splits(tiny_config(broken, tmp_path))


def test_converter_refuses_episodes_that_differ_and_leaves_nothing(tmp_path):
    source = tmp_path / "mixed"
    save_episode(source / "a.npz", np.zeros((4, 64, 64, 3), np.uint8), np.zeros((4, 3), np.float32))
    save_episode(source / "b.npz", np.zeros((4, 32, 32, 3), np.uint8), np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"b.npz: obs must be uint8 \[T, 64, 64, 3\], got uint8 \[4, 32, 32, 3\]"):
        npz_to_store(source, tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_store_command_converts_a_folder(carracing_dir, tmp_path):
    command = [sys.executable, "-m", "wm_train.cli", "store", str(carracing_dir), "-o", str(tmp_path / "store")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wrote 4 episodes" in result.stdout
    index = json.loads((tmp_path / "store" / "store.json").read_text())
    assert [e["frames"] for e in index["episodes"]] == [24] * 4


def test_collect_writes_a_store_directly(tmp_path):
    command = [sys.executable, "-m", "wm_train.cli", "collect", "CarRacing-v3", "-o", str(tmp_path / "store")]
    command += ["--episodes", "2", "--steps", "6", "--store", "--workers", "1", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    index = json.loads((tmp_path / "store" / "store.json").read_text())
    assert [e["name"] for e in index["episodes"]] == ["episode_00000", "episode_00001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # the temporary .npz folder is gone
    assert all(e["arrays"] == ["reward", "terminated"] for e in index["episodes"])
    meta = read_meta(tmp_path / "store")
    assert meta is not None and meta["env_id"] == "CarRacing-v3" and meta["episodes"] == 2


def test_a_store_replaces_only_an_earlier_store_and_only_with_overwrite(carracing_dir, tmp_path):
    target = tmp_path / "store"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not an episode store \\(no store.json\\)"):
            npz_to_store(carracing_dir, target, overwrite)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    (target / "notes.txt").unlink()
    npz_to_store(carracing_dir, target)  # an empty folder is written into
    written = sorted(p.name for p in target.iterdir())
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        npz_to_store(carracing_dir, target)
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="does not list \\(notes.txt\\)"):
        npz_to_store(carracing_dir, target, overwrite=True)
    assert (target / "notes.txt").read_text() == "mine"
    (target / "notes.txt").unlink()
    assert npz_to_store(carracing_dir, target, overwrite=True) == 4
    assert sorted(p.name for p in target.iterdir()) == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_store_and_collect_commands_refuse_a_folder_they_did_not_write_in_one_line(carracing_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    commands = [
        ["store", str(carracing_dir), "-o", str(tmp_path / "out"), "--overwrite"],
        ["collect", "CarRacing-v3", "-o", str(tmp_path / "out"), "--episodes", "1", "--steps", "2", "--overwrite"],
        ["collect", "CarRacing-v3", "-o", str(tmp_path / "out"), "--store", "--episodes", "1", "--overwrite"],
        ["collect", "CarRacing-v3", "-o", str(tmp_path / "out"), "--episodes", "1", "--append"],
    ]
    for args in commands:
        result = subprocess.run([sys.executable, "-m", "wm_train.cli", *args], capture_output=True, text=True)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        assert str(tmp_path / "out") in lines[0]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
