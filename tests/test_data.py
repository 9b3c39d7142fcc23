import numpy as np
import pytest
import torch

from wm_core.actions import ActionCodec
from wm_train.data import episode_paths, load_episode, load_splits, save_episode, split_episodes, to_batch


def test_recorded_episodes_follow_the_format(carracing_dir, pong_dir):
    obs, action = load_episode(episode_paths(carracing_dir)[0], "continuous", 3, 64)
    assert obs.dtype == np.uint8 and obs.shape == (24, 64, 64, 3)
    assert action.dtype == np.float32 and action.shape == (24, 3)
    obs, action = load_episode(episode_paths(pong_dir)[0], "discrete", 6, 64)
    assert action.dtype == np.int64 and action.shape == (24,)
    assert obs.std() > 0  # real frames, not blank


def test_collection_is_deterministic_for_a_seed(carracing_dir, tmp_path):
    from wm_train.collect import record_episode

    obs, action, _, _ = record_episode("CarRacing-v3", seed=0, steps=24, frame_size=64)
    expected_obs, expected_action = load_episode(episode_paths(carracing_dir)[0], "continuous", 3, 64)
    np.testing.assert_array_equal(obs, expected_obs)
    np.testing.assert_array_equal(action, expected_action)


def test_save_episode_is_atomic_and_leaves_no_temporary(tmp_path):
    save_episode(tmp_path / "episode_00000.npz", np.zeros((3, 64, 64, 3), np.uint8), np.zeros((3, 3), np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["episode_00000.npz"]


@pytest.mark.parametrize(
    "obs, action, mode, message",
    [
        (np.zeros((4, 64, 64, 3), np.float32), np.zeros((4, 3), np.float32), "continuous", "obs must be uint8"),
        (np.zeros((4, 32, 32, 3), np.uint8), np.zeros((4, 3), np.float32), "continuous", r"\[T, 64, 64, 3\]"),
        (
            np.zeros((4, 64, 64, 3), np.uint8),
            np.zeros(4, np.int64),
            "continuous",
            "'continuous' but the file holds discrete",
        ),
        (
            np.zeros((4, 64, 64, 3), np.uint8),
            np.zeros((4, 3), np.float32),
            "discrete",
            "'discrete' but the file holds continuous",
        ),
        (np.zeros((4, 64, 64, 3), np.uint8), np.zeros((4, 2), np.float32), "continuous", r"\[T, 3\]"),
        (np.zeros((4, 64, 64, 3), np.uint8), np.full(4, 3, np.int64), "discrete", r"\[0, 2\]"),
        (np.zeros((4, 64, 64, 3), np.uint8), np.zeros((5, 3), np.float32), "continuous", "4 frames but 5 actions"),
    ],
)
def test_bad_episodes_are_errors_naming_expected_and_actual(tmp_path, obs, action, mode, message):
    path = tmp_path / "episode.npz"
    save_episode(path, obs, action)
    with pytest.raises(ValueError, match=message):
        load_episode(path, mode, 3, 64)


def test_non_episode_files_are_errors(tmp_path):
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable episode file"):
        load_episode(tmp_path / "junk.npz", "continuous", 3, 64)
    np.savez(tmp_path / "other.npz", frames=np.zeros(3))
    with pytest.raises(ValueError, match="need arrays 'obs' and 'action'"):
        load_episode(tmp_path / "other.npz", "continuous", 3, 64)
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        episode_paths(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no episode files"):
        episode_paths(tmp_path / "empty")


def test_split_is_by_episode_deterministic_and_disjoint(tmp_path):
    paths = [tmp_path / f"episode_{i:05d}.npz" for i in range(10)]
    train, val = split_episodes(paths, 0.2, seed=3)
    assert (train, val) == split_episodes(paths, 0.2, seed=3)
    assert len(val) == 2 and not set(train) & set(val) and set(train) | set(val) == set(paths)
    with pytest.raises(ValueError, match="at least 2 episodes"):
        split_episodes(paths[:1], 0.2, seed=0)


def test_windows_and_codec_come_from_the_training_split(carracing_dir, tmp_path, tiny_config):
    cfg = tiny_config(carracing_dir, tmp_path)
    train, val, codec = load_splits(cfg)
    assert len(train.obs) == 3 and len(val.obs) == 1
    stacked = np.concatenate(train.actions)
    np.testing.assert_allclose(codec.mean, stacked.mean(0), atol=1e-6)
    windows = train.sample(np.random.default_rng(0), 5)
    obs, actions = to_batch(windows, codec)
    assert obs.shape == (5, 8, 3, 64, 64) and obs.dtype == torch.float32 and 0 <= obs.min() <= obs.max() <= 1
    assert actions.shape == (5, 8, 3)
    assert len(val.fixed_windows()) == 24 // 8


def test_discrete_actions_are_one_hot(pong_dir, tmp_path, tiny_config):
    cfg = tiny_config(pong_dir, tmp_path, action_mode="discrete", action_dim=6)
    train, _, codec = load_splits(cfg)
    _, actions = to_batch(train.sample(np.random.default_rng(0), 3), codec)
    assert actions.shape == (3, 8, 6) and (actions.sum(-1) == 1).all()


def test_action_mode_mismatch_names_both(pong_dir, tmp_path, tiny_config):
    with pytest.raises(ValueError, match="'continuous' but the file holds discrete"):
        load_splits(tiny_config(pong_dir, tmp_path, action_mode="continuous", action_dim=6))


def test_constant_actions_warn(tmp_path, tiny_config):
    rng = np.random.default_rng(0)
    for i in range(3):
        save_episode(
            tmp_path / f"episode_{i}.npz",
            rng.integers(0, 255, (10, 64, 64, 3), dtype=np.uint8),
            np.zeros((10, 3), np.float32),
        )
    with pytest.warns(UserWarning, match="never vary"):
        load_splits(tiny_config(tmp_path, tmp_path / "run"))


def test_codec_validates_and_encodes():
    codec = ActionCodec("continuous", 2, (1.0, 0.0), (2.0, 1.0))
    np.testing.assert_allclose(codec.encode_numpy(np.array([[3.0, 1.0]])), [[1.0, 1.0]])
    with pytest.raises(ValueError, match=r"\[..., 2\]"):
        codec.validate(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        codec.validate(np.array([[np.nan, 0.0]]))
    discrete = ActionCodec("discrete", 4)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        discrete.validate(np.array([0, 4]))
    assert ActionCodec.from_dict(codec.to_dict()) == codec


def test_per_step_arrays_load_beside_the_frames_and_bad_ones_name_the_file(tmp_path, tiny_config):
    rng = np.random.default_rng(0)
    for i in range(4):
        obs = rng.integers(0, 256, (10, 64, 64, 3), dtype=np.uint8)
        action = rng.normal(size=(10, 3)).astype(np.float32)
        save_episode(tmp_path / f"episode_{i:05d}.npz", obs, action, reward=np.arange(10.0) + i, short=np.zeros(9))
    cfg = tiny_config(tmp_path, tmp_path / "run")
    train, val, _ = load_splits(cfg, per_step=("reward",))
    assert [r.shape for r in train.per_step["reward"]] == [(10, 1)] * 3 and len(val.per_step["reward"]) == 1
    with pytest.raises(ValueError, match=r"no array 'speed' in the episode file; it holds \['action', 'obs'"):
        load_splits(cfg, per_step=("speed",))
    with pytest.raises(ValueError, match=r"'short' must be a numeric per-step array \[10, \.\.\.\], got float64 \[9\]"):
        load_splits(cfg, per_step=("short",))
