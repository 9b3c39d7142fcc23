"""TensorRT side of wm_export: what runs everywhere (profile, missing-TensorRT error, the FP16 source graph),
and engine builds that need TensorRT and a CUDA device (skipped without them)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys

import numpy as np
import onnx
import pytest
import torch

from wm_core.manifest import load_manifest, verify_folder
from wm_export import HalfPrecisionGraph, TensorRTUnavailableError, build_graphs, export_artifacts, graph_specs
from wm_export.onnx_export import export_onnx
from wm_export.parity import OnnxRuntimeRunner, TorchRunner
from wm_export.tensorrt_build import optimization_profile, profile_shapes, require_tensorrt

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_gpu_tensorrt = pytest.mark.skipif(
    not (HAS_TENSORRT and torch.cuda.is_available()),
    reason=f"needs TensorRT ({'present' if HAS_TENSORRT else 'not installed'}) and a CUDA device "
    f'({"present" if torch.cuda.is_available() else "none"}); install with pip install ".[gpu]"',
)


def test_optimization_profile_spans_one_to_max_batch():
    profile = optimization_profile(opt_batch=256, max_batch=4096)
    assert profile == {"min": 1, "opt": 256, "max": 4096}
    assert profile_shapes((-1, 64, 64, 3), profile) == ((1, 64, 64, 3), (256, 64, 64, 3), (4096, 64, 64, 3))
    assert profile_shapes((-1, 32), optimization_profile(7, 7)) == ((1, 32), (7, 32), (7, 32))
    with pytest.raises(ValueError, match="opt_batch=8, max_batch=4"):
        optimization_profile(opt_batch=8, max_batch=4)
    with pytest.raises(ValueError, match="1 <= opt_batch"):
        optimization_profile(opt_batch=0, max_batch=4)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed: the missing-TensorRT error cannot happen")
def test_missing_tensorrt_is_a_one_line_error_naming_the_extra():
    with pytest.raises(TensorRTUnavailableError) as caught:
        require_tensorrt()
    message = str(caught.value)
    assert "TensorRT is not installed" in message and 'pip install ".[gpu]"' in message
    assert "\n" not in message


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed: it is imported instead of the stubs-only folder")
def test_a_tensorrt_folder_of_stubs_only_is_not_an_installed_tensorrt(tmp_path, monkeypatch):
    """tensorrt-stubs installed into site-packages leaves tensorrt/__init__.pyi, which imports as an empty
    namespace package."""
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("__version__: str\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    with pytest.raises(TensorRTUnavailableError, match="TensorRT is not installed") as caught:
        require_tensorrt()
    assert str(tmp_path / "tensorrt") in str(caught.value) and 'pip install ".[gpu]"' in str(caught.value)


def test_fp16_source_graph_has_float32_io_and_float16_weights(tmp_path, untrained_model):
    """The graph FP16 engines are built from (TensorRT 11 has no FP16 flag): float16 inside, float32 at the
    edges, within float16 accuracy of the float32 model."""
    model, cfg, _ = untrained_model()
    specs = graph_specs(cfg.model)
    graphs = build_graphs(model.eval())
    files = {}
    for name, spec in specs.items():
        files[name] = tmp_path / f"{name}.onnx"
        onnx_model = export_onnx(HalfPrecisionGraph(graphs[name]), spec, files[name], opset=17)
        weights = {
            onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
            for t in onnx_model.graph.initializer
            if t.dims and np.prod(t.dims) > 1
        }
        assert weights == {np.dtype(np.float16)}, name

    rng = np.random.default_rng(0)
    feeds = {
        "encoder": {"obs": rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)},
        "prior_step": {
            "h": np.tanh(rng.standard_normal((5, 32))).astype(np.float32),
            "z": rng.standard_normal((5, 8), np.float32),
            "action": rng.standard_normal((5, 3), np.float32),
        },
        "decoder": {"z": rng.standard_normal((5, 8), np.float32)},
    }
    fp16, fp32 = OnnxRuntimeRunner(files), TorchRunner(graphs, specs)
    for graph, feed in feeds.items():
        got, want = fp16(graph, feed), fp32(graph, feed)
        for name in want:
            assert got[name].dtype == np.float32
            np.testing.assert_allclose(got[name], want[name], atol=1e-2, rtol=0)


@needs_gpu_tensorrt
@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_engines_pass_parity_and_are_recorded(tmp_path, fp16, untrained_checkpoint):
    checkpoint = untrained_checkpoint(path=tmp_path / "best.pt")
    folder = export_artifacts(checkpoint, trt=True, fp16=fp16, opt_batch=16, max_batch=64)
    manifest = verify_folder(folder)
    section = manifest["tensorrt"]
    assert section["precision"] == ("fp16" if fp16 else "fp32")
    assert section["profile"] == {"min": 1, "opt": 16, "max": 64}
    assert section["gpu"] == torch.cuda.get_device_name()
    assert section["compute_capability"] == "{}.{}".format(*torch.cuda.get_device_capability())
    assert section["version"] == manifest["versions"]["tensorrt"]
    for name, engine in section["engines"].items():
        digest = hashlib.sha256((folder / f"{name}.plan").read_bytes()).hexdigest()  # not the writer's function
        assert engine == {"file": f"{name}.plan", "sha256": digest}
    latent = 1e-2 if fp16 else 1e-3
    assert section["parity"]["rollout50.z"]["tolerance"] == latent
    assert set(section["parity"]) == set(manifest["parity"]["onnxruntime"])  # every output gated on TensorRT too
    assert (tmp_path / "tensorrt_timing.cache").stat().st_size > 0
    assert load_manifest(folder)["parity"]["onnxruntime"]
