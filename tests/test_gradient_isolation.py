"""The VAE loss must never train the RSSM, and the RSSM loss must never train the encoder or decoder."""

import torch

from wm_train import Config, WorldModel


def _model():
    torch.manual_seed(0)
    return WorldModel(Config.from_dict({"model": {"size": "tiny"}}).model)


def _grads(module):
    return [p.grad for p in module.parameters()]


def test_vae_loss_leaves_every_rssm_parameter_without_grad(random_batch):
    model = _model()
    out = model(*random_batch)
    (out.recon_loss + out.kld).backward()
    assert all(g is None for g in _grads(model.rssm))
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(model.encoder))
    assert all(g is not None for g in _grads(model.decoder))


def test_rssm_loss_leaves_encoder_and_decoder_without_grad(random_batch):
    model = _model()
    model(*random_batch).rssm_loss.backward()
    assert all(g is None for g in _grads(model.encoder))
    assert all(g is None for g in _grads(model.decoder))
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(model.rssm))


def test_total_loss_reaches_every_module(random_batch):
    model = _model()
    model(*random_batch).loss.backward()
    for module in (model.encoder, model.decoder, model.rssm):
        assert all(g is not None for g in _grads(module))


def test_one_step_metric_trains_nothing(random_batch):
    model = _model()
    assert not model(*random_batch).one_step.requires_grad


def test_overshooting_trains_the_rssm_alone_and_the_vae_loss_still_leaves_it_alone(random_batch):
    model = _model()
    out = model(*random_batch, overshooting=3)
    assert out.overshooting > 0
    out.overshooting.backward(retain_graph=True)
    assert all(g is None for g in _grads(model.encoder))
    assert all(g is None for g in _grads(model.decoder))
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(model.rssm))
    model.zero_grad(set_to_none=True)
    (out.recon_loss + out.kld).backward()
    assert all(g is None for g in _grads(model.rssm))
