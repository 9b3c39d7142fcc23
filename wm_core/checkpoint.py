"""Checkpoints: plain data (loadable with `torch.load(weights_only=True)`), written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .actions import ActionCodec, check_action_repeat, read_action_repeat
from .config import Config, saved_config
from .model import WorldModel
from .publish import atomic_write

FORMAT = "wm-checkpoint"
FORMAT_VERSION = 3
"""3: `action_repeat`, the environment steps each action of the training data was held for; an optional critic,
its target and an actor (config model.actor_critic, weights `critic.*`, `critic_target.*`, `actor.*`) and their
optimisers (`actor_critic_optimizers`). 2: optional reward and continuation heads (config model.heads, weights
`heads.*`) and action bounds in the codec. Versions 1 (no heads) and 2 still load, with action_repeat 1 and no
critic or actor."""
READABLE_VERSIONS = (1, 2, 3)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("wm")
    except PackageNotFoundError:
        package = "unknown"
    return {"wm": package, "torch": str(torch.__version__), "numpy": str(np.__version__)}


def atomic_torch_save(payload: dict, path: str | Path) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves a truncated checkpoint."""
    atomic_write(path, lambda file: torch.save(payload, file))


def save_checkpoint(
    path: str | Path, model: WorldModel, cfg: Config, codec: ActionCodec, action_repeat: int = 1, **extras
) -> None:
    """`action_repeat`: the training data's (wm_core.dataset_meta.dataset_action_repeat). `extras` must be plain
    data or tensors (optimizer state, epoch, RNG states, metrics)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "action_codec": codec.to_dict(),
        "action_repeat": check_action_repeat(action_repeat),
        "model": model.state_dict(),
        "versions": versions(),
        **extras,
    }
    atomic_torch_save(payload, path)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """The raw checkpoint dict, after checking that it is a checkpoint of this format version. `mmap`: map the
    tensors from the file instead of reading them (to read the plain data of a large checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"{path} is not a readable wm checkpoint: {type(error).__name__}: {first_line}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a wm checkpoint (no format={FORMAT!r} entry)")
    if payload.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{path}: checkpoint format version {payload.get('format_version')!r}, expected one of "
            f"{list(READABLE_VERSIONS)}"
        )
    return payload


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """-> (model in eval mode, Config, extras) where extras holds `action_codec` (ActionCodec), `action_repeat`
    (int; 1 for versions before 3) and every other entry of the checkpoint except the weights and the config."""
    payload = read_checkpoint(path, map_location)
    cfg = saved_config(payload["config"], source=str(path))
    model = WorldModel(cfg.model)
    model.load_state_dict(payload["model"])
    model.to(map_location).eval()
    extras = {k: v for k, v in payload.items() if k not in ("model", "config")}
    extras["action_codec"] = ActionCodec.from_dict(payload["action_codec"])
    extras["action_repeat"] = read_action_repeat(payload, str(path))
    return model, cfg, extras
