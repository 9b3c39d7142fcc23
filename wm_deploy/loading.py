"""Open what `Rollout.load` is given (an artifact folder or a checkpoint), check it, and build a backend.

An artifact folder is read through `wm_core.manifest` (the artifact contract): every file a backend uses is
read once, its name confined to the folder and its bytes checked against the sha256 in the manifest, and the
backend loads those bytes (docs/safety.md). A checkpoint runs on the torch backend
only. `REGISTRY` is the one table of backends: name -> why it cannot run here (or None), and its builder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from wm_core.actions import ActionCodec, read_action_repeat
from wm_core.checkpoint import load_checkpoint, read_checkpoint
from wm_core.config import ExportConfig
from wm_core.manifest import has_heads, has_value, load_manifest, manifest_action_repeat, read_verified, sha256_file
from wm_core.onnxruntime_session import ProviderUnavailableError
from wm_core.tensorrt_engine import TensorRTUnavailableError

from .backends.base import Backend, Dims

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


@dataclass(frozen=True)
class Options:
    """What `Rollout.load` passes on to a backend's builder."""

    max_batch: int | None = None
    frame_threads: int | None = None
    cuda_graphs: bool = True
    precision: str | None = None
    """None: the backend's default (fp32; a TensorRT folder's engines as built)"""
    thread_spinning: bool = True
    fused: bool = False
    """torch on CUDA, fp32: the imagine loop as one Triton kernel where the model allows it (opt-in: slower than the
    captured torch loop on an H200, docs/gpu.md)"""


def open_source(path: str | Path) -> Source:
    path = Path(path)
    if path.is_dir():
        return Source(path, load_manifest(path))
    if path.is_file():
        return Source(path, None)
    raise FileNotFoundError(f"no artifact folder or checkpoint at {path}")


def source_action_repeat(source: Source) -> int:
    """The environment steps each action of `source`'s model is held for: its manifest's or checkpoint's
    `action_repeat` (1 for files from before format version 3)."""
    if source.manifest is not None:
        return manifest_action_repeat(source.manifest, source.path)
    return read_action_repeat(read_checkpoint(source.path, mmap=True), str(source.path))  # weights left on disk


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
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {device} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def manifest_dims(manifest: dict) -> Dims:
    dims = manifest["dims"]
    height, width, channels = (int(d) for d in dims["frame"])
    return Dims(int(dims["deter"]), int(dims["latent"]), int(dims["action"]), (height, width, channels))


# --- torch ------------------------------------------------------------------------------------------------


def _torch_unavailable(source: Source, device: torch.device, options: Options) -> str | None:
    from .backends.torch_backend import PRECISIONS

    if options.precision not in (None, *PRECISIONS):
        return f"precision must be one of {list(PRECISIONS)}, got {options.precision!r}"
    if source.manifest is not None and not Path(source.manifest["checkpoint"]["path"]).is_file():
        return (
            f"the torch backend needs the checkpoint this folder was exported from, "
            f"{source.manifest['checkpoint']['path']}, which is not there"
        )
    return None


def _build_torch(source: Source, device: torch.device, options: Options) -> tuple[Backend, ActionCodec]:
    from .backends.torch_backend import TorchBackend

    manifest = source.manifest
    checkpoint = Path(manifest["checkpoint"]["path"]) if manifest is not None else source.path
    if manifest is not None:
        expected, actual = manifest["checkpoint"]["sha256"], sha256_file(checkpoint)
        if actual != expected:
            raise ValueError(
                f"{checkpoint}: sha256 {actual} does not match the manifest's {expected}; the checkpoint "
                "changed after export, so the torch reference would not match the graphs"
            )
    model, cfg, extras = load_checkpoint(checkpoint, map_location=device)
    max_batch = options.max_batch or _folder_max_batch(manifest) or cfg.export.max_batch
    backend = TorchBackend(
        model, device, max_batch, options.cuda_graphs, options.precision or "fp32", fused=options.fused
    )
    if manifest is not None and backend.dims != manifest_dims(manifest):
        raise ValueError(
            f"{checkpoint}: model dims {backend.dims} differ from the manifest's {manifest_dims(manifest)}"
        )
    codec = ActionCodec.from_dict(manifest["action_codec"]) if manifest is not None else extras["action_codec"]
    return backend, codec


# --- onnxruntime ------------------------------------------------------------------------------------------


def _ort_unavailable(source: Source, device: torch.device, options: Options) -> str | None:
    from wm_core.onnxruntime_session import cuda_provider_listed, require_onnxruntime

    try:
        require_onnxruntime()
    except ImportError as error:
        return str(error)
    allowed = ("fp32", "tf32") if device.type == "cuda" else ("fp32",)
    if options.precision not in (None, *allowed):
        return f"the ONNX graphs are float32: onnxruntime on {device.type} runs precision {' or '.join(allowed)}"
    if device.type == "cuda" and not cuda_provider_listed():
        return "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
    return None


def _build_ort(source: Source, device: torch.device, options: Options) -> tuple[Backend, ActionCodec]:
    from .backends.ort_backend import OrtBackend

    manifest = _manifest(source)
    files = {g: read_verified(source.path, manifest, manifest["graphs"][g]["file"]) for g in _graphs(manifest)}
    max_batch = options.max_batch or _folder_max_batch(manifest) or ExportConfig.max_batch
    backend = OrtBackend(
        files,
        manifest_dims(manifest),
        device,
        max_batch,
        options.frame_threads,
        options.precision or "fp32",
        heads=has_heads(manifest),
        thread_spinning=options.thread_spinning,
        value=has_value(manifest),
    )
    return backend, ActionCodec.from_dict(manifest["action_codec"])


# --- TensorRT ---------------------------------------------------------------------------------------------


def _trt_unavailable(source: Source, device: torch.device, options: Options) -> str | None:
    if device.type != "cuda":
        return "TensorRT engines run on CUDA devices only"
    section = _manifest(source).get("tensorrt")
    if not section:
        return f"{source.path} holds no TensorRT engines (export with wm-export --trt)"
    if options.precision is not None and options.precision != section["precision"]:
        return f"{source.path} holds {section['precision']} engines, precision {options.precision!r} was asked for"
    from wm_core.tensorrt_engine import require_tensorrt

    from .backends.trt_backend import check_engine_compatible

    try:
        trt = require_tensorrt()
        check_engine_compatible(section, device, trt.__version__)
    except (TensorRTUnavailableError, ValueError) as error:
        return str(error)
    return None


def _build_trt(source: Source, device: torch.device, options: Options) -> tuple[Backend, ActionCodec]:
    from .backends.trt_backend import TrtBackend

    manifest = _manifest(source)
    section = manifest["tensorrt"]
    profile_max = section["profile"]["max"]
    max_batch = options.max_batch or profile_max
    if max_batch > profile_max:
        raise ValueError(f"max_batch {max_batch} exceeds the TensorRT engines' profile maximum {profile_max}")
    plans = {g: read_verified(source.path, manifest, e["file"]) for g, e in section["engines"].items()}
    backend = TrtBackend(
        plans,
        section,
        manifest_dims(manifest),
        device,
        max_batch,
        options.cuda_graphs,
        heads=has_heads(manifest),
        value=has_value(manifest),
    )
    return backend, ActionCodec.from_dict(manifest["action_codec"])


# --- the registry -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendEntry:
    unavailable: Callable[[Source, torch.device, Options], str | None]
    """why the backend cannot run this source on this device with these options, or None (files are checked
    when it is built)"""
    build: Callable[[Source, torch.device, Options], tuple[Backend, ActionCodec]]
    folder_only: bool
    """runs artifact folders only (a checkpoint runs on torch)"""


REGISTRY: dict[str, BackendEntry] = {
    "torch": BackendEntry(_torch_unavailable, _build_torch, folder_only=False),
    "onnxruntime": BackendEntry(_ort_unavailable, _build_ort, folder_only=True),
    "tensorrt": BackendEntry(_trt_unavailable, _build_trt, folder_only=True),
}
BACKENDS = tuple(REGISTRY)

# Fastest first, by device. On CPU onnxruntime beats eager PyTorch at small batches (docs/benchmarks.md). On
# CUDA: TensorRT engines with a captured loop, then PyTorch with a captured loop, then onnxruntime, which
# launches each step separately.
PREFERENCE = {"cpu": ("onnxruntime", "torch"), "cuda": ("tensorrt", "torch", "onnxruntime")}

VARIANTS: dict[str, tuple[str, dict]] = {
    "torch": ("torch", {"cuda_graphs": False}),
    "torch-cudagraphs": ("torch", {}),
    "torch-cudagraphs-fused": ("torch", {"fused": True}),
    "torch-tf32": ("torch", {"precision": "tf32"}),
    "torch-bf16": ("torch", {"precision": "bf16"}),
    "torch-fp16": ("torch", {"precision": "fp16"}),
    "onnxruntime": ("onnxruntime", {}),
    "tensorrt-fp32": ("tensorrt", {"precision": "fp32"}),
    "tensorrt-fp16": ("tensorrt", {"precision": "fp16"}),
}
"""named configurations of the backends that benchmarks compare: name -> (backend, Rollout.load options)"""


def unavailable(name: str, source: Source, device: torch.device, options: Options = Options()) -> str | None:
    """Why backend `name` cannot run `source` on `device`, or None when it can (files are checked on build)."""
    entry = REGISTRY.get(name)
    if entry is None:
        return f"unknown backend {name!r}; expected 'auto' or one of {list(BACKENDS)}"
    if entry.folder_only and not source.is_folder:
        return f"backend {name!r} runs an artifact folder; {source.path} is a checkpoint (export it with wm-export)"
    return entry.unavailable(source, device, options)


def build_backend(name: str, source: Source, device: torch.device, options: Options) -> tuple[Backend, ActionCodec]:
    reason = unavailable(name, source, device, options)
    if reason is not None:
        if name == "torch" and source.is_folder:
            raise FileNotFoundError(reason)
        raise ValueError(f"backend {name!r} cannot run {source.path} on {device}: {reason}")
    return REGISTRY[name].build(source, device, options)


def build_auto(source: Source, device: torch.device, options: Options) -> tuple[Backend, ActionCodec, str]:
    """The fastest backend that builds here -> (backend, codec, why it was chosen). A backend that looks
    available but fails to start (onnxruntime's CUDA provider falling back to the CPU, a TensorRT the driver
    cannot run) is skipped with its reason. TensorRT fp16 engines are taken only when fp16 is asked for."""
    fp16_engines = ((source.manifest or {}).get("tensorrt") or {}).get("precision") == "fp16"
    skipped = []
    for name in PREFERENCE[device.type]:
        if name == "tensorrt" and fp16_engines and options.precision != "fp16":
            skipped.append("tensorrt: the engines are fp16; pass precision='fp16' to use them")
            continue
        reason = unavailable(name, source, device, options)
        if reason is None:
            try:
                backend, codec = REGISTRY[name].build(source, device, options)
            except (ProviderUnavailableError, TensorRTUnavailableError) as error:
                reason = str(error)
            else:
                why = f"fastest available on {device.type}"
                return backend, codec, why + (f" (skipped: {'; '.join(skipped)})" if skipped else "")
        skipped.append(f"{name}: {reason}")
    raise ValueError(f"no backend can run {source.path} on {device}: {'; '.join(skipped)}")


def _manifest(source: Source) -> dict:
    """The manifest of a folder: the folder-only backends are checked and built for folders only (`unavailable`
    refuses a checkpoint first)."""
    assert source.manifest is not None, f"{source.path} is a checkpoint, not an artifact folder"
    return source.manifest


def _graphs(manifest: dict) -> list[str]:
    return [g for g in ("encoder", "prior_step", "decoder", "policy") if g in manifest["graphs"]]


def _folder_max_batch(manifest: dict | None) -> int | None:
    """A folder's largest batch: its TensorRT profile's maximum, if it has engines."""
    section = (manifest or {}).get("tensorrt")
    return section["profile"]["max"] if section else None
