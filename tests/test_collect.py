"""wm-collect: what an episode records (frames, actions, rewards, terminations) and the collection's meta.json,
on real environments."""

import json

import numpy as np
import pytest

from wm_core.dataset_meta import dataset_action_repeat
from wm_core.envs import (
    POLICIES,
    describe_action_space,
    make_env,
    policy_for,
    render_frame,
    resize,
    road_offset,
    skip_start,
)
from wm_train.collect import collect, record_episode
from wm_train.data import episode_paths, read_meta


def _replay(env_id: str, seed: int, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rewards and terminations that a fresh environment returns for `actions`, after the unrecorded start
    played by the recording policy (the environments are deterministic for a seed and the actions)."""
    env = make_env(env_id)
    policy = POLICIES[policy_for(env_id)](env_id, env.action_space, np.random.default_rng(seed))
    observation, _ = env.reset(seed=seed)
    for _ in range(skip_start(env_id)):
        observation, *_ = env.step(policy(render_frame(env, observation)))
    rewards, ends = [], []
    for action in actions:
        _, reward, terminated, _, _ = env.step(action)
        rewards.append(reward)
        ends.append(terminated)
    env.close()
    return np.asarray(rewards, np.float32), np.asarray(ends)


@pytest.mark.parametrize(
    "env_id, steps, rewarded_at",
    [
        ("CarRacing-v3", 8, 3),  # a track tile is reached after action 3: +1000/N - 0.1
        ("ALE/Pong-v5", 70, 63),  # the first point of seed 0 is scored after action 63
    ],
)
def test_reward_and_terminated_are_what_each_action_returned(env_id, steps, rewarded_at):
    obs, action, reward, terminated = record_episode(env_id, seed=0, steps=steps, frame_size=16)
    assert reward.dtype == np.float32 and reward.shape == (steps,) and len(obs) == len(action) == steps
    assert terminated.dtype == np.bool_ and terminated.shape == (steps,) and not terminated.any()
    assert np.flatnonzero(reward != np.median(reward))[0] == rewarded_at  # a sparse event to align on
    replayed_reward, replayed_terminated = _replay(env_id, 0, action)
    np.testing.assert_array_equal(reward, replayed_reward)
    np.testing.assert_array_equal(terminated, replayed_terminated)


def test_an_action_repeat_holds_each_action_for_k_steps_and_records_every_kth_frame():
    obs, action, reward, terminated = record_episode("CarRacing-v3", seed=0, steps=6, frame_size=16, action_repeat=3)
    assert len(obs) == len(action) == len(reward) == 6 and not terminated.any()
    env = make_env("CarRacing-v3")  # one step at a time
    policy = POLICIES["carracing-driver"]("CarRacing-v3", env.action_space, np.random.default_rng(0))
    observation, _ = env.reset(seed=0)
    for _ in range(skip_start("CarRacing-v3")):  # the zoom: environment steps, whatever the action repeat
        observation, *_ = env.step(policy(render_frame(env, observation)))
    for t in range(6):
        np.testing.assert_array_equal(obs[t], resize(render_frame(env, observation), 16))
        total = 0.0
        for _ in range(3):
            observation, step_reward, *_ = env.step(action[t])
            total += float(step_reward)
        assert reward[t] == np.float32(total)
    env.close()
    assert np.isclose(reward.min(), -0.3) and reward.max() > 2.5  # three steps of -0.1, or a tile among them


def test_an_episode_that_ends_is_terminated_at_its_last_step_only():
    # CartPole under random actions falls over within a few dozen steps.
    _, action, reward, terminated = record_episode("CartPole-v1", seed=0, steps=200, frame_size=16)
    assert len(action) < 200 and terminated[-1] and not terminated[:-1].any()
    np.testing.assert_array_equal(reward, np.ones(len(action), np.float32))


def test_a_termination_inside_a_hold_ends_the_episode_terminated():
    _, action, reward, terminated = record_episode("CartPole-v1", seed=0, steps=200, frame_size=16, action_repeat=3)
    assert len(action) < 200 and terminated[-1] and not terminated[:-1].any()
    np.testing.assert_array_equal(reward[:-1], 3.0)  # +1 per environment step, three to a decision
    assert 1.0 <= reward[-1] <= 3.0


def test_a_time_limit_truncation_is_not_terminated():
    # MountainCar-v0 is cut at 200 steps by its TimeLimit; random actions never reach the flag.
    _, action, _, terminated = record_episode("MountainCar-v0", seed=0, steps=300, frame_size=16)
    assert len(action) == 200 and not terminated.any()
    _, action, reward, terminated = record_episode("MountainCar-v0", seed=0, steps=300, frame_size=16, action_repeat=3)
    assert len(action) == 67 and not terminated.any()  # 66 holds of 3, then steps 199 and 200 cut short
    assert reward[-1] == -2.0 and (reward[:-1] == -3.0).all()


@pytest.mark.parametrize(
    "env_id, space, repeat, frameskip",
    [
        ("CarRacing-v3", {"type": "box", "shape": [3], "low": [-1.0, 0.0, 0.0], "high": [1.0, 1.0, 1.0]}, 1, 1),
        ("ALE/Pong-v5", {"type": "discrete", "n": 6}, 2, 4),  # v5 repeats 4 frames inside; K multiplies on top
    ],
)
def test_collect_describes_the_collection_in_meta_json(env_id, space, repeat, frameskip, tmp_path):
    paths = collect(
        env_id, tmp_path, episodes=2, steps=4, seed=7, frame_size=32, workers=1, progress=False, action_repeat=repeat
    )
    meta = json.loads((tmp_path / "meta.json").read_text())
    versions = meta.pop("versions")
    assert meta == {
        "format": "wm-episodes",
        "format_version": 1,
        "env_id": env_id,
        "action_space": space,
        "frame_size": 32,
        "policy": policy_for(env_id),
        "seed": 7,
        "episodes": 2,
        "steps": 4,
        "frames": 8,
        "skip_start": skip_start(env_id),
        "action_repeat": repeat,
        "env_frameskip": frameskip,
    }
    assert dataset_action_repeat(tmp_path) == repeat
    assert set(versions) == {"gymnasium", "wm"} and all(versions.values())
    assert read_meta(tmp_path) == {**meta, "versions": versions}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode_00000.npz", "episode_00001.npz", "meta.json"]
    assert episode_paths(tmp_path) == paths
    with np.load(paths[1]) as episode:
        assert episode["reward"].shape == episode["terminated"].shape == (4,)


def test_action_spaces_as_plain_data():
    import gymnasium

    box = gymnasium.spaces.Box(np.array([-np.inf, 0.0], np.float32), np.array([1.0, np.inf], np.float32))
    assert describe_action_space(box) == {"type": "box", "shape": [2], "low": [None, 0.0], "high": [1.0, None]}
    assert describe_action_space(gymnasium.spaces.Discrete(4)) == {"type": "discrete", "n": 4}
    for space in (gymnasium.spaces.MultiDiscrete([2, 3]), gymnasium.spaces.Discrete(4, start=1)):
        with pytest.raises(ValueError, match="is not supported: episodes need a 1-d Box or a Discrete space"):
            describe_action_space(space)


def test_collect_records_the_policy_it_is_given_and_refuses_an_unknown_one(tmp_path):
    collect("CarRacing-v3", tmp_path, episodes=1, steps=4, seed=7, workers=1, progress=False, policy="random")
    assert read_meta(tmp_path)["policy"] == "random"
    with pytest.raises(ValueError, match="policy must be one of .*got 'driver'"):
        collect("CarRacing-v3", tmp_path / "b", episodes=1, steps=4, workers=1, progress=False, policy="driver")
    assert not (tmp_path / "b").exists()


def test_explorer_holds_random_excursions_and_varies_its_speed():
    _, action, _, _ = record_episode("CarRacing-v3", seed=2000, steps=250, frame_size=16, policy="carracing-explorer")
    changes = np.flatnonzero(np.any(action[1:] != action[:-1], axis=1))
    longest_hold = np.diff(np.concatenate([[-1], changes, [len(action) - 1]])).max()
    assert longest_hold >= 6  # an excursion: one action held for 6-31 steps (the driver's steering never repeats)
    _, driven, _, _ = record_episode("CarRacing-v3", seed=2000, steps=250, frame_size=16)

    def speed_changes(gas):  # spread of the gas averaged over 20 steps: held levels differ, i.i.d. noise averages out
        return np.convolve(gas, np.ones(20) / 20, mode="valid").std()

    assert speed_changes(action[:, 1]) > 2 * speed_changes(driven[:, 1])


def test_road_offset_steers_towards_the_nearest_road_ahead():
    grass = np.tile(np.array([100, 220, 100], np.uint8), (96, 96, 1))
    assert road_offset(grass) == 0.0  # no road in sight: straight on
    frame = grass.copy()
    frame[30:40, 70:80] = 105  # a road patch ahead, to the right of the car (column 48), above the row ahead
    assert road_offset(frame) == pytest.approx((74.5 - 48) / 12)
    frame[60, 20:30] = 105  # the row ahead shows road to the left: it wins
    assert road_offset(frame) == pytest.approx((24.5 - 48) / 12)


def _episodes(folder) -> list[tuple[str, dict[str, np.ndarray]]]:
    arrays = []
    for path in episode_paths(folder):
        with np.load(path) as episode:
            arrays.append((path.name, {key: episode[key] for key in episode.files}))
    return arrays


QUICK = dict(steps=3, frame_size=16, workers=1, progress=False)


def test_collect_keeps_a_folder_it_did_not_write_with_or_without_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "episode_00000.npz").write_bytes(b"someone else's")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not an episode folder"):
            collect("CarRacing-v3", tmp_path, episodes=1, overwrite=overwrite, **QUICK)
    assert (tmp_path / "episode_00000.npz").read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode_00000.npz", "notes.txt"]


def test_collect_replaces_an_earlier_collection_only_with_overwrite(tmp_path):
    out = tmp_path / "data"
    collect("CarRacing-v3", out, episodes=2, **QUICK)
    before = _episodes(out)
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        collect("CarRacing-v3", out, episodes=1, seed=5, **QUICK)
    assert [name for name, _ in _episodes(out)] == [name for name, _ in before]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"does not list \(notes.txt\)"):
        collect("CarRacing-v3", out, episodes=1, seed=5, overwrite=True, **QUICK)
    (out / "notes.txt").unlink()
    collect("CarRacing-v3", out, episodes=1, seed=5, overwrite=True, **QUICK)
    assert sorted(p.name for p in out.iterdir()) == ["episode_00000.npz", "meta.json"]
    assert read_meta(out)["seed"] == 5 and read_meta(out)["episodes"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging or swapped-out folder left


def test_append_continues_the_numbering_and_equals_one_recording(tmp_path):
    collect("CarRacing-v3", tmp_path / "parts", episodes=1, seed=3, **QUICK)
    collect("CarRacing-v3", tmp_path / "parts", episodes=2, seed=3, append=True, **QUICK)
    collect("CarRacing-v3", tmp_path / "whole", episodes=3, seed=3, **QUICK)
    parts, whole = _episodes(tmp_path / "parts"), _episodes(tmp_path / "whole")
    assert [name for name, _ in parts] == ["episode_00000.npz", "episode_00001.npz", "episode_00002.npz"]
    assert [name for name, _ in parts] == [name for name, _ in whole]
    for (_, a), (_, b) in zip(parts, whole, strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[key], b[key]) for key in a)
    assert read_meta(tmp_path / "parts") == read_meta(tmp_path / "whole")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(frame_size=32), "frame_size 16 \\(given: 32\\)"),
        (dict(seed=9), "seed 3 \\(given: 9\\)"),
        (dict(policy="random"), "policy 'carracing-driver' \\(given: 'random'\\)"),
        (dict(env_id="ALE/Pong-v5"), "env_id 'CarRacing-v3' \\(given: 'ALE/Pong-v5'\\); action_space"),
    ],
)
def test_append_refuses_a_collection_recorded_otherwise(tmp_path, change, message):
    collect("CarRacing-v3", tmp_path, episodes=1, seed=3, **QUICK)
    before = _episodes(tmp_path)
    settings = {**QUICK, "seed": 3, **change}
    env_id = settings.pop("env_id", "CarRacing-v3")
    with pytest.raises(ValueError, match=f"cannot append to {tmp_path}: its meta.json records {message}"):
        collect(env_id, tmp_path, episodes=1, append=True, **settings)
    assert [name for name, _ in _episodes(tmp_path)] == [name for name, _ in before]


def test_append_refuses_a_folder_without_meta_json(tmp_path):
    (tmp_path / "episode_00000.npz").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError, match="has no meta.json"):
        collect("CarRacing-v3", tmp_path, episodes=1, append=True, **QUICK)
    assert (tmp_path / "episode_00000.npz").read_bytes() == b"someone else's"
