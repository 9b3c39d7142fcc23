"""The core every package shares: the contract files (config, model, action codec, checkpoint format, graph
specs, artifact manifest) and the shared helpers (atomic file publishing). A change to a contract file is a
format-version bump and a CHANGELOG line; see docs/architecture.md."""

from .actions import ActionCodec
from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .config import Config, load_config
from .losses import LossSettings, WorldModelOutput
from .model import WorldModel

__all__ = [
    "ActionCodec",
    "Config",
    "LossSettings",
    "WorldModel",
    "WorldModelOutput",
    "load_checkpoint",
    "load_config",
    "read_checkpoint",
    "save_checkpoint",
]
