import torch

from wm_train import Config, WorldModel


def test_prior_depends_on_the_action():
    torch.manual_seed(0)
    rssm = WorldModel(Config.from_dict({"model": {"size": "tiny"}}).model).rssm
    h, z = torch.randn(3, rssm.deter_dim), torch.randn(3, 8)
    _, mean_a, std_a = rssm.step(h, z, torch.zeros(3, 3))
    _, mean_b, std_b = rssm.step(h, z, torch.ones(3, 3))
    assert (mean_a - mean_b).abs().max() > 1e-3
    assert (std_a - std_b).abs().max() > 1e-4


def test_imagined_latents_depend_on_the_action_sequence():
    torch.manual_seed(0)
    rssm = WorldModel(Config.from_dict({"model": {"size": "tiny"}}).model).rssm
    h, z = rssm.initial_state(2), torch.randn(2, 8)
    actions = torch.randn(2, 10, 3)
    z_true, _, _ = rssm.imagine(h, z, actions)
    z_other, _, _ = rssm.imagine(h, z, actions.flip(1))
    assert (z_true[:, -1] - z_other[:, -1]).abs().max() > 1e-3
