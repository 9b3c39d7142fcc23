"""Configuration: one dataclass per concern, composed into `Config`, loaded from YAML.

`load_config` rejects unknown keys by name and section and checks every value's type, so a typo in a YAML
file is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .losses import LOSS_KEYS, PLAIN_LOSS, LossSettings

ACTION_MODES = ("continuous", "discrete")

# Model sizes. `tiny` keeps tests fast; `default` is what the shipped configs train.
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(channels=4, latent_dim=8, deter_dim=32, hidden_dim=32),
    "small": dict(channels=8, latent_dim=16, deter_dim=128, hidden_dim=128),
    "default": dict(channels=16, latent_dim=32, deter_dim=256, hidden_dim=256),
}

# Parameters of the original design's world model, which its configs set in `train` or in `model`. They are
# accepted in both so those configs still load; they warn and change nothing (WorldModel takes them the same way).
LEGACY_KEYS = ("rssm_gate_threshold", "grad_detach_schedule_k")
DEPRECATED_KEYS = {"train": LEGACY_KEYS, "model": LEGACY_KEYS}


@dataclass
class DataConfig:
    path: str = "data"
    """folder of episode files `*.npz` or an episode store (docs/data.md); default `data` (the shipped configs
    set their own)"""
    action_mode: str = "continuous"
    """`continuous` (float actions, normalised) or `discrete` (integer actions, one-hot encoded)"""
    seq_len: int = 16
    """frames per training window; the RSSM loss needs at least 2"""
    val_fraction: float = 0.1
    """fraction of episodes held out for validation (split by episode, deterministic)"""
    reward_sampling: float = 0.0
    """with model.heads: share of each training batch drawn among the windows whose reward targets are not all
    zero, the rest uniformly, so that rare rewards (Pong's points) are learnt; 0: every window alike. Useless where
    every step is rewarded (CarRacing's -0.1 per frame)"""


@dataclass
class ModelConfig:
    size: str = "default"
    """preset from MODEL_PRESETS; explicit keys below override it"""
    frame_size: int = 64
    """frames are square, frame_size x frame_size RGB pixels; must be a multiple of 16"""
    action_dim: int = 3
    """continuous: width of the action vector; discrete: number of actions"""
    channels: int = 16
    """channels of the first conv layer; they double at each of the 4 layers"""
    latent_dim: int = 32
    """S: size of the Gaussian latent z"""
    deter_dim: int = 256
    """D: size of the GRU state h"""
    hidden_dim: int = 256
    """width of the RSSM's input and prior MLPs"""
    min_std: float = 0.1
    """lower bound of the prior's standard deviation"""
    heads: bool = False
    """add a reward head and a continuation head on the RSSM features [h, z] (trained on detached features, so
    they change nothing else); needs episodes with `reward` and `terminated` arrays"""
    actor_critic: bool = False
    """with heads: add a value head (critic, with a slow target copy) and a policy prior (actor) on the detached
    features [h, z], trained in imagination on a frozen copy of the dynamics and the heads (wm_train.actor_critic;
    docs/control.md, "Value and policy prior"); default off"""


@dataclass
class TrainConfig:
    out_dir: str = "runs/run"
    """run folder: checkpoints, metrics.jsonl, PNGs; default `runs/run` (the shipped configs set their own)"""
    epochs: int = 10
    """passes over the training frames"""
    batch_size: int = 16
    """windows per optimiser step, over all processes of a torchrun run"""
    lr: float = 6e-4
    """AdamW learning rate"""
    weight_decay: float = 1e-4
    """AdamW weight decay"""
    grad_clip: float = 100.0
    """maximum gradient norm: of all parameters together, or of each part on its own (grad_clip_per_part)"""
    grad_clip_per_part: bool = False
    """clip the gradient norms of the VAE (encoder + decoder), the RSSM and the heads each on its own, so that one
    part's loss cannot set another part's step size: with one global norm the decoder's gradient, the largest,
    decides how far the RSSM and the heads move. Default off: it has not been shown to plan as well as the global
    clip (docs/isolation_study.md)"""
    # The loss options, flat so that YAML files and saved checkpoints keep `train.beta`, ...: each is documented
    # in wm_core.losses.LossSettings, which takes its default from there too; TrainConfig.loss gathers them.
    beta: float = LossSettings.beta
    """weight of the VAE's KL (LossSettings.beta)"""
    kl_warmup_steps: int = LossSettings.kl_warmup_steps
    """optimiser steps of the KL's warm-up (LossSettings.kl_warmup_steps)"""
    free_nats: float = LossSettings.free_nats
    """KL floor per latent dimension, in nats (LossSettings.free_nats)"""
    recon_change_weight: float = LossSettings.recon_change_weight
    """extra weight of the pixels that change (LossSettings.recon_change_weight)"""
    rssm_scale: float = LossSettings.rssm_scale
    """weight of the RSSM loss (LossSettings.rssm_scale)"""
    overshooting: int = LossSettings.overshooting
    """K, the RSSM's latent overshooting distance in steps (LossSettings.overshooting)"""
    reward_window: int = LossSettings.reward_window
    """steps averaged into the reward head's target (LossSettings.reward_window)"""
    head_overshooting: int = LossSettings.head_overshooting
    """open-loop distance in steps the heads learn at (LossSettings.head_overshooting)"""
    discount: float = LossSettings.discount
    """with model.actor_critic: discount per decision of the value and the actor's returns (LossSettings.discount)"""
    value_lambda: float = LossSettings.value_lambda
    """with model.actor_critic: lambda of the value's TD(lambda) targets (LossSettings.value_lambda)"""
    value_target_decay: float = LossSettings.value_target_decay
    """with model.actor_critic: decay per step of the target critic's average (LossSettings.value_target_decay)"""
    value_repval: float = LossSettings.value_repval
    """with model.actor_critic: weight of the value's loss on the real windows (LossSettings.value_repval)"""
    imagine_horizon: int = LossSettings.imagine_horizon
    """with model.actor_critic: steps the actor imagines from each state (LossSettings.imagine_horizon)"""
    actor_entropy: float = LossSettings.actor_entropy
    """with model.actor_critic: weight of the actor's entropy bonus (LossSettings.actor_entropy)"""
    actor_bc: float = LossSettings.actor_bc
    """with model.actor_critic: weight of the actor's behaviour cloning (LossSettings.actor_bc)"""
    value_lr: float = 3e-4
    """with model.actor_critic: Adam learning rate of the critic"""
    actor_lr: float = 3e-4
    """with model.actor_critic: Adam learning rate of the actor"""
    init_from: str = ""
    """checkpoint to start from instead of fresh weights (fine-tuning on more data, as wm-loop's rounds do): its
    weights (heads, critic and actor included) and its action codec, kept as it is rather than refitted to the new
    data; its model config and action repeat must be this run's. The optimisers start afresh and the KL warm-up is
    skipped. Empty: train from scratch"""
    seed: int = 0
    """random seed of the model's initial weights, the window sampling and the reparameterisation noise"""
    device: str = "cpu"
    """`cpu`, `cuda` or `auto` (cuda when torch sees a GPU)"""
    threads: int = 0
    """torch intra-op threads on CPU; 0 keeps torch's default"""

    @property
    def loss(self) -> LossSettings:
        """The loss options of this config, whole."""
        return LossSettings(**{key: getattr(self, key) for key in LOSS_KEYS})


@dataclass
class ExportConfig:
    opset: int = 17
    """ONNX opset"""
    opt_batch: int = 256
    """TensorRT profile: batch size the engines are tuned for"""
    max_batch: int = 4096
    """TensorRT profile: largest batch the engines accept"""
    fp16: bool = False
    """build TensorRT engines in FP16"""
    decoder: bool = True
    """also export the decoder"""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> Config:
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
        sections = _section_classes()
        unknown = sorted(set(raw) - set(sections) - set(LOOP_SECTIONS))
        if unknown:
            raise ValueError(f"{source}: unknown section(s) {unknown}; expected {sorted(sections)}")
        built = {}
        for name, section_cls in sections.items():
            values = dict(raw.get(name) or {})
            if name == "model":
                values = _apply_preset(values, source)
            built[name] = build_section(section_cls, name, values, source)
        cfg = cls(**built)
        _check_values(cfg, source)
        return cfg


def _section_classes() -> dict[str, type]:
    return {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "export": ExportConfig}


LOOP_SECTIONS = ("loop", "planner")
"""config sections that wm-loop reads (wm_loop.config) and every other command ignores"""


def _apply_preset(values: dict, source: str) -> dict:
    size = values.get("size", ModelConfig.size)
    if size not in MODEL_PRESETS:
        raise ValueError(f"{source}: model.size must be one of {sorted(MODEL_PRESETS)}, got {size!r}")
    return {**MODEL_PRESETS[size], **values}


def build_section(section_cls: type, section: str, values: dict, source: str):
    """An instance of the dataclass `section_cls` from the mapping `values` of the YAML section `section`: a
    ValueError naming `source`, the section and the key for an unknown key or a value of the wrong type."""
    if not isinstance(values, dict):
        raise ValueError(f"{source}: section '{section}' must be a mapping, got {type(values).__name__}")
    for key in DEPRECATED_KEYS.get(section, ()):
        if key in values:
            values.pop(key)
            warnings.warn(f"{source}: '{section}.{key}' is deprecated and ignored", DeprecationWarning, 2)
    hints = typing.get_type_hints(section_cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown} in section '{section}'; expected {sorted(hints)}")
    for key, value in values.items():
        values[key] = _coerce(value, hints[key], f"{section}.{key}", source)
    return section_cls(**values)


def _coerce(value, expected: type, name: str, source: str):
    # bool is a subclass of int: refuse `epochs: true`; accept an int where a float is expected.
    if typing.get_origin(expected) is typing.Literal:
        if value not in typing.get_args(expected):
            raise ValueError(f"{source}: {name} must be one of {list(typing.get_args(expected))}, got {value!r}")
        return value
    ok = (
        (expected is bool and isinstance(value, bool))
        or (expected is int and isinstance(value, int) and not isinstance(value, bool))
        or (expected is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (expected is str and isinstance(value, str))
    )
    if not ok:
        raise ValueError(f"{source}: {name} must be {expected.__name__}, got {type(value).__name__} {value!r}")
    return float(value) if expected is float else value


def _check_values(cfg: Config, source: str) -> None:
    checks = [
        (cfg.data.action_mode in ACTION_MODES, f"data.action_mode must be one of {ACTION_MODES}"),
        (cfg.data.seq_len >= 2, "data.seq_len must be >= 2: the RSSM loss compares step t+1 with step t"),
        (0.0 < cfg.data.val_fraction < 1.0, "data.val_fraction must be in (0, 1)"),
        (0.0 <= cfg.data.reward_sampling <= 1.0, "data.reward_sampling must be in [0, 1]"),
        (cfg.model.frame_size >= 16 and cfg.model.frame_size % 16 == 0, "model.frame_size must be a multiple of 16"),
        (cfg.model.action_dim >= 1, "model.action_dim must be >= 1"),
        (cfg.model.min_std > 0, "model.min_std must be > 0"),
        (cfg.train.epochs >= 1 and cfg.train.batch_size >= 1, "train.epochs and train.batch_size must be >= 1"),
        (cfg.train.device in ("cpu", "cuda", "auto"), "train.device must be cpu, cuda or auto"),
        (
            1 <= cfg.train.overshooting < cfg.data.seq_len,
            f"train.overshooting must be in [1, data.seq_len - 1 = {cfg.data.seq_len - 1}], "
            f"got {cfg.train.overshooting}",
        ),
        (
            1 <= cfg.train.head_overshooting < cfg.data.seq_len,
            f"train.head_overshooting must be in [1, data.seq_len - 1 = {cfg.data.seq_len - 1}], "
            f"got {cfg.train.head_overshooting}",
        ),
        (cfg.train.reward_window >= 1, f"train.reward_window must be >= 1, got {cfg.train.reward_window}"),
        (not cfg.model.actor_critic or cfg.model.heads, "model.actor_critic needs model.heads (rewards to learn from)"),
        (not cfg.data.reward_sampling or cfg.model.heads, "data.reward_sampling needs model.heads (reward targets)"),
        (0 < cfg.train.discount <= 1, f"train.discount must be in (0, 1], got {cfg.train.discount}"),
        (0 <= cfg.train.value_lambda <= 1, f"train.value_lambda must be in [0, 1], got {cfg.train.value_lambda}"),
        (
            0 <= cfg.train.value_target_decay < 1,
            f"train.value_target_decay must be in [0, 1), got {cfg.train.value_target_decay}",
        ),
        (cfg.train.imagine_horizon >= 1, f"train.imagine_horizon must be >= 1, got {cfg.train.imagine_horizon}"),
        (
            min(cfg.train.value_repval, cfg.train.actor_entropy, cfg.train.actor_bc) >= 0,
            "train.value_repval, train.actor_entropy and train.actor_bc must be >= 0",
        ),
        (cfg.train.value_lr > 0 and cfg.train.actor_lr > 0, "train.value_lr and train.actor_lr must be > 0"),
        (cfg.train.kl_warmup_steps >= 0, f"train.kl_warmup_steps must be >= 0, got {cfg.train.kl_warmup_steps}"),
        (cfg.train.free_nats >= 0, f"train.free_nats must be >= 0, got {cfg.train.free_nats}"),
        (
            cfg.train.recon_change_weight >= 0,
            f"train.recon_change_weight must be >= 0, got {cfg.train.recon_change_weight}",
        ),
        (1 <= cfg.export.opt_batch <= cfg.export.max_batch, "export needs 1 <= opt_batch <= max_batch"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"{source}: {message}")
    if cfg.data.seq_len < 4:
        warnings.warn(
            f"{source}: data.seq_len={cfg.data.seq_len} gives the RSSM only {cfg.data.seq_len - 1} transition(s) "
            "per window; use 4 or more",
            UserWarning,
            2,
        )


def saved_config(raw: dict, source: str = "checkpoint") -> Config:
    """The Config a checkpoint holds. One saved before the anti-collapse keys existed trained with the plain loss:
    its missing loss keys read as PLAIN_LOSS, not as today's defaults."""
    plain = dataclasses.asdict(PLAIN_LOSS)
    return Config.from_dict({**raw, "train": {**plain, **raw.get("train", {})}}, source=source)


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config; `overrides` are `section.key=value` strings (values parsed as YAML)."""
    return Config.from_dict(read_config_file(path, overrides), source=str(path))


def read_config_file(path: str | Path, overrides: typing.Sequence[str] = ()) -> dict:
    """The sections of a YAML config as a mapping, `overrides` (`section.key=value`, values parsed as YAML)
    applied; unchecked (Config.from_dict checks)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"override must look like section.key=value, got {item!r}")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ValueError(f"{path}: section '{section}' must be a mapping")
        raw[section][name] = yaml.safe_load(value)
    return raw
