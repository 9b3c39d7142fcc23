"""Posterior collapse is measured on the posteriors and reported: a constructed collapsed encoder against a
healthy one, and the rule that turns the measures into a warning."""

import pytest
import torch

from wm_core.config import Config
from wm_core.model import WorldModel
from wm_train.collapse import ACTIVE_RATIO, LatentActivity, collapse_reason, latent_activity
from wm_train.data import load_splits
from wm_train.eval_metrics import teacher_forced_losses


@pytest.fixture(scope="module")
def splits(brightness_dir):
    cfg = Config.from_dict({"data": {"path": str(brightness_dir), "seq_len": 8, "val_fraction": 0.25}})
    cfg.model = Config.from_dict({"model": {"size": "tiny"}}).model
    return cfg, *load_splits(cfg)


def _model(cfg):
    torch.manual_seed(0)
    return WorldModel(cfg.model)


def test_a_collapsed_encoder_has_no_active_dimension_and_zero_kl(splits, collapse_encoder):
    cfg, _, val, codec = splits
    model = collapse_encoder(_model(cfg))
    windows = val.fixed_windows()
    activity = latent_activity(model, windows, codec)
    kld = teacher_forced_losses(model, windows, codec, cfg.train, seed=0)["kld"]
    assert activity.active_dims == 0 and activity.latent_std == pytest.approx(0.0, abs=1e-6)
    assert activity.posterior_std == pytest.approx(1.0, abs=1e-4) and kld == pytest.approx(0.0, abs=1e-4)
    reason = collapse_reason(activity, kld)
    assert reason is not None and "0 of 8 active" in reason and "kld 0.000" in reason


def test_an_untrained_encoder_counts_as_collapsed_and_one_whose_means_follow_the_frames_does_not(splits):
    cfg, _, val, codec = splits
    model = _model(cfg)
    # Untrained, the posterior means move by ~1e-3 while the posterior std is ~0.7: nothing reaches the decoder.
    assert latent_activity(model, val.fixed_windows(), codec).active_dims == 0
    with torch.no_grad():
        model.encoder.posterior_head.weight[: cfg.model.latent_dim] *= 1000  # the rows of the means
    activity = latent_activity(model, val.fixed_windows(), codec)
    assert activity.active_dims == cfg.model.latent_dim
    assert activity.latent_std > ACTIVE_RATIO * activity.posterior_std
    assert collapse_reason(activity, kld=0.0) is None


def test_during_training_collapse_needs_a_kl_near_zero_or_a_stalled_reconstruction():
    dead = LatentActivity(latent_std=0.001, posterior_std=0.9, active_dims=0, latent_dim=8)
    assert collapse_reason(dead, kld=5.0, rec_history=[100.0, 99.5, 98.0]) is None  # a slow start: improving
    stalled = collapse_reason(dead, kld=5.0, rec_history=[120.0, 100.0, 99.7, 99.5])
    assert "rec stopped improving (100.00 -> 99.50)" in stalled
    assert "kld 0.010 nats" in collapse_reason(dead, kld=0.01, rec_history=[100.0, 80.0])
    alive = LatentActivity(latent_std=0.5, posterior_std=0.1, active_dims=3, latent_dim=8)
    assert collapse_reason(alive, kld=0.0, rec_history=[100.0, 100.0]) is None
