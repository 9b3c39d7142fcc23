import math

import pytest
import torch

from wm_core.losses import gaussian_kl
from wm_train import Config, WorldModel, WorldModelOutput


def test_forward_returns_finite_scalar_losses(random_batch):
    out = WorldModel(Config.from_dict({"model": {"size": "tiny"}}).model)(*random_batch)
    assert isinstance(out, WorldModelOutput)
    values = out.scalars()
    assert set(values) == {
        "loss",
        "recon_loss",
        "kld",
        "rssm_loss",
        "one_step",
        "overshooting",
        "reward_loss",
        "cont_loss",
    }
    assert all(math.isfinite(v) for v in values.values())


def test_total_is_vae_plus_scaled_rssm(random_batch):
    torch.manual_seed(0)
    model = WorldModel(Config.from_dict({"model": {"size": "tiny"}}).model)
    torch.manual_seed(1)
    out = model(*random_batch, beta=0.5, rssm_scale=3.0)
    torch.testing.assert_close(out.loss, out.recon_loss + 0.5 * out.kld + 3.0 * out.rssm_loss)


def test_default_model_shapes():
    model = WorldModel(Config().model)
    frames = torch.rand(5, 3, 64, 64)
    mean, std = model.encoder(frames)
    assert mean.shape == std.shape == (5, 32) and (std > 0).all()
    assert model.decoder(mean).shape == (5, 3, 64, 64)
    h = model.rssm.initial_state(5)
    h_next, prior_mean, prior_std = model.rssm.step(h, mean, torch.zeros(5, 3))
    assert h_next.shape == (5, 256) and prior_mean.shape == (5, 32)
    assert (prior_std >= model.cfg.min_std).all()


def test_gaussian_kl_is_zero_for_equal_and_positive_otherwise():
    mean, std = torch.randn(4, 8), torch.rand(4, 8) + 0.1
    torch.testing.assert_close(gaussian_kl(mean, std, mean, std), torch.zeros(4))
    assert (gaussian_kl(mean, std, mean + 1, std * 2) > 0).all()


def test_a_few_steps_reduce_the_loss(random_batch):
    obs = torch.full_like(random_batch[0], 0.8)  # learnable frames, unlike uniform noise
    torch.manual_seed(0)
    model = WorldModel(Config.from_dict({"model": {"size": "tiny"}}).model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(obs, random_batch[1])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_the_legacy_keyword_arguments_warn_and_change_nothing(random_batch):
    cfg = Config.from_dict({"model": {"size": "tiny"}}).model
    torch.manual_seed(0)
    plain = WorldModel(cfg)
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning) as record:
        legacy = WorldModel(cfg, rssm_gate_threshold=0.5, grad_detach_schedule_k=7)
    messages = [str(w.message) for w in record]
    assert messages == [
        "WorldModel(rssm_gate_threshold=...) is deprecated and ignored",
        "WorldModel(grad_detach_schedule_k=...) is deprecated and ignored",
    ]
    assert all(w.filename == __file__ for w in record)  # the warning points at the caller
    for name, tensor in plain.state_dict().items():
        assert torch.equal(legacy.state_dict()[name], tensor)
    torch.manual_seed(1)
    expected = plain(*random_batch).scalars()
    torch.manual_seed(1)
    assert legacy(*random_batch).scalars() == expected
