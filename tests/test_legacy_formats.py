"""Files written by earlier versions still load: a checkpoint and an artifact folder made before the shared core
moved into `wm_core` (tests/fixtures/v1, format version 1 of both), and a checkpoint with heads and action bounds
and its artifact folder made before the action repeat (tests/fixtures/v2, format version 2; no decoder). Both
load with action_repeat 1."""

from pathlib import Path

import numpy as np
import pytest

from wm_core import ActionCodec, WorldModel, load_checkpoint
from wm_core.manifest import verify_folder
from wm_deploy import Rollout

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
V2 = Path(__file__).parent / "fixtures" / "v2"


def test_a_checkpoint_written_before_the_move_loads_with_its_codec():
    model, cfg, extras = load_checkpoint(FIXTURES / "tiny.pt")
    assert isinstance(model, WorldModel) and cfg.model.latent_dim == 8 and extras["epoch"] == 1
    assert extras["action_codec"] == ActionCodec("continuous", 3, (0.1, 0.2, 0.3), (1.0, 2.0, 0.5))
    assert extras["action_repeat"] == 1


def test_an_artifact_folder_written_before_the_move_verifies_and_matches_its_checkpoint():
    pytest.importorskip("onnxruntime")
    manifest = verify_folder(FIXTURES / "artifacts")
    assert manifest["format_version"] == 1
    model, _, extras = load_checkpoint(FIXTURES / "tiny.pt")
    reference = Rollout.from_model(model, extras["action_codec"])
    exported = Rollout.load(FIXTURES / "artifacts", backend="onnxruntime", device="cpu")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    actions = rng.standard_normal((3, 10, 3)).astype(np.float32)
    trajectories = [ro.imagine(ro.observe(ro.initial(3), frames), actions) for ro in (reference, exported)]
    np.testing.assert_allclose(trajectories[1].z, trajectories[0].z, atol=1e-4)
    assert exported.decode(trajectories[1].z[:, -1]).shape == (3, 64, 64, 3)


def test_a_version_2_checkpoint_loads_with_its_heads_bounds_and_action_repeat_1():
    model, cfg, extras = load_checkpoint(V2 / "tiny.pt")
    assert extras["format_version"] == 2 and cfg.model.heads and model.heads is not None
    assert extras["action_codec"].low == (-1.0, 0.0, 0.0) and extras["action_codec"].high == (1.0, 1.0, 1.0)
    assert extras["action_repeat"] == 1
    assert Rollout.load(V2 / "tiny.pt", backend="torch", device="cpu").action_repeat == 1


def test_a_version_2_artifact_folder_loads_with_action_repeat_1_and_matches_its_checkpoint():
    pytest.importorskip("onnxruntime")
    manifest = verify_folder(V2 / "artifacts")
    assert manifest["format_version"] == 2 and "action_repeat" not in manifest
    model, _, extras = load_checkpoint(V2 / "tiny.pt")
    reference = Rollout.from_model(model, extras["action_codec"])
    exported = Rollout.load(V2 / "artifacts", backend="onnxruntime", device="cpu")
    assert exported.action_repeat == 1 and exported.has_heads
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    actions = rng.uniform(-1, 1, (2, 5, 3)).astype(np.float32)
    trajectories = [ro.imagine(ro.observe(ro.initial(2), frames), actions) for ro in (reference, exported)]
    np.testing.assert_allclose(trajectories[1].z, trajectories[0].z, atol=1e-4)
    np.testing.assert_allclose(trajectories[1].reward, trajectories[0].reward, atol=1e-4)
