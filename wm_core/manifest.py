"""manifest.json of an artifact folder: build and write it (wm_export), read and verify it (wm_deploy).

The layout is the contract in docs/artifacts.md. Every file of the folder but the manifest itself is listed
with its sha256, so a reader can tell a complete export from a damaged or edited one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .actions import ActionCodec, check_action_repeat, read_action_repeat
from .config import ModelConfig
from .confined import confined_path, read_confined
from .graphs import GraphSpec
from .publish import atomic_write_bytes, restore_aside

FORMAT = "wm-artifacts"
FORMAT_VERSION = 3
"""3: `action_repeat`, the environment steps each planned action is held for (the training data's); the prior
step of a model with a critic (model.actor_critic) also outputs `value`, and a `policy` graph gives the actor's
action. 2: the prior step of a model with heads also outputs `reward` and `cont`; the action codec holds the
action bounds. Versions 1 (no heads) and 2 still load, with action_repeat 1 and no value or policy."""
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(
    folder: str | Path,
    *,
    model_cfg: ModelConfig,
    codec: ActionCodec,
    action_repeat: int,
    opset: int,
    specs: dict[str, GraphSpec],
    checkpoint: str | Path,
    parity: dict,
    parity_inputs: str,
    tensorrt: dict | None = None,
) -> dict:
    """The manifest of the ONNX files `<graph>.onnx` already in `folder` (hashed here). `parity` is
    {backend: report}; `parity_inputs` says where the gate's frames came from."""
    folder = Path(folder)
    H = model_cfg.frame_size
    graphs = {}
    for name, spec in specs.items():
        file = f"{name}.onnx"
        graphs[name] = {
            "file": file,
            "sha256": sha256_file(folder / file),
            "inputs": {t.name: t.to_dict() for t in spec.inputs},
            "outputs": {t.name: t.to_dict() for t in spec.outputs},
        }
    versions = {
        "torch": _distribution_version("torch"),
        "onnx": _distribution_version("onnx"),
        "onnxruntime": _distribution_version("onnxruntime"),
        "wm": _distribution_version("wm"),
    }
    if tensorrt is not None:
        versions["tensorrt"] = tensorrt["version"]
    checkpoint = Path(checkpoint)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dims": {"deter": model_cfg.deter_dim, "latent": model_cfg.latent_dim, "action": codec.dim, "frame": [H, H, 3]},
        "action_codec": codec.to_dict(),
        "action_repeat": check_action_repeat(action_repeat),
        "opset": opset,
        "graphs": graphs,
        "checkpoint": {"path": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint)},
        "versions": versions,
        "parity": parity,
        "parity_inputs": parity_inputs,
        "tensorrt": tensorrt,
    }


def _distribution_version(name: str) -> str:
    # onnxruntime ships as onnxruntime, onnxruntime-gpu, ...: ask the module, which all of them provide.
    if name == "onnxruntime":
        try:
            import onnxruntime
        except ImportError:
            return "not installed"
        return onnxruntime.__version__
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def write_manifest(folder: str | Path, manifest: dict) -> Path:
    """Write `folder/manifest.json` atomically (temporary file, then rename)."""
    text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    # mkstemp makes files private; a manifest is meant to be read
    return atomic_write_bytes(Path(folder) / MANIFEST, text.encode(), mode=0o644)


def load_manifest(folder: str | Path) -> dict:
    """Read `folder/manifest.json` after checking that it is an artifact manifest of this format version.

    Raises FileNotFoundError for a missing folder or manifest and ValueError for anything else."""
    folder = Path(folder)
    if not folder.exists():
        with contextlib.suppress(OSError):
            restore_aside(folder)  # a replacement of the folder cut short by a crash
    if not folder.is_dir():
        raise FileNotFoundError(f"artifact folder not found: {folder}")
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an artifact folder: no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable manifest ({type(error).__name__}: {error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} manifest (format={_get(manifest, 'format')!r})")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{path}: artifact format version {manifest.get('format_version')!r}, expected one of "
            f"{list(READABLE_VERSIONS)}"
        )
    try:
        entries = manifest_entries(manifest)
    except (KeyError, TypeError, AttributeError):
        damaged = f"{path}: damaged manifest: `graphs` and `tensorrt.engines` must map names to files"
        raise ValueError(damaged) from None
    for entry, name in entries.items():
        confined_path(folder, name, str(path), entry)
    manifest_action_repeat(manifest, folder)
    return manifest


def manifest_action_repeat(manifest: dict, folder: str | Path = "") -> int:
    """The environment steps each action is held for (1 for folders before version 3); ValueError naming the
    manifest for a bad value."""
    return read_action_repeat(manifest, str(Path(folder) / MANIFEST))


def has_heads(manifest: dict) -> bool:
    """Whether the folder's prior step outputs the reward and continuation (a model trained with heads)."""
    return "reward" in manifest["graphs"]["prior_step"]["outputs"]


def has_value(manifest: dict) -> bool:
    """Whether the folder's prior step outputs the critic's value (a model trained with model.actor_critic)."""
    return "value" in manifest["graphs"]["prior_step"]["outputs"]


def has_policy(manifest: dict) -> bool:
    """Whether the folder holds the actor's `policy` graph (a model trained with model.actor_critic)."""
    return "policy" in manifest["graphs"]


def _get(manifest, key):
    return manifest.get(key) if isinstance(manifest, dict) else None


def manifest_files(manifest: dict) -> dict[str, str]:
    """Every file the manifest lists (ONNX graphs, TensorRT engines) -> its sha256."""
    files = {entry["file"]: entry["sha256"] for entry in manifest["graphs"].values()}
    if manifest.get("tensorrt"):
        files.update({entry["file"]: entry["sha256"] for entry in manifest["tensorrt"]["engines"].values()})
    return files


def manifest_entries(manifest: dict) -> dict[str, object]:
    """Where each listed file is named in the manifest (`graphs.encoder.file`, ...) -> the name given there."""
    entries = {f"graphs.{graph}.file": entry.get("file") for graph, entry in manifest["graphs"].items()}
    if manifest.get("tensorrt"):
        entries.update(
            {f"tensorrt.engines.{g}.file": e.get("file") for g, e in manifest["tensorrt"]["engines"].items()}
        )
    return entries


@dataclass(frozen=True)
class VerifiedFile:
    """A file of an artifact folder, read once: `data` are the bytes whose sha256 matched the manifest, and the
    bytes a backend loads (never the file again, which may have changed since)."""

    path: Path
    data: bytes


def read_verified(folder: str | Path, manifest: dict, name: str) -> VerifiedFile:
    """Read file `name` (e.g. `encoder.onnx`, `encoder.plan`) of `folder` once and check the sha256 of the bytes
    read against the manifest. Raises ValueError if the manifest does not list it, names it outside the folder
    or the content changed, FileNotFoundError if it is missing."""
    files = manifest_files(manifest)
    if name not in files:
        raise ValueError(f"{name} is not listed in the manifest of {folder}; listed: {sorted(files)}")
    entry = next(e for e, n in manifest_entries(manifest).items() if n == name)
    path = confined_path(folder, name, str(Path(folder) / MANIFEST), entry)
    try:
        data = read_confined(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is listed in the manifest but missing") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != files[name]:
        raise ValueError(
            f"{path}: sha256 {actual} does not match the manifest's {files[name]}; the file changed after export"
        )
    return VerifiedFile(path, data)


def verify_file(folder: str | Path, manifest: dict, name: str) -> Path:
    """-> the path of file `name` after checking it (`read_verified`). A loader uses `read_verified` itself and
    loads its bytes: the file may change after this returns."""
    return read_verified(folder, manifest, name).path


def verify_folder(folder: str | Path) -> dict:
    """load_manifest + verify_file for every listed file -> the manifest."""
    manifest = load_manifest(folder)
    for name in manifest_files(manifest):
        verify_file(folder, manifest, name)
    return manifest
