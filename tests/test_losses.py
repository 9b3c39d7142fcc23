"""The loss terms: the plain loss is unchanged by default; free nats floor each latent dimension's KL; the
change weights pick out the pixels that move."""

import pytest
import torch

from wm_core.losses import LossSettings, change_weights, free_nats_kl, gaussian_kl, reconstruction_loss
from wm_train import Config, WorldModel


def test_default_options_give_the_plain_loss(random_batch):
    torch.manual_seed(0)
    model = WorldModel(Config.from_dict({"model": {"size": "tiny"}}).model)
    obs, actions = random_batch
    torch.manual_seed(1)
    out = model(obs, actions, beta=0.5, rssm_scale=2.0)
    torch.manual_seed(1)
    mean, std = model.encode(obs)
    recon = model.decode(mean + std * torch.randn_like(std))
    kld = gaussian_kl(mean[:, 0], std[:, 0], torch.zeros_like(mean[:, 0]), torch.ones_like(std[:, 0])).mean()
    expected_rec = (recon - obs).pow(2).flatten(-3).sum(-1).mean()
    torch.testing.assert_close(out.recon_loss, expected_rec)
    torch.testing.assert_close(out.kld, kld)
    torch.testing.assert_close(out.loss, expected_rec + 0.5 * kld + 2.0 * out.rssm_loss)


def test_free_nats_floor_each_dimension_and_stop_its_gradient():
    kl = torch.tensor([[0.1, 2.0], [0.3, 4.0]], requires_grad=True)  # [N=2, S=2]: means 0.2 and 3.0
    loss = free_nats_kl(kl, free_nats=1.0)
    assert float(loss.detach()) == pytest.approx(1.0 + 3.0)
    loss.backward()
    assert kl.grad[:, 0].abs().sum() == 0  # under the floor: the KL does not pull it to the prior
    assert torch.equal(kl.grad[:, 1], torch.tensor([0.5, 0.5]))


def test_free_nats_leave_the_logged_kld_true(random_batch):
    torch.manual_seed(0)
    model = WorldModel(Config.from_dict({"model": {"size": "tiny"}}).model)
    torch.manual_seed(1)
    plain = model(*random_batch)
    torch.manual_seed(1)
    floored = model(*random_batch, free_nats=100.0)
    torch.testing.assert_close(floored.kld, plain.kld)
    assert float((floored.loss - floored.rssm_loss - floored.recon_loss).detach()) == pytest.approx(100.0 * 8)


def test_change_weights_are_one_on_a_static_background_and_higher_where_an_object_moves():
    frames = torch.ones(1, 5, 3, 8, 8)  # [B, T, C, H, W]: white
    for t in range(5):
        frames[0, t, :, 2, t] = 0.0  # a black pixel moving right
    weights = change_weights(frames, 10.0)
    assert weights.shape == (1, 5, 1, 8, 8)
    for t in range(5):
        assert float(weights[0, t, 0, 2, t]) == pytest.approx(11.0)
    weights[0, :, 0, 2, :5] = 1.0
    assert torch.equal(weights, torch.ones_like(weights))


def test_weighted_reconstruction_counts_the_moving_pixels_more():
    target = torch.ones(1, 5, 3, 8, 8)
    target[0, :, :, 2, 0] = 0.0
    target[0, 2, :, 2, 0], target[0, 2, :, 2, 1] = 1.0, 0.0  # frame 2: the pixel moved one to the right
    background = torch.ones_like(target)  # a decoder that draws only the background
    plain = reconstruction_loss(background, target)
    weighted = reconstruction_loss(background, target, change_weights(target, 10.0))
    assert float(weighted) > 2 * float(plain)
    assert not change_weights(target.requires_grad_(), 10.0).requires_grad


def test_settings_passed_whole_or_as_keywords_give_the_same_loss(random_batch):
    torch.manual_seed(0)
    model = WorldModel(Config.from_dict({"model": {"size": "tiny"}}).model)
    settings = LossSettings(beta=0.3, free_nats=0.5, recon_change_weight=20.0, rssm_scale=0.7, overshooting=3)
    torch.manual_seed(1)
    whole = model(*random_batch, settings).scalars()
    torch.manual_seed(1)
    keywords = model(
        *random_batch, beta=0.3, free_nats=0.5, recon_change_weight=20.0, rssm_scale=0.7, overshooting=3
    ).scalars()
    assert whole == keywords
    with pytest.raises(TypeError, match="bta"):
        model(*random_batch, bta=0.3)


def test_a_positional_beta_is_refused_by_name(random_batch):
    model = WorldModel(Config.from_dict({"model": {"size": "tiny"}}).model)
    with pytest.raises(TypeError, match="settings must be a LossSettings, got float 0.5"):
        model(*random_batch, 0.5)
