"""Latent overshooting: what the new loss term computes, and what K = 1 leaves unchanged."""

import torch

from wm_core.losses import gaussian_kl
from wm_train import Config, WorldModel


def _model():
    torch.manual_seed(0)
    return WorldModel(Config.from_dict({"model": {"size": "tiny"}}).model)


def test_k_equal_1_is_the_seeds_loss(random_batch):
    model = _model()
    torch.manual_seed(1)
    plain = model(*random_batch)
    torch.manual_seed(1)
    one = model(*random_batch, overshooting=1)
    assert float(one.overshooting) == 0.0
    assert torch.equal(plain.loss, one.loss) and torch.equal(plain.rssm_loss, one.rssm_loss)


def test_each_distance_is_the_kl_to_an_open_loop_rollout_from_every_start(random_batch):
    """overshooting = mean over k = 2..K of KL(posterior at t+k || the prior rolled k steps from t's posterior),
    checked against a plain loop over starts and RSSM.imagine."""
    model = _model()
    obs, actions = random_batch
    K = 3
    torch.manual_seed(1)
    out = model(obs, actions, overshooting=K)
    with torch.no_grad():
        mean, std = model.encode(obs)
        T = obs.shape[1]
        per_k = []
        for k in range(2, K + 1):
            kls = []
            for t in range(T - k):
                h = torch.zeros(obs.shape[0], model.rssm.deter_dim)
                for s in range(t):  # teacher-forced up to the start
                    h, _, _ = model.rssm.step(h, mean[:, s], actions[:, s])
                prior_mean, prior_std, _ = model.rssm.imagine(h, mean[:, t], actions[:, t : t + k])
                kls.append(gaussian_kl(mean[:, t + k], std[:, t + k], prior_mean[:, -1], prior_std[:, -1]))
            per_k.append(torch.stack(kls, 1).mean())
        expected = torch.stack(per_k).mean()
    torch.testing.assert_close(out.overshooting, expected, rtol=1e-5, atol=1e-6)
    rssm_part = (out.rssm_loss + (K - 1) * out.overshooting) / K
    torch.testing.assert_close(out.loss, out.recon_loss + out.kld + rssm_part)


def test_overshooting_longer_than_a_window_is_refused():
    import pytest

    with pytest.raises(ValueError, match=r"train.overshooting must be in \[1, data.seq_len - 1 = 7\], got 8"):
        Config.from_dict({"data": {"seq_len": 8}, "train": {"overshooting": 8}})


def test_training_logs_overshooting_and_the_open_loop_mse_every_epoch(carracing_dir, tiny_config, tmp_path):
    from wm_train.trainer import train

    history = train(tiny_config(carracing_dir, tmp_path / "run", overshooting=3, epochs=1), progress=False)
    val = history[-1].val
    assert val["overshooting"] > 0 and {"open_loop_mse@1", "open_loop_mse@5"} <= set(val)
    assert "open_loop_mse@10" not in val  # windows of 8 frames reach 7 steps
    line = history[-1].log_line("val")
    assert " os=" in line and " ol@1=" in line and " ol@5=" in line
