"""The VAE loss must never train the RSSM, and the RSSM loss must never train the encoder or decoder: with the
plain loss and with every anti-collapse option (free nats, KL warm-up, change-weighted reconstruction)."""

import pytest
import torch

from wm_train import Config, WorldModel
from wm_train.trainer import clip_gradients

# WorldModel.forward's loss options, as the trainer passes them: the plain loss, each option, all at once.
# beta=0 is the first step of a KL warm-up.
LOSS_OPTIONS = {
    "plain": {},
    "free_nats": {"free_nats": 0.5},
    "free_nats_above_every_kl": {"free_nats": 1e6},
    "kl_warmup_first_step": {"beta": 0.0},
    "recon_change_weight": {"recon_change_weight": 20.0},
    "all": {"free_nats": 0.5, "beta": 0.3, "recon_change_weight": 20.0},
}
_TRAIN_DEFAULTS = Config.from_dict({}).train
LOSS_OPTIONS["defaults"] = {
    "free_nats": _TRAIN_DEFAULTS.free_nats,
    "beta": _TRAIN_DEFAULTS.beta,
    "recon_change_weight": _TRAIN_DEFAULTS.recon_change_weight,
}


def _model():
    torch.manual_seed(0)
    return WorldModel(Config.from_dict({"model": {"size": "tiny"}}).model)


def _grads(module):
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize("options", LOSS_OPTIONS.values(), ids=LOSS_OPTIONS.keys())
def test_vae_loss_leaves_every_rssm_parameter_without_grad(random_batch, options):
    model = _model()
    out = model(*random_batch, **options)
    (out.recon_loss + out.kld).backward()  # recon_loss is the weighted one when recon_change_weight is set
    assert all(g is None for g in _grads(model.rssm))
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(model.encoder))
    assert all(g is not None for g in _grads(model.decoder))


@pytest.mark.parametrize("options", LOSS_OPTIONS.values(), ids=LOSS_OPTIONS.keys())
def test_the_total_reaches_the_rssm_only_through_the_rssm_loss(random_batch, options):
    # The floored and warmed-up KL is only inside `loss`: its gradient on the RSSM must be exactly that of
    # rssm_scale * rssm_loss, i.e. the VAE part adds nothing.
    model = _model()
    out = model(*random_batch, rssm_scale=0.7, **options)
    rssm = list(model.rssm.parameters())
    from_total = torch.autograd.grad(out.loss, rssm, retain_graph=True)
    from_rssm_loss = torch.autograd.grad(0.7 * out.rssm_loss, rssm)
    for total, expected in zip(from_total, from_rssm_loss):
        torch.testing.assert_close(total, expected, rtol=0, atol=0)


@pytest.mark.parametrize("options", LOSS_OPTIONS.values(), ids=LOSS_OPTIONS.keys())
def test_rssm_loss_leaves_encoder_and_decoder_without_grad(random_batch, options):
    model = _model()
    model(*random_batch, **options).rssm_loss.backward()
    assert all(g is None for g in _grads(model.encoder))
    assert all(g is None for g in _grads(model.decoder))
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(model.rssm))


@pytest.mark.parametrize("options", LOSS_OPTIONS.values(), ids=LOSS_OPTIONS.keys())
def test_total_loss_reaches_every_module(random_batch, options):
    model = _model()
    model(*random_batch, **options).loss.backward()
    for module in (model.encoder, model.decoder, model.rssm):
        assert all(g is not None for g in _grads(module))


def test_vae_kl_alone_leaves_the_rssm_without_grad(random_batch):
    model = _model()
    model(*random_batch).kld.backward()
    assert all(g is None for g in _grads(model.rssm)) and all(g is None for g in _grads(model.decoder))


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


def _model_with_heads():
    torch.manual_seed(0)
    return WorldModel(Config.from_dict({"model": {"size": "tiny", "heads": True}}).model)


def _head_targets(batch):
    obs, _ = batch
    B, T = obs.shape[:2]
    rewards = torch.linspace(-1.0, 3.0, B * T).view(B, T)
    continues = torch.ones(B, T)
    continues[0, -1] = 0.0
    return {"rewards": rewards, "continues": continues}


@pytest.mark.parametrize("options", LOSS_OPTIONS.values(), ids=LOSS_OPTIONS.keys())
def test_head_losses_train_the_heads_alone(random_batch, options):
    model = _model_with_heads()
    out = model(*random_batch, overshooting=3, head_overshooting=4, **_head_targets(random_batch), **options)
    assert out.reward_loss > 0 and out.cont_loss > 0
    (out.reward_loss + out.cont_loss).backward()
    for module in (model.encoder, model.decoder, model.rssm):
        assert all(g is None for g in _grads(module))
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(model.heads))


def _floored_kl(model, obs, free_nats: float) -> torch.Tensor:
    """The VAE's KL of the first frames against N(0, 1), floored per dimension at `free_nats`, computed here
    from the encoder's output rather than by the model's loss code -> (floored KL, batch-mean KL per dim)."""
    mean, std = model.encode(obs)
    mean, std = mean[:, 0], std[:, 0]  # [B, T, S] -> [B, S]
    per_dim = (0.5 * (std.pow(2) + mean.pow(2) - 1.0) - std.log()).mean(0)  # closed form, [S]
    return (per_dim.clamp(min=free_nats) if free_nats > 0 else per_dim).sum(), per_dim


@pytest.mark.parametrize("options", LOSS_OPTIONS.values(), ids=LOSS_OPTIONS.keys())
def test_with_heads_the_total_reaches_each_module_only_through_its_own_loss(random_batch, options):
    model = _model_with_heads()
    latent = model.encoder.posterior_head.out_features // 2
    with torch.no_grad():  # half the posterior means far from 0: their KL lies above any floor tested here
        model.encoder.posterior_head.bias[:latent:2] += 1.5
    free_nats = options.get("free_nats", 0.0)
    floored, per_dim = _floored_kl(model, random_batch[0], free_nats)
    if 0 < free_nats < 1e6:  # the floor holds some dimensions' KL gradient back and passes others'
        assert (per_dim.detach() > free_nats).any() and (per_dim.detach() < free_nats).any(), per_dim
    out = model(
        *random_batch, rssm_scale=0.7, overshooting=3, head_overshooting=4, **_head_targets(random_batch), **options
    )
    checks = {
        model.rssm: 0.7 * (out.rssm_loss + 2 * out.overshooting) / 3,
        model.heads: out.reward_loss + out.cont_loss,
        model.encoder: out.recon_loss + options.get("beta", 1.0) * floored,
        model.decoder: out.recon_loss,
    }
    for module, own_loss in checks.items():
        params = list(module.parameters())
        from_total = torch.autograd.grad(out.loss, params, retain_graph=True)
        from_own = torch.autograd.grad(own_loss, params, retain_graph=True, allow_unused=True)
        for total, expected in zip(from_total, from_own, strict=True):
            torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("per_part", [True, False], ids=["per_part", "global"])
def test_clipping_per_part_keeps_the_vae_loss_out_of_the_rssm_step(random_batch, per_part):
    # The VAE loss has no gradient on the RSSM, but a global clip norm would let it shrink the RSSM's step.
    clipped = []
    for vae_scale in (1.0, 1000.0):
        model = _model()
        out = model(*random_batch)
        (out.loss + (vae_scale - 1.0) * out.recon_loss).backward()
        clip_gradients(model, max_norm=1.0, per_part=per_part)
        clipped.append(_grads(model.rssm))
    same = all(torch.equal(a, b) for a, b in zip(*clipped))
    assert same == per_part
