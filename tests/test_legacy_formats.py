"""Files written before the shared core moved into `wm_core` still load: a checkpoint and an artifact folder
made by that code (tests/fixtures/v1, format version 1 of both)."""

from pathlib import Path

import numpy as np
import pytest

from wm_core import ActionCodec, WorldModel, load_checkpoint
from wm_core.manifest import verify_folder
from wm_deploy import Rollout

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


def test_a_checkpoint_written_before_the_move_loads_with_its_codec():
    model, cfg, extras = load_checkpoint(FIXTURES / "tiny.pt")
    assert isinstance(model, WorldModel) and cfg.model.latent_dim == 8 and extras["epoch"] == 1
    assert extras["action_codec"] == ActionCodec("continuous", 3, (0.1, 0.2, 0.3), (1.0, 2.0, 0.5))


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
