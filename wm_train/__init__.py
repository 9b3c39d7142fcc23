"""Train a gradient-isolated world model: a VAE for frames and an RSSM for latent dynamics.

The model, config, action codec and checkpoint format live in `wm_core`; they are re-exported here so that
`wm_train.WorldModel`, `wm_train.load_config`, ... keep working."""

from wm_core import (
    ActionCodec,
    Config,
    LossSettings,
    WorldModel,
    WorldModelOutput,
    load_checkpoint,
    load_config,
    save_checkpoint,
)

__all__ = [
    "ActionCodec",
    "Config",
    "LossSettings",
    "WorldModel",
    "WorldModelOutput",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
]
