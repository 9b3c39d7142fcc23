"""The latent probe: a target that is a known function of the frames is predicted from [h, z]; a shuffled one
is not; it runs from wm-eval and its CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wm_core.checkpoint import save_checkpoint
from wm_core.config import Config
from wm_core.model import WorldModel
from wm_train.data import load_splits
from wm_train.evaluate import evaluate_checkpoint
from wm_train.probe import fit_ridge, probe_features, r2_score

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def brightness(brightness_dir, tmp_path_factory):
    """An untrained tiny model (its posterior means follow the frames' brightness, scaled down), its checkpoint,
    and the brightness episodes split as training would split them."""
    cfg = Config.from_dict(
        {"data": {"path": str(brightness_dir), "seq_len": 8, "val_fraction": 0.25}, "model": {"size": "tiny"}}
    )
    train, val, codec = load_splits(cfg, per_step=("level", "shuffled"))
    torch.manual_seed(0)
    model = WorldModel(cfg.model)
    path = tmp_path_factory.mktemp("probe") / "untrained.pt"
    save_checkpoint(path, model, cfg, codec)
    return model, codec, train, val, path


def test_features_are_h_and_z_of_every_frame(brightness):
    model, codec, train, _, _ = brightness
    features = probe_features(model, train, codec)
    assert features.shape == (train.frames, model.cfg.deter_dim + model.cfg.latent_dim)
    assert np.isfinite(features).all()
    np.testing.assert_array_equal(features[0, : model.cfg.deter_dim], 0)  # h_0 = 0: no frame seen before


def test_a_known_function_of_the_frames_gets_a_high_r2_and_a_shuffled_one_about_zero(brightness_dir, brightness):
    _, _, _, _, path = brightness
    report = evaluate_checkpoint(
        path, brightness_dir, context=3, horizon=5, max_sequences=8, progress=False, probes=("level", "shuffled")
    )
    level, shuffled = report.probes
    assert level.key == "level" and level.r2 > 0.9 and level.z_r2 > 0.9
    assert abs(shuffled.r2) < 0.15 and shuffled.train_r2 > shuffled.r2  # it fits noise on train only
    assert level.train_frames == 6 * 48 and level.val_frames == 2 * 48 and level.features == 32 + 8


def test_ridge_recovers_a_linear_map_and_r2_scores_it():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 5))
    y = x @ np.array([[1.0], [-2.0], [0.0], [0.5], [3.0]]) + 4.0
    predict = fit_ridge(x, y, ridge=1e-6)
    assert r2_score(y, predict(x)) == pytest.approx(1.0, abs=1e-9)
    assert r2_score(y, np.full_like(y, y.mean())) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="constant"):
        r2_score(np.ones((4, 1)), np.zeros((4, 1)))


def test_a_missing_probe_array_fails_naming_the_file(brightness_dir, brightness):
    _, _, _, _, path = brightness
    with pytest.raises(ValueError, match=r"no array 'reward' in the episode file"):
        evaluate_checkpoint(path, brightness_dir, context=3, horizon=5, progress=False, probes=("reward",))


def test_wm_eval_probe_cli_reports_r2_and_collapse(brightness_dir, brightness, tmp_path):
    _, _, _, _, path = brightness
    out = tmp_path / "report"
    args = [path, "--data", brightness_dir, "--context", 3, "--horizon", 5, "-o", out, "--no-progress"]
    result = subprocess.run(
        [str(BIN / "wm-eval"), *map(str, args), "--probe", "level"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "probe level: R² val 0.9" in result.stdout
    assert "latents: 0/8 dimensions vary across frames" in result.stdout and "POSTERIOR COLLAPSE" in result.stdout
    saved = json.loads((out / "report.json").read_text())
    assert saved["probes"][0]["key"] == "level" and saved["probes"][0]["r2"] > 0.9
    assert saved["splits"]["val"]["latents"]["collapsed"] is True
