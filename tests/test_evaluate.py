"""`wm-eval`: open-loop metrics per horizon step, action identifiability, the train/val split, report files,
bad input. Constructed models check that the numbers mean what the report says they mean."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wm_core.model import RSSM
from wm_train import ActionCodec, Config, WorldModel
from wm_train.data import EpisodeSet, episode_paths, load_episode, save_episode, split_episodes
from wm_train.eval_metrics import open_loop, sequences_of, teacher_forced_losses
from wm_train.evaluate import evaluate_checkpoint, run_eval
from wm_train.trainer import train

BIN = Path(sys.executable).parent
CONTEXT, HORIZON = 3, 5  # 8-frame sequences: 3 per 24-frame episode


@pytest.fixture(scope="module")
def checkpoint(carracing_dir, tmp_path_factory, tiny_config):
    """A tiny model trained for one epoch on the 4 CarRacing episodes (3 train, 1 val)."""
    out = tmp_path_factory.mktemp("eval_run")
    train(tiny_config(carracing_dir, out, epochs=1), progress=False)
    return out / "last.pt"


@pytest.fixture(scope="module")
def report(checkpoint, carracing_dir):
    return evaluate_checkpoint(checkpoint, carracing_dir, context=CONTEXT, horizon=HORIZON, progress=False)


def test_report_has_every_metric_for_every_horizon_step_on_both_splits(report):
    assert report.splits["train"].sequences == 9 and report.splits["val"].sequences == 3
    for split in ("train", "val"):
        metrics = report.splits[split]
        per_step = [
            metrics.open_loop.pixel_mse,
            metrics.open_loop.latent_kl,
            metrics.open_loop.latent_mse,
            metrics.open_loop.copy_last_mse,
            metrics.actions.shuffled_pixel_mse,
            metrics.actions.random_pixel_mse,
            metrics.actions.shuffled_latent_mse,
            metrics.actions.random_latent_mse,
            metrics.actions.spread,
        ]
        assert all(len(values) == HORIZON for values in per_step)
        assert np.isfinite(np.concatenate(per_step)).all()
        assert all(v > 0 for v in metrics.open_loop.pixel_mse + metrics.open_loop.latent_kl)
        assert metrics.open_loop.reward_r2 is None  # a model without heads
        assert set(metrics.losses) == {
            "loss",
            "recon_loss",
            "kld",
            "rssm_loss",
            "one_step",
            "overshooting",
            "reward_loss",
            "cont_loss",
        }
        assert 0 < metrics.actions.ratio_shuffled < 10 and metrics.actions.latent_scale > 0
        latents = metrics.latents
        assert latents.latent_dim == 8 and 0 <= latents.active_dims <= 8 and latents.posterior_std > 0
        assert latents.collapsed == (latents.active_dims == 0) and bool(latents.collapse_reason) == latents.collapsed
    assert report.probes == []
    train_rssm, val_rssm = report.splits["train"].losses["rssm_loss"], report.splits["val"].losses["rssm_loss"]
    assert report.gap["rssm_loss"] == pytest.approx(val_rssm - train_rssm)
    assert report.gap["rssm_loss_relative"] == pytest.approx((val_rssm - train_rssm) / train_rssm)


def test_val_split_is_the_episode_training_held_out(report, carracing_dir, tiny_config):
    cfg = tiny_config(carracing_dir, "unused")
    _, val_paths = split_episodes(episode_paths(carracing_dir), cfg.data.val_fraction, cfg.train.seed)
    obs, _ = load_episode(val_paths[0], "continuous", 3, 64)
    expected = torch.from_numpy(obs[: CONTEXT + HORIZON]).permute(0, 3, 1, 2).float() / 255  # [L, 3, H, W]
    assert report.split == "val"
    np.testing.assert_array_equal(report.examples.real[0], expected.numpy())


class BrightnessRSSM(RSSM):
    """Knows the constructed world exactly: the next frame's brightness is the action (uses_actions), or
    believes nothing changes (blind)."""

    def __init__(self, latent_dim: int, uses_actions: bool):
        super().__init__(latent_dim, 1, 4, 4, 0.1)
        self.uses_actions = uses_actions

    def step(self, h, z, action):
        mean = action[:, :1].expand_as(z) if self.uses_actions else z
        return h, mean, torch.full_like(z, 0.1)


class BrightnessModel(WorldModel):
    """Latent = mean brightness of the frame in every dimension; decoding paints a uniform frame."""

    def __init__(self, uses_actions: bool):
        super().__init__(Config.from_dict({"model": {"size": "tiny", "action_dim": 1}}).model)
        self.rssm = BrightnessRSSM(self.cfg.latent_dim, uses_actions)

    def encode(self, obs):
        mean = obs.mean(dim=(-3, -2, -1)).unsqueeze(-1).expand(*obs.shape[:2], self.cfg.latent_dim)  # [B, T, S]
        return mean, torch.full_like(mean, 0.1)

    def decode(self, z):
        return z[..., :1, None, None].expand(*z.shape[:-1], 3, self.cfg.frame_size, self.cfg.frame_size)


def _brightness_episodes(episodes: int = 4, length: int = 24) -> EpisodeSet:
    """Uniform frames whose brightness is set by the previous action: action[t] = brightness[t + 1]."""
    rng = np.random.default_rng(0)
    obs, actions = [], []
    for _ in range(episodes):
        level = rng.integers(0, 256, size=length + 1)
        obs.append(np.broadcast_to(level[:length, None, None, None], (length, 64, 64, 3)).astype(np.uint8))
        actions.append((level[1:, None] / 255.0).astype(np.float32))
    return EpisodeSet(obs, actions, CONTEXT + HORIZON)


IDENTITY_CODEC = ActionCodec("continuous", 1, (0.0,), (1.0,))


def test_a_model_that_uses_the_true_actions_has_ratio_near_zero():
    sequences = sequences_of(_brightness_episodes(), CONTEXT + HORIZON, 64, "val")
    metrics, actions, _ = open_loop(BrightnessModel(uses_actions=True), IDENTITY_CODEC, sequences, CONTEXT, HORIZON)
    assert max(metrics.pixel_mse) < 1e-10  # the true actions, aligned step for step, predict every frame
    assert min(actions.shuffled_pixel_mse) > 1e-3 and min(actions.random_pixel_mse) > 1e-3
    assert actions.ratio_shuffled < 1e-6 and actions.ratio_random < 1e-6 and actions.latent_ratio_shuffled < 1e-6
    assert actions.spread_mean > 0.1


def test_a_model_blind_to_actions_has_ratio_one_and_no_spread():
    sequences = sequences_of(_brightness_episodes(), CONTEXT + HORIZON, 64, "val")
    metrics, actions, _ = open_loop(BrightnessModel(uses_actions=False), IDENTITY_CODEC, sequences, CONTEXT, HORIZON)
    assert actions.ratio_shuffled == 1.0 and actions.ratio_random == 1.0
    assert actions.spread == pytest.approx([0.0] * HORIZON, abs=1e-6)
    # Blind persistence is exactly the repeat-last-frame baseline.
    np.testing.assert_allclose(metrics.pixel_mse, metrics.copy_last_mse, rtol=1e-6)


class BrightnessHeads(torch.nn.Module):
    """Reads the reward off the state: the brightness the latent holds (the reward of _rewarded below)."""

    def predict(self, h, z):
        return z[..., 0], torch.ones_like(z[..., 0])


def _rewarded(episodes: EpisodeSet) -> EpisodeSet:
    """The reward after action t is the brightness it sets, action[t] (the heads' targets, reward_window 1)."""
    episodes.rewards = [a[:, 0].copy() for a in episodes.actions]
    episodes.continues = [np.ones(len(a), np.float32) for a in episodes.actions]
    return episodes


@pytest.mark.parametrize("uses_actions", [True, False], ids=["true dynamics", "blind"])
def test_imagined_rewards_are_scored_against_the_heads_targets_per_step(uses_actions):
    sequences = sequences_of(_rewarded(_brightness_episodes()), CONTEXT + HORIZON, 64, "val")
    model = BrightnessModel(uses_actions)
    model.heads = BrightnessHeads()
    metrics, _, _ = open_loop(model, IDENTITY_CODEC, sequences, CONTEXT, HORIZON)
    assert metrics.reward_r2 is not None and len(metrics.reward_r2) == HORIZON
    if uses_actions:  # every imagined state holds the brightness its action set: the reward exactly
        assert metrics.reward_r2 == pytest.approx([1.0] * HORIZON, abs=1e-6)
    else:  # stuck at the last context frame: no better than the targets' mean
        assert max(metrics.reward_r2) < 0.1
    without = open_loop(BrightnessModel(uses_actions), IDENTITY_CODEC, sequences, CONTEXT, HORIZON)[0]
    assert without.reward_r2 is None  # no heads, nothing to score


def test_teacher_forced_losses_with_a_seed_repeat_and_leave_the_callers_rng_alone():
    """wm-eval seeds them; the trainer's validation (no seed) draws from the global RNG, as training always has."""
    cfg = Config.from_dict({"model": {"size": "tiny", "action_dim": 1}})
    model, windows = WorldModel(cfg.model), _brightness_episodes().fixed_windows()
    state = torch.get_rng_state()
    seeded = teacher_forced_losses(model, windows, IDENTITY_CODEC, cfg.train, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert teacher_forced_losses(model, windows, IDENTITY_CODEC, cfg.train, seed=3) == seeded
    assert set(seeded) == {
        "loss",
        "recon_loss",
        "kld",
        "rssm_loss",
        "one_step",
        "overshooting",
        "reward_loss",
        "cont_loss",
    }
    teacher_forced_losses(model, windows, IDENTITY_CODEC, cfg.train)
    assert not torch.equal(torch.get_rng_state(), state)


def test_trained_model_with_its_action_weights_zeroed_ignores_actions(checkpoint, carracing_dir):
    from wm_train import load_checkpoint
    from wm_train.data import load_splits

    model, cfg, extras = load_checkpoint(checkpoint)
    with torch.no_grad():
        model.rssm.input_layer[0].weight[:, cfg.model.latent_dim :] = 0  # the columns that read the action
    train_set, _, _ = load_splits(cfg)
    sequences = sequences_of(train_set, CONTEXT + HORIZON, 64, "train")
    _, actions, _ = open_loop(model, extras["action_codec"], sequences, CONTEXT, HORIZON)
    assert actions.ratio_shuffled == 1.0 and actions.ratio_random == 1.0
    assert actions.spread_mean == pytest.approx(0.0, abs=1e-6)


def test_run_eval_writes_report_json_plot_and_strips(checkpoint, carracing_dir, tmp_path):
    out = tmp_path / "report"
    run_eval(checkpoint, carracing_dir, out, context=CONTEXT, horizon=HORIZON, examples=2, progress=False)
    saved = json.loads((out / "report.json").read_text())
    assert saved["horizon"] == HORIZON and saved["split"] == "val"
    assert len(saved["splits"]["val"]["open_loop"]["pixel_mse"]) == HORIZON
    assert set(saved["gap"]) >= {"rssm_loss", "rssm_loss_relative"}
    assert saved["files"]["strips"] == ["strip_00.png", "strip_01.png"]
    for name in ["error_vs_horizon.png", *saved["files"]["strips"]]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary folder left beside it


def _assert_no_report(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(horizon=0), "context and horizon must be >= 1"),
        (dict(context=0), "context and horizon must be >= 1"),
        (dict(horizon=30), "no episode has context + horizon = 33 frames (the longest has 24)"),
    ],
)
def test_bad_settings_fail_with_a_clear_message_and_no_report(checkpoint, carracing_dir, tmp_path, settings, message):
    out = tmp_path / "report"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        run_eval(checkpoint, carracing_dir, out, **{"context": CONTEXT, "horizon": HORIZON, **settings}, progress=False)
    _assert_no_report(out)


def test_missing_checkpoint_or_data_fails_with_the_path(checkpoint, carracing_dir, tmp_path):
    out = tmp_path / "report"
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        run_eval(tmp_path / "none.pt", carracing_dir, out, context=CONTEXT, horizon=HORIZON)
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        run_eval(checkpoint, tmp_path / "no_data", out, context=CONTEXT, horizon=HORIZON)
    _assert_no_report(out)


def test_data_not_matching_the_model_fails_naming_the_file(checkpoint, carracing_dir, tmp_path):
    small, discrete = tmp_path / "small_frames", tmp_path / "discrete"
    for path in episode_paths(carracing_dir):
        obs, action = load_episode(path, "continuous", 3, 64)
        save_episode(small / path.name, np.ascontiguousarray(obs[:, :32, :32]), action)
        save_episode(discrete / path.name, obs, np.zeros(len(obs), dtype=np.int64))
    out = tmp_path / "report"
    with pytest.raises(ValueError, match=r"obs must be uint8 \[T, 64, 64, 3\], got uint8 \[24, 32, 32, 3\]"):
        run_eval(checkpoint, small, out, context=CONTEXT, horizon=HORIZON)
    with pytest.raises(ValueError, match="action_mode is 'continuous' but the file holds discrete"):
        run_eval(checkpoint, discrete, out, context=CONTEXT, horizon=HORIZON)
    _assert_no_report(out)


def test_a_failure_while_writing_leaves_no_partial_report(checkpoint, carracing_dir, tmp_path, monkeypatch):
    import wm_train.eval_plots

    def broken(*_):
        raise OSError("disk full")

    monkeypatch.setattr(wm_train.eval_plots, "save_strips", broken)
    out = tmp_path / "report"
    with pytest.raises(OSError, match="disk full"):
        run_eval(checkpoint, carracing_dir, out, context=CONTEXT, horizon=HORIZON, progress=False)
    _assert_no_report(out)


def test_an_existing_report_is_replaced_only_with_overwrite_and_nothing_else_ever(checkpoint, carracing_dir, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    settings = dict(context=CONTEXT, horizon=HORIZON, progress=False)
    for overwrite in (False, True):  # not a report: kept, with or without --overwrite
        with pytest.raises(FileExistsError, match="not a report folder"):
            run_eval(checkpoint, carracing_dir, out, overwrite=overwrite, **settings)
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()
    run_eval(checkpoint, carracing_dir, out, **settings)  # an empty folder is written into
    first = sorted(p.name for p in out.iterdir())
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        run_eval(checkpoint, carracing_dir, out, **settings)
    (out / "notes.txt").write_text("mine")  # a user's file in an earlier report: kept, the report refused
    with pytest.raises(FileExistsError, match=r"does not list \(notes.txt\)"):
        run_eval(checkpoint, carracing_dir, out, overwrite=True, **settings)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    run_eval(checkpoint, carracing_dir, out, overwrite=True, **settings)
    assert sorted(p.name for p in out.iterdir()) == first and "report.json" in first


def _wm_eval(*args):
    return subprocess.run([str(BIN / "wm-eval"), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_wm_eval_cli_end_to_end(checkpoint, carracing_dir, tmp_path):
    out = tmp_path / "report"
    result = _wm_eval(
        checkpoint, "--data", carracing_dir, "--context", CONTEXT, "--horizon", HORIZON, "-o", out, "--no-progress"
    )
    assert result.returncode == 0, result.stderr
    assert "open-loop pixel MSE: step 1 " in result.stdout and "error ratio true/shuffled" in result.stdout
    assert (out / "report.json").is_file() and (out / "error_vs_horizon.png").is_file()
    failed = _wm_eval(checkpoint, "--data", carracing_dir, "--horizon", 0, "-o", tmp_path / "bad")
    assert failed.returncode == 1
    assert failed.stderr.strip() == "Error: context and horizon must be >= 1, got context=5 horizon=0"
    assert not (tmp_path / "bad").exists()
