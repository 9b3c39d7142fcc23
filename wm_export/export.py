"""Checkpoint -> artifact folder, atomically: ONNX graphs, parity gate, optional TensorRT engines, manifest.

Everything is written to a temporary folder beside the destination and renamed into place at the end; any
failure removes it, so a folder named like the destination is always complete. The one exception to "fail
means nothing" is a missing TensorRT or CUDA device: the ONNX artifacts are still published (with
`"tensorrt": null`), then TensorRTUnavailableError is raised.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from wm_core.checkpoint import load_checkpoint
from wm_core.graphs import BATCH, HalfPrecisionGraph, build_graphs, graph_specs
from wm_core.manifest import FORMAT, FORMAT_VERSION, MANIFEST, build_manifest, manifest_files, write_manifest
from wm_core.publish import check_replaceable, replace_dir, write_failure

from . import parity, tensorrt_build
from .onnx_export import check_opset, export_onnx
from .triton import check_repository_destination, write_triton_repository

DEFAULT_FOLDER = "artifacts"
"""default destination: this folder beside the checkpoint"""
TIMING_CACHE = "tensorrt_timing.cache"
"""TensorRT timing cache, kept beside the artifact folder so every export on this machine reuses it"""


@dataclass(frozen=True)
class ExportSettings:
    """The options of one export after filling the unset ones from the checkpoint's `export` section."""

    opset: int
    decoder: bool
    trt: bool
    fp16: bool
    opt_batch: int
    max_batch: int


def export_artifacts(
    checkpoint: str | Path,
    out_dir: str | Path | None = None,
    *,
    trt: bool = False,
    fp16: bool | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    opset: int | None = None,
    decoder: bool | None = None,
    overwrite: bool = False,
    data: str | Path | None = None,
    progress: bool = False,
    triton: str | Path | None = None,
    force: bool | None = None,
) -> Path:
    """Export `checkpoint` to an artifact folder (default `<checkpoint dir>/artifacts`) -> its path.

    Options left as None come from the checkpoint config's `export` section. `data` is a folder of episode
    files whose validation split's frames feed the parity gate (else random frames). `triton`: also write a
    Triton Inference Server model repository there (wm_export.triton), from the published artifact folder.
    `overwrite`: replace an earlier artifact folder (and Triton repository); a folder this export did not write
    is never replaced (`check_destination`). `force` is the old name of `overwrite`.

    Raises FileNotFoundError / ValueError / FileExistsError for bad input, ParityError when a graph disagrees
    with the model, EngineBuildError when TensorRT fails, WriteError (naming the artifact folder) when the disk
    is full or the folder cannot be written, and TensorRTUnavailableError (after publishing the ONNX artifacts)
    when `trt` is asked for without TensorRT or a CUDA device. On any error nothing is left behind."""
    if force is not None:
        warnings.warn("export_artifacts(force=...) is now overwrite=...", DeprecationWarning, stacklevel=2)
        overwrite = overwrite or force
    checkpoint = Path(checkpoint)
    model, cfg, extras = load_checkpoint(checkpoint)
    codec = extras["action_codec"]
    if codec.dim != cfg.model.action_dim:
        raise ValueError(f"{checkpoint}: action codec width {codec.dim} != model.action_dim {cfg.model.action_dim}")
    settings = _settings(
        cfg.export, trt=trt, fp16=fp16, opt_batch=opt_batch, max_batch=max_batch, opset=opset, decoder=decoder
    )
    dest = Path(out_dir) if out_dir is not None else checkpoint.parent / DEFAULT_FOLDER
    check_destination(dest, overwrite)
    if triton is not None:
        check_repository_destination(triton, overwrite)
    frames, source = parity.load_frames(data, cfg) if data is not None else (None, "random frames")

    created = _missing_parents(dest)
    staging = None
    unavailable = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; the published folder is meant to be read
        specs = graph_specs(cfg.model, decoder=settings.decoder)
        graphs = build_graphs(model, decoder=settings.decoder)
        metadata = _metadata(cfg.model, codec)
        onnx_files = {}
        for name in tqdm(specs, desc="export onnx", disable=not progress, leave=False):
            onnx_files[name] = staging / f"{name}.onnx"
            export_onnx(graphs[name], specs[name], onnx_files[name], settings.opset, {**metadata, "graph": name})

        reference_runner = parity.TorchRunner(graphs, specs)
        inputs = parity.make_inputs(reference_runner, specs, codec, frames, source)
        reference = parity.collect_outputs(reference_runner, specs, inputs, "torch", progress)
        drift = parity.float32_drift(graphs["prior_step"], inputs, reference)
        reports = {
            "onnxruntime": parity.run_parity_gate(
                "onnxruntime",
                parity.OnnxRuntimeRunner(onnx_files),
                specs,
                inputs,
                reference,
                parity.ONNXRUNTIME_TOLERANCES,
                progress,
                drift,
            )
        }

        tensorrt = None
        if settings.trt:
            try:
                tensorrt = _build_tensorrt(
                    graphs, specs, onnx_files, staging, dest, settings, metadata, inputs, reference, drift, progress
                )
            except tensorrt_build.TensorRTUnavailableError as error:
                # Also raised after some engines were built (a runtime that cannot be created): the ONNX
                # artifacts are published without them.
                unavailable = error
                for plan in staging.glob("*.plan"):
                    plan.unlink()

        manifest = build_manifest(
            staging,
            model_cfg=cfg.model,
            codec=codec,
            action_repeat=extras["action_repeat"],
            opset=settings.opset,
            specs=specs,
            checkpoint=checkpoint,
            parity=reports,
            parity_inputs=inputs.source,
            tensorrt=tensorrt,
        )
        write_manifest(staging, manifest)
        _check_contents(staging, manifest)
        _publish(staging, dest, overwrite)
    except BaseException as error:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in created:
            _remove_if_empty(folder)
        failure = write_failure(error, dest, inside=staging)  # a full disk, a missing permission
        if failure is None:
            raise
        raise failure from error
    if triton is not None:  # from the ONNX graphs alone when the engines could not be built
        write_triton_repository(dest, triton, settings.max_batch)
    if unavailable is not None:
        raise tensorrt_build.TensorRTUnavailableError(
            f"{unavailable}; the ONNX artifacts are complete in {dest}", artifacts=dest
        )
    return dest


def _settings(export_cfg, **given) -> ExportSettings:
    """Options given explicitly win; unset ones (None) come from the config's `export` section."""
    values = {key: getattr(export_cfg, key) if value is None else value for key, value in given.items() if key != "trt"}
    settings = ExportSettings(trt=bool(given["trt"]), **values)
    check_opset(settings.opset)
    tensorrt_build.optimization_profile(settings.opt_batch, settings.max_batch)
    if given["fp16"] and not settings.trt:
        raise ValueError("fp16 applies to TensorRT engines only (the ONNX graphs are float32); add --trt")
    return settings


def check_destination(dest: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty destination unless it is an artifact folder holding only the files its
    manifest lists, and that only with `overwrite`: replacing anything else would delete files this export did
    not write (wm_core.publish.check_replaceable)."""
    check_replaceable(dest, overwrite, "artifact folder", MANIFEST, artifact_files)


def artifact_files(folder: Path) -> set[str]:
    """The files an export wrote in the artifact folder `folder`: manifest.json and the files it lists."""
    manifest = json.loads((folder / MANIFEST).read_text())
    return {MANIFEST, *manifest_files(manifest)}


def _metadata(model_cfg, codec) -> dict[str, str]:
    """Key facts as ONNX model properties (strings), so a lone .onnx file still says what it is."""
    H = model_cfg.frame_size
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "deter": str(model_cfg.deter_dim),
        "latent": str(model_cfg.latent_dim),
        "action": str(codec.dim),
        "frame": json.dumps([H, H, 3]),
        "action_mode": codec.mode,
        "action_codec": json.dumps(codec.to_dict()),
        "batch_axis": BATCH,
    }


def _build_tensorrt(
    graphs, specs, onnx_files, staging, dest, settings, metadata, inputs, reference, drift, progress
) -> dict:
    """Engines for every graph and their parity gate against the PyTorch reference -> manifest section."""
    profile = tensorrt_build.optimization_profile(settings.opt_batch, settings.max_batch)
    with tempfile.TemporaryDirectory(prefix="wm-fp16-") as scratch:
        sources = onnx_files
        if settings.fp16:
            # The float16 graphs are only the engines' source; the folder ships the float32 ONNX files.
            sources = {}
            for name, spec in specs.items():
                sources[name] = Path(scratch) / f"{name}.onnx"
                export_onnx(
                    HalfPrecisionGraph(graphs[name]),
                    spec,
                    sources[name],
                    settings.opset,
                    {**metadata, "graph": name, "precision": "fp16"},
                )
        section = tensorrt_build.build_engines(
            sources, staging, profile, settings.fp16, dest.parent / TIMING_CACHE, progress
        )
    runner = tensorrt_build.TensorRTRunner(
        {name: staging / e["file"] for name, e in section["engines"].items()}, specs, settings.max_batch
    )
    tolerances = parity.TENSORRT_FP16_TOLERANCES if settings.fp16 else parity.TENSORRT_FP32_TOLERANCES
    section["parity"] = parity.run_parity_gate(
        "tensorrt", runner, specs, inputs, reference, tolerances, progress, drift
    )
    return section


def _check_contents(staging: Path, manifest: dict) -> None:
    """The folder holds exactly the manifest and the files it lists: no external-data side files."""
    expected = set(manifest_files(manifest)) | {MANIFEST}
    actual = {path.name for path in staging.iterdir()}
    if actual != expected:
        raise ValueError(
            f"the exported artifact folder holds {sorted(actual)}, its manifest lists {sorted(expected)}: the "
            f"extra files are external data or leftovers, and an artifact folder must hold nothing unlisted"
        )


def _publish(staging: Path, dest: Path, overwrite: bool) -> None:
    """Rename the finished folder into place; with `overwrite`, swap out the old one and only then delete it."""
    if dest.exists():
        check_destination(dest, overwrite)
    replace_dir(staging, dest)


def _missing_parents(dest: Path) -> list[Path]:
    """Ancestors of `dest` that do not exist yet, deepest first (removed again if the export fails)."""
    missing = []
    for parent in dest.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
