"""Export a world-model checkpoint to an artifact folder: ONNX graphs, optional TensorRT engines, manifest.json
(layout: docs/artifacts.md)."""

from wm_core.graphs import (
    DecoderGraph,
    EncoderGraph,
    GraphSpec,
    HalfPrecisionGraph,
    PriorStepGraph,
    TensorSpec,
    build_graphs,
    graph_specs,
)
from wm_core.manifest import (
    FORMAT,
    FORMAT_VERSION,
    load_manifest,
    manifest_files,
    sha256_file,
    verify_file,
    verify_folder,
)

from .export import export_artifacts
from .parity import ParityError
from .tensorrt_build import EngineBuildError, TensorRTUnavailableError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DecoderGraph",
    "EncoderGraph",
    "EngineBuildError",
    "GraphSpec",
    "HalfPrecisionGraph",
    "ParityError",
    "PriorStepGraph",
    "TensorRTUnavailableError",
    "TensorSpec",
    "build_graphs",
    "export_artifacts",
    "graph_specs",
    "load_manifest",
    "manifest_files",
    "sha256_file",
    "verify_file",
    "verify_folder",
]
