"""Train a gradient-isolated world model: a VAE for frames and an RSSM for latent dynamics."""

from .actions import ActionCodec
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, load_config
from .losses import WorldModelOutput
from .model import WorldModel

__all__ = ["ActionCodec", "Config", "WorldModel", "WorldModelOutput", "load_checkpoint", "load_config",
           "save_checkpoint"]
