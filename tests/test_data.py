import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wm_core.actions import ActionCodec
from wm_core.config import Config
from wm_train.data import (
    EpisodeSet,
    episode_paths,
    head_targets,
    load_episode,
    load_splits,
    read_meta,
    reward_targets,
    save_episode,
    split_episodes,
    to_batch,
)


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


def _heads_config(tiny_config, data_dir, out_dir, reward_window: int = 1):
    cfg = tiny_config(data_dir, out_dir, reward_window=reward_window)
    cfg.model.heads = True
    return cfg


def _episodes_with_rewards(folder, rewards: list[np.ndarray], ended: list[bool]) -> None:
    rng = np.random.default_rng(0)
    for i, (reward, end) in enumerate(zip(rewards, ended)):
        terminated = np.zeros(len(reward), bool)
        terminated[-1] = end
        obs = rng.integers(0, 256, (len(reward), 64, 64, 3), dtype=np.uint8)
        action = rng.uniform(-0.5, 0.5, (len(reward), 3)).astype(np.float32)
        save_episode(folder / f"episode_{i:05d}.npz", obs, action, reward=reward, terminated=terminated)


def test_reward_targets_are_n_step_means_that_stop_at_a_truncated_episode_end():
    reward = np.array([1.0, 2.0, 3.0, 4.0, 6.0], np.float32)
    np.testing.assert_allclose(reward_targets(reward, 1, False), reward)
    np.testing.assert_allclose(reward_targets(reward, 2, False), [1.5, 2.5, 3.5, 5.0, 6.0])
    np.testing.assert_allclose(reward_targets(reward, 3, False), [2.0, 3.0, 13 / 3, 5.0, 6.0], rtol=1e-6)
    np.testing.assert_allclose(reward_targets(reward, 9, False), [16 / 5, 15 / 4, 13 / 3, 5.0, 6.0], rtol=1e-6)
    assert reward_targets(reward, 2, False).dtype == np.float32


def test_reward_targets_count_the_steps_after_a_termination_as_zero_rewards():
    # CarRacing's -100 for leaving the playfield: spread over the window, not a -100 target at the last step
    reward = np.array([1.0, 1.0, 1.0, 1.0, -100.0], np.float32)
    np.testing.assert_allclose(reward_targets(reward, 4, True), [1.0, -97 / 4, -98 / 4, -99 / 4, -100 / 4])
    np.testing.assert_allclose(reward_targets(reward, 1, True), reward)  # a window of one step is the reward
    np.testing.assert_allclose(reward_targets(reward, 9, True), [-96 / 9, -97 / 9, -98 / 9, -99 / 9, -100 / 9])


def test_heads_load_reward_targets_and_continues_into_the_windows(tmp_path, tiny_config):
    # 4 episodes of 16 steps, rewards 0, 1, 2, ... + 100 i; episodes 0 and 2 end by termination.
    rewards = [np.arange(16, dtype=np.float32) + 100 * i for i in range(4)]
    _episodes_with_rewards(tmp_path, rewards, [True, False, True, False])
    train, val, codec = load_splits(_heads_config(tiny_config, tmp_path, tmp_path / "run", reward_window=4))
    assert train.rewards is not None and train.continues is not None and val.rewards is not None
    for targets, continues in zip(train.rewards + val.rewards, train.continues + val.continues):
        first = targets[0] - 1.5  # the episode's reward at step 0: the mean of r, r+1, r+2, r+3 is r + 1.5
        assert first in (0, 100, 200, 300)
        # mean of reward[t : t+4]: r + t + 1.5 while 4 steps remain; then, after a termination, the sum of what
        # is left over 4 (zeros past the end), else the mean of what is left
        ended = first in (0, 200)
        left = np.minimum(16 - np.arange(16), 4)
        tail = [(first + t + first + 15) * left[t] / 2 / (4 if ended else left[t]) for t in range(16)]
        expected = [first + t + 1.5 if t <= 12 else tail[t] for t in range(16)]
        np.testing.assert_allclose(targets, expected)
        np.testing.assert_array_equal(continues, [1.0] * 15 + [0.0 if ended else 1.0])
    windows = val.fixed_windows()
    assert len(windows) == 2 and all(len(w) == 4 for w in windows)
    targets = head_targets(windows)
    assert targets is not None
    rewards, continues = targets
    assert rewards.shape == continues.shape == (2, 8) and rewards.dtype == continues.dtype == torch.float32
    np.testing.assert_array_equal(rewards.numpy(), np.stack([val.rewards[0][:8], val.rewards[0][8:]]))
    sampled = train.sample(np.random.default_rng(0), 3)
    obs, actions = to_batch(sampled, codec)  # windows with targets still batch as (obs, actions)
    assert obs.shape == (3, 8, 3, 64, 64) and actions.shape == (3, 8, 3)
    sampled_targets = head_targets(sampled)
    assert sampled_targets is not None and sampled_targets[0].shape == (3, 8)


def test_windows_without_heads_carry_no_targets(carracing_dir, tmp_path, tiny_config):
    train, val, _ = load_splits(tiny_config(carracing_dir, tmp_path))
    assert train.rewards is None and head_targets(val.fixed_windows()) is None
    assert all(len(w) == 2 for w in train.sample(np.random.default_rng(0), 3))


def test_heads_on_episodes_without_rewards_name_the_file(tmp_path, tiny_config):
    _episodes_with_rewards(tmp_path, [np.zeros(10, np.float32)] * 3, [False] * 3)
    old = tmp_path / "episode_00003.npz"
    save_episode(old, np.zeros((10, 64, 64, 3), np.uint8), np.ones((10, 3), np.float32))
    load_splits(tiny_config(tmp_path, tmp_path / "run"))  # without heads the old file still loads
    message = r"episode_00003.npz: model.heads .* no \['reward', 'terminated'\]; re-record .* wm-collect.*heads: false"
    with pytest.raises(ValueError, match=message):
        load_splits(_heads_config(tiny_config, tmp_path, tmp_path / "run"))
    save_episode(old, np.zeros((10, 64, 64, 3), np.uint8), np.ones((10, 3), np.float32), reward=np.zeros(9))
    with pytest.raises(ValueError, match=r"episode_00003.npz: .* no \['terminated'\]"):
        load_splits(_heads_config(tiny_config, tmp_path, tmp_path / "run"))


def test_codec_bounds_come_from_meta_json_else_from_the_training_actions(carracing_dir, tmp_path, tiny_config):
    import shutil

    train, _, codec = load_splits(tiny_config(carracing_dir, tmp_path / "run"))
    stacked = np.concatenate(train.actions)
    np.testing.assert_allclose(codec.low, stacked.min(0), atol=1e-7)
    np.testing.assert_allclose(codec.high, stacked.max(0), atol=1e-7)
    assert not np.allclose(codec.low, [-1.0, 0.0, 0.0])  # a short drive spans less than the box
    data = Path(shutil.copytree(carracing_dir, tmp_path / "data"))

    def write_meta(low: list, high: list) -> None:
        space = {"type": "box", "shape": [len(low)], "low": low, "high": high}
        (data / "meta.json").write_text(
            json.dumps({"format": "wm-episodes", "format_version": 1, "action_space": space})
        )

    write_meta([-1.0, 0.0, None], [1.0, 1.0, 1.0])
    _, _, codec = load_splits(tiny_config(data, tmp_path / "run"))
    assert codec.low[:2] == (-1.0, 0.0) and codec.high == (1.0, 1.0, 1.0)
    assert codec.low[2] == pytest.approx(stacked.min(0)[2])  # a null bound falls back to the data's
    write_meta([-1.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"meta.json: the box action space needs low and high of 3 values"):
        load_splits(tiny_config(data, tmp_path / "run"))
    (data / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"data/meta.json: not a readable meta.json"):
        read_meta(data)
    assert read_meta(carracing_dir) is None


def test_discrete_codecs_have_no_bounds(pong_dir, tmp_path, tiny_config):
    _, _, codec = load_splits(tiny_config(pong_dir, tmp_path, action_mode="discrete", action_dim=6))
    assert codec.low == codec.high == ()
    actions = np.array([0, 5])
    assert codec.clip(actions) is actions


def test_codec_dict_without_bounds_loads_and_clips_nothing():
    old = {"mode": "continuous", "dim": 2, "mean": [0.0, 0.0], "std": [1.0, 1.0]}
    codec = ActionCodec.from_dict(old)
    assert codec.low == codec.high == ()
    np.testing.assert_array_equal(codec.clip(np.array([[5.0, -5.0]])), [[5.0, -5.0]])
    data = [np.array([[0.0, 1.0], [2.0, 3.0]])]
    bounded = ActionCodec.fit("continuous", 2, data, (np.array([-1.0, np.nan]), np.array([np.inf, 2.5])))
    assert bounded.low == (-1.0, 1.0) and bounded.high == (2.0, 2.5)  # non-finite bounds: the data's
    assert ActionCodec.from_dict(bounded.to_dict()) == bounded
    np.testing.assert_array_equal(bounded.clip(np.array([[5.0, -5.0]])), [[2.0, 1.0]])


def test_reward_sampling_draws_its_share_among_the_rewarded_windows():
    """Episodes rewarded at one step each: a window holds a non-zero target only where it covers that step."""
    rewards = [np.zeros(40, np.float32) for _ in range(3)]
    rewards[1][30] = 1.0
    obs = [np.zeros((40, 4, 4, 3), np.uint8) for _ in range(3)]
    actions = [np.arange(40, dtype=np.float32)[:, None] + 100 * e for e in range(3)]
    episodes = EpisodeSet(obs, actions, 8, rewards=rewards, continues=[np.ones(40, np.float32)] * 3)
    uniform = episodes.sample(np.random.default_rng(0), 64)
    episodes.reward_sampling = 0.5
    mixed = episodes.sample(np.random.default_rng(0), 64)

    def rewarded(windows):
        return sum(bool(w[2].any()) for w in windows)

    assert rewarded(mixed[32:]) == 32  # the share, drawn among the 9 windows of episode 1 that cover step 30
    assert {int(w[1][0, 0]) for w in mixed[32:]} <= set(range(123, 131))  # their starts: 23..30
    assert rewarded(uniform) < 16  # 9 windows of 99 hold the reward: uniform sampling rarely meets it


def test_reward_sampling_is_refused_without_heads(carracing_dir):
    with pytest.raises(ValueError, match="data.reward_sampling needs model.heads"):
        Config.from_dict({"data": {"path": str(carracing_dir), "reward_sampling": 0.25}})
    with pytest.raises(ValueError, match=r"data.reward_sampling must be in \[0, 1\]"):
        Config.from_dict({"data": {"reward_sampling": 1.5}, "model": {"heads": True}})
