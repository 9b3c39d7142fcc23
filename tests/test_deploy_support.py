"""Shared helpers of the wm_deploy tests: tiny checkpoints exported once per test session, the backends this
machine can run, and their tolerances. No tests live here; the name keeps it with the deploy test files.

Dimensions: B batch, H horizon, S latent, D deter, A action width.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from wm_core.actions import ActionCodec
from wm_core.checkpoint import save_checkpoint
from wm_core.config import Config
from wm_core.model import WorldModel
from wm_export import export_artifacts

CODECS = {
    "continuous": ActionCodec("continuous", 3, (0.1, 0.2, 0.3), (1.0, 2.0, 0.5)),
    "discrete": ActionCodec("discrete", 6),
}

# Largest accepted absolute difference from the torch reference on latents (h, z, means, stds) and frames.
TOLERANCES = {
    "onnxruntime": (1e-4, 1e-3),
    "tensorrt-fp32": (1e-3, 2e-3),
    "tensorrt-fp16": (1e-2, 2e-2),
    "torch-cuda": (1e-4, 1e-3),
}


@functools.cache
def _session_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="wm-deploy-tests-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@functools.cache
def tiny_checkpoint(mode: str) -> Path:
    """A freshly initialised tiny model (64x64 frames) with a `mode` action codec, saved once per session."""
    codec = CODECS[mode]
    torch.manual_seed(0)
    cfg = Config.from_dict(
        {"data": {"action_mode": mode}, "model": {"size": "tiny", "frame_size": 64, "action_dim": codec.dim}}
    )
    path = _session_dir() / f"tiny_{mode}.pt"
    save_checkpoint(path, WorldModel(cfg.model), cfg, codec)
    return path


@functools.cache
def tiny_artifacts(mode: str) -> Path:
    """The artifact folder of `tiny_checkpoint(mode)`, exported once per session (treat it as read-only:
    copy it with `artifact_copy` before changing anything)."""
    return export_artifacts(tiny_checkpoint(mode), _session_dir() / f"artifacts_{mode}")


def artifact_copy(mode: str, dest: Path) -> Path:
    return Path(shutil.copytree(tiny_artifacts(mode), dest))


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch's intra-op thread pool only slows these tiny batches down (a lot, on small CI machines)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cuda_device_or_skip() -> str:
    if not torch.cuda.is_available():
        pytest.skip(f"needs a CUDA device; torch {torch.__version__} sees none")
    return "cuda"


def backend_or_skip(name: str, path: Path, device: str):
    """The Rollout of backend `name`, or a skip that says what this machine lacks."""
    from wm_deploy import Rollout
    from wm_deploy.loading import open_source, resolve_device, unavailable

    if device == "cuda":
        cuda_device_or_skip()
    reason = unavailable(name, open_source(path), resolve_device(device))
    if reason is not None:
        pytest.skip(f"{name} on {device} unavailable: {reason}")
    return Rollout.load(path, backend=name, device=device)


def random_frames(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8)


def random_actions(mode: str, batch: int, horizon: int | None, seed: int = 0) -> np.ndarray:
    """Raw actions [B, H, A] (continuous) or int [B, H] (discrete); [B, ...] when horizon is None."""
    rng = np.random.default_rng(seed)
    lead = (batch,) if horizon is None else (batch, horizon)
    if mode == "discrete":
        return rng.integers(0, CODECS[mode].dim, lead)
    return rng.normal(0.2, 1.0, (*lead, CODECS[mode].dim)).astype(np.float32)


def max_abs(a, b) -> float:
    as_numpy = [x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in (a, b)]
    return float(np.abs(as_numpy[0].astype(np.float64) - as_numpy[1]).max())
