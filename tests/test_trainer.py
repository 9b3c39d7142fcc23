import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch

from wm_core.config import Config
from wm_core.losses import PLAIN_LOSS
from wm_train import load_checkpoint
from wm_train.trainer import EpochMetrics, Trainer, train


def test_training_writes_checkpoints_metrics_and_previews(carracing_config):
    history = train(carracing_config, progress=False)
    out = carracing_config.train.out_dir
    assert [m.epoch for m in history] == [1, 2]
    lines = (tmp := __import__("pathlib").Path(out) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert set(json.loads(lines[0])["train"]) == {
        "loss",
        "recon_loss",
        "kld",
        "rssm_loss",
        "one_step",
        "overshooting",
        "reward_loss",
        "cont_loss",
    }
    assert set(json.loads(lines[0])["val"]) == set(json.loads(lines[0])["train"]) | {
        "latent_std",
        "posterior_std",
        "active_dims",
        "open_loop_mse@1",
        "open_loop_mse@5",
    }
    assert (tmp.parent / "preview_epoch002.png").stat().st_size > 0
    model, cfg, extras = load_checkpoint(tmp.parent / "last.pt")
    assert cfg == carracing_config and extras["epoch"] == 2
    assert (tmp.parent / "best.pt").exists()


def test_same_seed_gives_the_same_metrics(carracing_dir, tmp_path, tiny_config):
    first = train(tiny_config(carracing_dir, tmp_path / "a"), progress=False)
    second = train(tiny_config(carracing_dir, tmp_path / "b"), progress=False)
    assert [(m.train, m.val) for m in first] == [(m.train, m.val) for m in second]


def test_resume_continues_exactly(carracing_dir, tmp_path, tiny_config):
    straight = train(tiny_config(carracing_dir, tmp_path / "straight", epochs=3), progress=False)
    train(tiny_config(carracing_dir, tmp_path / "split", epochs=2), progress=False)
    resumed = train(tiny_config(carracing_dir, tmp_path / "split", epochs=3), resume=True, progress=False)
    assert [(m.train, m.val) for m in resumed] == [(m.train, m.val) for m in straight]
    a, _, _ = load_checkpoint(tmp_path / "straight" / "last.pt")
    b, _, _ = load_checkpoint(tmp_path / "split" / "last.pt")
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], tensor, rtol=0, atol=0)


def test_existing_run_without_resume_is_an_error(carracing_config):
    train(carracing_config, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(carracing_config, progress=False)


def test_resume_with_another_model_is_an_error(carracing_dir, tmp_path, tiny_config):
    train(tiny_config(carracing_dir, tmp_path, epochs=1), progress=False)
    cfg = tiny_config(carracing_dir, tmp_path, epochs=2)
    cfg.model.deter_dim = 64
    with pytest.raises(ValueError, match="trained with model config"):
        train(cfg, resume=True, progress=False)


def test_validation_errors_decrease_on_real_frames(carracing_dir, tmp_path, tiny_config):
    # rssm_loss is not asserted here: on a tiny run it first grows as the encoder starts using its latents.
    history = train(tiny_config(carracing_dir, tmp_path, epochs=6, lr=3e-3), progress=False)
    assert history[-1].val["recon_loss"] < 0.9 * history[0].val["recon_loss"]
    assert history[-1].val["one_step"] < 0.9 * history[0].val["one_step"]


def test_zero_rssm_loss_warns_with_the_checklist(carracing_config):
    trainer = Trainer(carracing_config, progress=False)
    trainer.out_dir.mkdir(parents=True)
    values = {"loss": 1.0, "recon_loss": 1.0, "kld": 0.0, "rssm_loss": 0.0, "one_step": 0.1}
    with pytest.warns(UserWarning, match="seq_len >= 4.*actions.*latents vary"):
        trainer._report(EpochMetrics(1, values, values, 100.0))


def test_log_line_has_the_documented_format():
    values = {"loss": 12.345, "recon_loss": 11.0, "kld": 0.5, "rssm_loss": 0.845, "one_step": 0.01234}
    line = EpochMetrics(3, values, values, 1.0).log_line("train")
    assert line == "epoch 3 train loss=12.35 rec=11.00 kld=0.50 rssm=0.84 1step=0.0123"
    assert dataclasses.asdict(EpochMetrics(3, values, values, 1.0))["epoch"] == 3


def _epoch(epoch: int, rec: float, kld: float, active: float) -> EpochMetrics:
    values = {"loss": rec + kld, "recon_loss": rec, "kld": kld, "rssm_loss": 0.5, "one_step": 0.1}
    val = {**values, "latent_std": 0.001 if active == 0 else 0.5, "posterior_std": 1.0, "active_dims": active}
    return EpochMetrics(epoch, values, val, 100.0)


def test_posterior_collapse_warns_once_with_what_to_try(carracing_config):
    trainer = Trainer(carracing_config, progress=False)
    trainer.out_dir.mkdir(parents=True)
    first = _epoch(1, rec=50.0, kld=0.01, active=0.0)
    trainer.history.append(first)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer._report(first)  # one epoch cannot tell collapse from a slow start
        for epoch in (2, 3, 4):
            trainer.history.append(_epoch(epoch, rec=49.9, kld=0.0, active=0.0))
            trainer._report(trainer.history[-1])
    messages = [str(w.message) for w in caught if "posterior collapse" in str(w.message)]
    assert len(messages) == 1
    assert "0 of 8 active" in messages[0] and "free_nats" in messages[0] and "kl_warmup_steps" in messages[0]


def test_latents_that_vary_do_not_warn(carracing_config):
    trainer = Trainer(carracing_config, progress=False)
    trainer.out_dir.mkdir(parents=True)
    trainer.history += [_epoch(1, 50.0, 0.0, 3.0), _epoch(2, 50.0, 0.0, 3.0), _epoch(3, 50.0, 0.0, 3.0)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer._report(trainer.history[-1])
    assert not [w for w in caught if "posterior collapse" in str(w.message)]


def test_a_collapsed_model_is_seen_by_the_validation(carracing_config, collapse_encoder):
    trainer = Trainer(carracing_config, progress=False)
    collapse_encoder(trainer.model)
    val = trainer.evaluate(trainer.val_set)
    assert val["active_dims"] == 0 and val["kld"] == pytest.approx(0.0, abs=1e-4)


def test_kl_weight_ramps_from_zero_to_beta_over_the_warmup():
    t = Config.from_dict({"train": {"beta": 0.5, "kl_warmup_steps": 100}}).train
    assert [t.loss.kl_weight(s) for s in (0, 50, 100, 1000)] == [0.0, 0.25, 0.5, 0.5]
    assert Config().train.loss.kl_weight(0) == 1.0  # no warm-up: beta from the first step


def test_resume_refuses_a_config_that_changes_the_loss(carracing_dir, tmp_path, tiny_config):
    """A run started on the plain loss and resumed with a YAML that lacks the keys would switch to the new
    defaults halfway: refused, naming what it trained with."""
    plain = dataclasses.asdict(PLAIN_LOSS)
    train(tiny_config(carracing_dir, tmp_path, epochs=1, **plain), progress=False)
    with pytest.raises(ValueError, match=r"trained with train.free_nats=0.0, train.recon_change_weight=0.0; set"):
        train(tiny_config(carracing_dir, tmp_path, epochs=2), resume=True, progress=False)
    assert len(train(tiny_config(carracing_dir, tmp_path, epochs=2, **plain), resume=True, progress=False)) == 2


def test_every_loss_option_trains_and_resumes_exactly(carracing_dir, tmp_path, tiny_config):
    options = dict(free_nats=0.5, kl_warmup_steps=7, recon_change_weight=20.0)
    straight = train(tiny_config(carracing_dir, tmp_path / "straight", epochs=3, **options), progress=False)
    train(tiny_config(carracing_dir, tmp_path / "split", epochs=2, **options), progress=False)
    resumed = train(tiny_config(carracing_dir, tmp_path / "split", epochs=3, **options), resume=True, progress=False)
    assert [(m.train, m.val) for m in resumed] == [(m.train, m.val) for m in straight]
    assert all(np.isfinite(list(m.train.values())).all() for m in straight)


def test_best_pt_holds_the_epoch_with_the_lowest_validation_loss(carracing_dir, tmp_path, tiny_config):
    # lr 3e-2 overshoots after epoch 2 on these episodes: the best epoch is not the last, so a best.pt that
    # simply followed last.pt would fail here.
    train(tiny_config(carracing_dir, tmp_path / "run", epochs=4, lr=3e-2), progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    val = {m["epoch"]: m["val"]["loss"] for m in map(json.loads, lines)}
    best_epoch = min(val, key=val.__getitem__)
    assert best_epoch < max(val), f"the run's best epoch is its last, the test cannot tell: {val}"
    best, _, extras = load_checkpoint(tmp_path / "run" / "best.pt")
    assert extras["epoch"] == best_epoch and extras["best_val_loss"] == val[best_epoch]
    # The weights of that epoch, from a run stopped there (training is deterministic for a seed).
    train(tiny_config(carracing_dir, tmp_path / "short", epochs=best_epoch, lr=3e-2), progress=False)
    stopped, _, _ = load_checkpoint(tmp_path / "short" / "last.pt")
    for key, tensor in stopped.state_dict().items():
        torch.testing.assert_close(best.state_dict()[key], tensor, rtol=0, atol=0)


def test_init_from_starts_from_the_checkpoints_weights_and_action_codec(carracing_dir, tmp_path, tiny_config):
    train(tiny_config(carracing_dir, tmp_path / "first", epochs=1), progress=False)
    first = tmp_path / "first" / "last.pt"
    halved = tmp_path / "halved"  # the same frames with other actions: a refitted codec would differ
    halved.mkdir()
    for path in sorted(carracing_dir.glob("*.npz")):
        with np.load(path) as episode:
            arrays = dict(episode)
        np.savez(halved / path.name, **{**arrays, "action": arrays["action"] * 0.5})
    cfg = tiny_config(halved, tmp_path / "second", epochs=1, init_from=str(first))
    trainer = Trainer(cfg, progress=False)
    model, _, extras = load_checkpoint(first)
    assert trainer.codec == extras["action_codec"] != Trainer(tiny_config(halved, tmp_path / "x"), False).codec
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[name], tensor, rtol=0, atol=0)
    trainer.fit()
    assert load_checkpoint(tmp_path / "second" / "last.pt")[2]["action_codec"] == extras["action_codec"]
    other = tiny_config(halved, tmp_path / "third", epochs=1, init_from=str(first))
    other.model.deter_dim = 64
    with pytest.raises(ValueError, match="train.init_from .* has model config"):
        Trainer(other, progress=False)
