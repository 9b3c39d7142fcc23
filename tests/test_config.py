import dataclasses
import warnings

import pytest
import torch

from wm_core import ActionCodec, WorldModel, load_checkpoint, save_checkpoint
from wm_core.config import MODEL_PRESETS
from wm_core.losses import LOSS_KEYS, PLAIN_LOSS, LossSettings
from wm_train import Config, load_config


def _write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_load():
    for name in ("carracing", "pong", "tiny"):
        cfg = load_config(f"configs/{name}.yaml")
        assert cfg.model.frame_size == 64
    assert load_config("configs/pong.yaml").data.action_mode == "discrete"


def test_loop_config_loads_for_wm_train_and_wm_loop():
    from wm_loop.config import load_loop_config

    assert load_config("configs/carracing_loop.yaml").model.actor_critic
    settings = load_loop_config("configs/carracing_loop.yaml")
    assert settings.loop.rounds == 3 and settings.planner.horizon == 10


def test_unknown_key_names_the_key_and_its_section(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr_typo'\] in section 'train'"):
        load_config(_write(tmp_path, "train:\n  lr_typo: 0.1\n"))


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown section"):
        load_config(_write(tmp_path, "optimiser:\n  lr: 0.1\n"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  epochs: ten\n", "train.epochs must be int, got str"),
        ("train:\n  epochs: true\n", "train.epochs must be int, got bool"),
        ("train:\n  lr: '1e-3'\n", "train.lr must be float, got str"),
        ("data:\n  action_mode: 3\n", "data.action_mode must be str"),
        ("data:\n  action_mode: mixed\n", "data.action_mode must be one of"),
        ("model:\n  size: huge\n", "model.size must be one of"),
        ("train:\n  free_nats: -1\n", "train.free_nats must be >= 0, got -1.0"),
        ("train:\n  kl_warmup_steps: -5\n", "train.kl_warmup_steps must be >= 0, got -5"),
        ("train:\n  recon_change_weight: -2\n", "train.recon_change_weight must be >= 0, got -2.0"),
        ("model:\n  frame_size: 50\n", "multiple of 16"),
    ],
)
def test_wrong_values_are_errors(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_config(_write(tmp_path, text))


def test_int_is_accepted_where_a_float_is_expected(tmp_path):
    assert load_config(_write(tmp_path, "train:\n  lr: 1\n")).train.lr == 1.0


def test_seq_len_below_2_is_an_error_and_below_4_warns(tmp_path):
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        load_config(_write(tmp_path, "data:\n  seq_len: 1\n"))
    with pytest.warns(UserWarning, match="seq_len=3"):
        load_config(_write(tmp_path, "data:\n  seq_len: 3\n"))


def test_deprecated_keys_warn_by_name_and_change_nothing(tmp_path):
    text = "train:\n  epochs: 3\n  rssm_gate_threshold: 0.5\n  grad_detach_schedule_k: 7\n"
    with pytest.warns(DeprecationWarning) as record:
        cfg = load_config(_write(tmp_path, text))
    messages = " ".join(str(w.message) for w in record)
    assert "rssm_gate_threshold" in messages and "grad_detach_schedule_k" in messages
    assert cfg == load_config(_write(tmp_path, "train:\n  epochs: 3\n"))


def test_legacy_keys_in_the_model_section_warn_by_name_and_change_nothing(tmp_path):
    text = "model:\n  size: tiny\n  rssm_gate_threshold: 0.5\n  grad_detach_schedule_k: 7\n"
    with pytest.warns(DeprecationWarning) as record:
        cfg = load_config(_write(tmp_path, text))
    messages = " ".join(str(w.message) for w in record)
    assert "'model.rssm_gate_threshold' is deprecated" in messages
    assert "'model.grad_detach_schedule_k' is deprecated" in messages
    assert cfg == load_config(_write(tmp_path, "model:\n  size: tiny\n"))


def test_preset_then_explicit_keys(tmp_path):
    cfg = load_config(_write(tmp_path, "model:\n  size: tiny\n  deter_dim: 48\n"))
    assert cfg.model.channels == MODEL_PRESETS["tiny"]["channels"] and cfg.model.deter_dim == 48


def test_overrides_parse_yaml_values_and_reject_malformed(tmp_path):
    path = _write(tmp_path, "train:\n  epochs: 3\n")
    cfg = load_config(path, ["train.epochs=5", "train.lr=0.01", "data.path=elsewhere"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.path) == (5, 0.01, "elsewhere")
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(path, ["epochs=5"])


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_config_round_trips_through_a_dict():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = Config.from_dict({"model": {"size": "tiny"}})
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_anti_collapse_options_default_on_and_the_plain_loss_turns_them_off():
    train = Config().train
    assert (train.free_nats, train.kl_warmup_steps, train.recon_change_weight) == (0.5, 0, 20.0)
    plain = Config.from_dict({"train": dataclasses.asdict(PLAIN_LOSS)}).train
    assert (plain.free_nats, plain.kl_warmup_steps, plain.recon_change_weight) == (0.0, 0, 0.0)


def test_the_train_section_gathers_every_loss_option_with_its_default():
    assert Config().train.loss == LossSettings()
    cfg = Config.from_dict({"data": {"seq_len": 8}, "train": {"beta": 0.3, "overshooting": 3, "reward_window": 5}})
    assert cfg.train.loss == LossSettings(beta=0.3, overshooting=3, reward_window=5)
    assert cfg.train.loss != Config().train.loss
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.loss.beta = 1.0  # type: ignore[misc]


def test_a_checkpoint_saved_without_the_anti_collapse_keys_loads_with_the_plain_loss(tmp_path):
    cfg = Config.from_dict({"model": {"size": "tiny"}})
    path = tmp_path / "old.pt"
    save_checkpoint(path, WorldModel(cfg.model), cfg, ActionCodec("continuous", 3, (0.0,) * 3, (1.0,) * 3))
    payload = torch.load(path, weights_only=False)
    for key in LOSS_KEYS:
        del payload["config"]["train"][key]  # what a checkpoint saved before these keys holds
    torch.save(payload, path)
    loaded = load_checkpoint(path)[1].train
    assert loaded.loss == PLAIN_LOSS
