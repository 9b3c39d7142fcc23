"""Open what `Rollout.load` is given (an artifact folder or a checkpoint), check it, and build a backend.

An artifact folder is read through `wm_core.manifest` (the artifact contract), and every file a backend
uses is checked against its sha256 in the manifest before it is loaded. A checkpoint runs on the torch
backend only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from wm_core.actions import ActionCodec
from wm_core.checkpoint import load_checkpoint
from wm_core.config import ExportConfig

from .backends.base import Backend, Dims

BACKENDS = ("torch", "onnxruntime", "tensorrt")
logger = logging.getLogger("wm_deploy")


@dataclass(frozen=True)
class Source:
    """An artifact folder (with its manifest) or a checkpoint file."""

    path: Path
    manifest: dict | None
    """the folder's manifest; None for a checkpoint"""

    @property
    def is_folder(self) -> bool:
        return self.manifest is not None


def open_source(path: str | Path) -> Source:
    path = Path(path)
    if path.is_dir():
        from wm_core.manifest import load_manifest

        return Source(path, load_manifest(path))
    if path.is_file():
        return Source(path, None)
    raise FileNotFoundError(f"no artifact folder or checkpoint at {path}")


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {str(device)!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but torch {torch.__version__} sees no CUDA device")
    return device


def manifest_dims(manifest: dict) -> Dims:
    dims = manifest["dims"]
    return Dims(int(dims["deter"]), int(dims["latent"]), int(dims["action"]), tuple(int(d) for d in dims["frame"]))


def unavailable(name: str, source: Source, device: torch.device) -> str | None:
    """Why backend `name` cannot run `source` on `device`, or None when it can (files are checked on build)."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; expected 'auto' or one of {list(BACKENDS)}"
    if name == "torch":
        if source.is_folder and not Path(source.manifest["checkpoint"]["path"]).is_file():
            return (
                f"the torch backend needs the checkpoint this folder was exported from, "
                f"{source.manifest['checkpoint']['path']}, which is not there"
            )
        return None
    if not source.is_folder:
        return f"backend {name!r} runs an artifact folder; {source.path} is a checkpoint (export it with wm-export)"
    if name == "onnxruntime":
        from .backends.ort_backend import cuda_provider_available, require_onnxruntime

        try:
            require_onnxruntime()
        except ImportError as error:
            return str(error)
        if device.type == "cuda" and not cuda_provider_available():
            return "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
        return None
    if device.type != "cuda":
        return "TensorRT engines run on CUDA devices only"
    if not source.manifest.get("tensorrt"):
        return f"{source.path} holds no TensorRT engines (export with wm-export --trt)"
    from wm_export.tensorrt_build import TensorRTUnavailableError, require_tensorrt

    from .backends.trt_backend import check_engine_compatible

    try:
        trt = require_tensorrt()
        check_engine_compatible(source.manifest["tensorrt"], device, trt.__version__)
    except (TensorRTUnavailableError, ValueError) as error:
        return str(error)
    return None


# Fastest first, by device. On CPU onnxruntime beats eager PyTorch by well over 2x at small batches (README,
# "Deployment"). On CUDA the order is the expected one, not measured in this repository: TensorRT engines with
# a captured loop, then PyTorch with a captured loop, then onnxruntime, which launches each step separately.
PREFERENCE = {"cpu": ("onnxruntime", "torch"), "cuda": ("tensorrt", "torch", "onnxruntime")}


def choose_backend(source: Source, device: torch.device) -> tuple[str, str]:
    """-> (backend name, why it was chosen) for backend='auto'."""
    skipped = []
    for name in PREFERENCE[device.type]:
        reason = unavailable(name, source, device)
        if reason is None:
            why = f"fastest available on {device.type}"
            return name, why + (f" (skipped: {'; '.join(skipped)})" if skipped else "")
        skipped.append(f"{name}: {reason}")
    raise ValueError(f"no backend can run {source.path} on {device}: {'; '.join(skipped)}")


def build_backend(
    name: str,
    source: Source,
    device: torch.device,
    max_batch: int | None,
    frame_threads: int | None = None,
    cuda_graphs: bool = True,
) -> tuple[Backend, ActionCodec]:
    reason = unavailable(name, source, device)
    if reason is not None:
        if name == "torch" and source.is_folder:
            raise FileNotFoundError(reason)
        raise ValueError(f"backend {name!r} cannot run {source.path} on {device}: {reason}")
    if not source.is_folder:
        return _torch_backend(source.path, None, device, max_batch, cuda_graphs)

    from wm_core.manifest import verify_file

    manifest = source.manifest
    codec = ActionCodec.from_dict(manifest["action_codec"])
    dims = manifest_dims(manifest)
    graphs = [g for g in ("encoder", "prior_step", "decoder") if g in manifest["graphs"]]
    trt_section = manifest.get("tensorrt")
    profile_max = trt_section["profile"]["max"] if trt_section else None
    if max_batch is None:
        max_batch = profile_max or ExportConfig.max_batch
    if name == "torch":
        backend, _ = _torch_backend(Path(manifest["checkpoint"]["path"]), manifest, device, max_batch, cuda_graphs)
        return backend, codec
    if name == "onnxruntime":
        from .backends.ort_backend import OrtBackend

        files = {g: verify_file(source.path, manifest, manifest["graphs"][g]["file"]) for g in graphs}
        return OrtBackend(files, dims, device, max_batch, frame_threads), codec

    from .backends.trt_backend import TrtBackend

    if max_batch > profile_max:
        raise ValueError(f"max_batch {max_batch} exceeds the TensorRT engines' profile maximum {profile_max}")
    plans = {g: verify_file(source.path, manifest, e["file"]) for g, e in trt_section["engines"].items()}
    return TrtBackend(plans, trt_section, dims, device, max_batch, cuda_graphs), codec


def _torch_backend(
    checkpoint: Path, manifest: dict | None, device: torch.device, max_batch: int | None, cuda_graphs: bool
):
    from wm_core.manifest import sha256_file

    from .backends.torch_backend import TorchBackend

    if manifest is not None:
        expected, actual = manifest["checkpoint"]["sha256"], sha256_file(checkpoint)
        if actual != expected:
            raise ValueError(
                f"{checkpoint}: sha256 {actual} does not match the manifest's {expected}; the "
                "checkpoint changed after export, so the torch reference would not match the graphs"
            )
    model, cfg, extras = load_checkpoint(checkpoint, map_location=device)
    codec = extras["action_codec"]
    backend = TorchBackend(model, device, max_batch or cfg.export.max_batch, cuda_graphs)
    if manifest is not None and backend.dims != manifest_dims(manifest):
        raise ValueError(
            f"{checkpoint}: model dims {backend.dims} differ from the manifest's {manifest_dims(manifest)}"
        )
    return backend, codec
