"""The synthetic small-object scene: what the episode files say about the dot is where the dot is drawn."""

import numpy as np

from wm_train.scenes import DOT_COLOUR, dot_episode, write_dot_episodes


def test_the_dot_scene_stores_the_dot_where_its_mask_and_position_say():
    episode = dot_episode(np.random.default_rng(0), steps=20, dot=3)
    obs, mask, position = episode["obs"], episode["mask"], episode["position"]
    assert obs.shape == (20, 64, 64, 3) and episode["action"].shape == (20, 2)
    assert (mask.sum((1, 2)) == 9).all()
    assert (obs[mask] == DOT_COLOUR).all() and (obs[~mask] == 255).all()
    ys, xs = np.nonzero(mask[0])
    np.testing.assert_allclose(position[0], [(xs.mean() + 0.5) / 64, (ys.mean() + 0.5) / 64], atol=1 / 64)


def test_dot_episodes_are_written_with_their_position_and_mask(tmp_path):
    paths = write_dot_episodes(tmp_path, episodes=2, steps=12)
    with np.load(paths[1]) as episode:
        assert sorted(episode.files) == ["action", "mask", "obs", "position"]
        assert episode["position"].shape == (12, 2) and episode["mask"].shape == (12, 64, 64)
