"""wm_export on the tiny model: the artifact folder contract, dynamic batch, manifest, parity gate, bad input,
and `wm-export` end to end."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

import wm_export.export
from wm_core.errors import EXIT_ERROR, EXIT_NO_TENSORRT, EXIT_PARITY
from wm_core.graphs import build_graphs
from wm_export import ParityError, export_artifacts, graph_specs, load_manifest, verify_file, verify_folder
from wm_export.cli import main
from wm_export.onnx_export import export_onnx
from wm_export.parity import (
    DRIFT_FACTOR,
    ONNXRUNTIME_TOLERANCES,
    OnnxRuntimeRunner,
    TorchRunner,
    collect_outputs,
    float32_drift,
    make_inputs,
    run_parity_gate,
)
from wm_train import load_checkpoint
from wm_train.data import save_episode

GRAPH_FILES = {"encoder.onnx", "prior_step.onnx", "decoder.onnx"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(untrained_checkpoint, tmp_path_factory):
    return untrained_checkpoint(path=tmp_path_factory.mktemp("run") / "best.pt")


@pytest.fixture(scope="module")
def exported(checkpoint):
    """One export with the defaults, shared by the tests that only read it."""
    return export_artifacts(checkpoint)


def onnx_io(value_infos):
    return {
        v.name: (
            onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
            [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        )
        for v in value_infos
    }


def test_export_writes_the_contract_files_next_to_the_checkpoint(checkpoint, exported):
    assert exported == checkpoint.parent / "artifacts"
    assert {p.name for p in exported.iterdir()} == GRAPH_FILES | {"manifest.json"}  # no external-data files
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["artifacts", "best.pt"]  # no leftovers

    S, D, A = 8, 32, 3  # tiny preset
    expected = {
        "encoder": (
            {"obs": ("uint8", ["batch", 64, 64, 3])},
            {"z_mean": ("float32", ["batch", S]), "z_std": ("float32", ["batch", S])},
        ),
        "prior_step": (
            {"h": ("float32", ["batch", D]), "z": ("float32", ["batch", S]), "action": ("float32", ["batch", A])},
            {
                "h_next": ("float32", ["batch", D]),
                "prior_mean": ("float32", ["batch", S]),
                "prior_std": ("float32", ["batch", S]),
            },
        ),
        "decoder": ({"z": ("float32", ["batch", S])}, {"frames": ("float32", ["batch", 64, 64, 3])}),
    }
    for name, (inputs, outputs) in expected.items():
        model = onnx.load(str(exported / f"{name}.onnx"), load_external_data=False)
        onnx.checker.check_model(model, full_check=True)
        assert onnx_io(model.graph.input) == inputs
        assert onnx_io(model.graph.output) == outputs
        assert model.opset_import[0].version == 17
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        props = {p.key: p.value for p in model.metadata_props}
        assert props["format"] == "wm-artifacts" and props["format_version"] == "3" and props["graph"] == name
        assert (props["deter"], props["latent"], props["action"]) == (str(D), str(S), str(A))
        assert props["action_mode"] == "continuous" and json.loads(props["frame"]) == [64, 64, 3]


def test_graphs_accept_any_batch_size_and_match_the_model(checkpoint, exported):
    model, cfg, _ = load_checkpoint(checkpoint)
    torch_runner = TorchRunner(build_graphs(model), graph_specs(cfg.model))
    onnx_runner = OnnxRuntimeRunner({n: exported / f"{n}.onnx" for n in ("encoder", "prior_step", "decoder")})
    rng = np.random.default_rng(1)
    for batch in (1, 3, 300):
        feeds = {
            "encoder": {"obs": rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8)},
            "prior_step": {
                "h": rng.standard_normal((batch, 32), np.float32),
                "z": rng.standard_normal((batch, 8), np.float32),
                "action": rng.standard_normal((batch, 3), np.float32),
            },
            "decoder": {"z": rng.standard_normal((batch, 8), np.float32)},
        }
        for graph, feed in feeds.items():
            got, want = onnx_runner(graph, feed), torch_runner(graph, feed)
            for name in want:
                assert got[name].shape == want[name].shape and got[name].shape[0] == batch
                np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=0)


def _sha256(path) -> str:
    """Computed here, not by wm_core.manifest's own function: a hash checked with the code that wrote it proves
    nothing."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_holds_dims_codec_hashes_versions_and_parity(checkpoint, exported):
    manifest = verify_folder(exported)
    assert manifest == load_manifest(exported)
    assert manifest["format"] == "wm-artifacts" and manifest["format_version"] == 3 and manifest["action_repeat"] == 1
    assert manifest["dims"] == {"deter": 32, "latent": 8, "action": 3, "frame": [64, 64, 3]}
    assert manifest["action_codec"] == {
        "mode": "continuous",
        "dim": 3,
        "mean": [0.1, 0.2, 0.3],
        "std": [1.0, 2.0, 0.5],
        "low": [],
        "high": [],
    }
    assert manifest["opset"] == 17
    for name, graph in manifest["graphs"].items():
        assert graph["file"] == f"{name}.onnx"
        assert graph["sha256"] == _sha256(exported / graph["file"])
    assert manifest["graphs"]["encoder"]["inputs"] == {"obs": {"dtype": "uint8", "shape": ["batch", 64, 64, 3]}}
    assert manifest["graphs"]["prior_step"]["outputs"]["h_next"] == {"dtype": "float32", "shape": ["batch", 32]}
    assert manifest["checkpoint"] == {"path": str(checkpoint.resolve()), "sha256": _sha256(checkpoint)}
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["versions"]["onnx"] == onnx.__version__
    assert manifest["versions"]["onnxruntime"] == ort.__version__
    assert "wm" in manifest["versions"]
    assert manifest["tensorrt"] is None
    assert manifest["parity_inputs"] == "random frames"

    report = manifest["parity"]["onnxruntime"]
    outputs = {
        "encoder.z_mean",
        "encoder.z_std",
        "prior_step.h_next",
        "prior_step.prior_mean",
        "prior_step.prior_std",
        "decoder.frames",
        "rollout50.z",
        "rollout50.h",
    }
    assert set(report) == outputs
    # The gate compared two runtimes, not the model with itself: float32 kernels differ somewhere.
    assert any(entry["max_abs"] > 0 for entry in report.values())
    # And what it promises holds on frames it never saw: onnxruntime's encoder against the PyTorch one.
    model, _, _ = load_checkpoint(checkpoint)
    frames = np.random.default_rng(5).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = build_graphs(model)["encoder"](torch.from_numpy(frames))[0].numpy()
    session = ort.InferenceSession(str(exported / "encoder.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"obs": frames})[0]
    assert np.abs(got - expected).max() <= report["encoder.z_mean"]["tolerance"]
    assert report["encoder.z_mean"]["tolerance"] == 1e-4 and report["decoder.frames"]["tolerance"] == 1e-3
    assert report["encoder.z_mean"]["batch_sizes"] == [1, 7, 256]
    assert (report["rollout50.z"]["steps"], report["rollout50.z"]["batch"]) == (50, 256)


def test_verify_file_and_load_manifest_reject_damaged_folders(exported, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(exported, folder)
    manifest = load_manifest(folder)
    assert verify_file(folder, manifest, "encoder.onnx") == folder / "encoder.onnx"
    with open(folder / "decoder.onnx", "ab") as file:
        file.write(b"\0")
    with pytest.raises(ValueError, match="decoder.onnx: sha256 .* does not match"):
        verify_file(folder, manifest, "decoder.onnx")
    (folder / "prior_step.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="prior_step.onnx"):
        verify_file(folder, manifest, "prior_step.onnx")
    with pytest.raises(ValueError, match="not listed"):
        verify_file(folder, manifest, "other.onnx")

    (folder / "manifest.json").write_text(json.dumps({**manifest, "format_version": 4}))
    with pytest.raises(ValueError, match=r"format version 4, expected one of \[1, 2, 3\]"):
        load_manifest(folder)
    (folder / "manifest.json").write_text(json.dumps({**manifest, "action_repeat": "4"}))
    with pytest.raises(ValueError, match=r"manifest.json: action_repeat must be an integer >= 1, got '4'"):
        load_manifest(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable manifest"):
        load_manifest(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        load_manifest(folder)


def _perturb(path, scale=1e-2):
    """Shift every float weight of an ONNX file by `scale`: a graph that no longer matches its model."""
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        array = onnx.numpy_helper.to_array(tensor)
        if array.dtype == np.float32:
            tensor.CopyFrom(onnx.numpy_helper.from_array(array + np.float32(scale), tensor.name))
    onnx.save(model, str(path))


def test_parity_gate_names_the_output_of_a_perturbed_graph(checkpoint, exported, tmp_path):
    model, cfg, extras = load_checkpoint(checkpoint)
    specs = graph_specs(cfg.model)
    files = {name: tmp_path / f"{name}.onnx" for name in specs}
    for path in files.values():
        shutil.copy(exported / path.name, path)
    _perturb(files["decoder"])
    reference_runner = TorchRunner(build_graphs(model), specs)
    inputs = make_inputs(reference_runner, specs, extras["action_codec"])
    reference = collect_outputs(reference_runner, specs, inputs)
    with pytest.raises(ParityError, match=r"decoder\.frames max abs error [0-9.e-]+ > tolerance 1.0e-03") as caught:
        run_parity_gate("onnxruntime", OnnxRuntimeRunner(files), specs, inputs, reference, ONNXRUNTIME_TOLERANCES)
    assert [f.split()[0] for f in caught.value.failures] == ["decoder.frames"]


def _perturb_on_export(monkeypatch, graph_name: str) -> None:
    """Make every export write a `graph_name` graph whose weights are off by 1e-2."""

    def export_then_perturb(graph, spec, path, opset, metadata=None):
        model = export_onnx(graph, spec, path, opset, metadata)
        if spec.name == graph_name:
            _perturb(path)
        return model

    monkeypatch.setattr(wm_export.export, "export_onnx", export_then_perturb)


@pytest.fixture
def perturbed_export(monkeypatch):
    _perturb_on_export(monkeypatch, "prior_step")


def test_parity_failure_leaves_no_artifact_folder(checkpoint, tmp_path, perturbed_export):
    dest = tmp_path / "out" / "artifacts"
    with pytest.raises(ParityError, match=r"prior_step\.h_next max abs error"):
        export_artifacts(checkpoint, dest)
    assert not (tmp_path / "out").exists()  # the created parent is gone too
    assert list(tmp_path.iterdir()) == []


def _write_payload(path, payload):
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("missing", FileNotFoundError, "checkpoint not found"),
        ("not_a_checkpoint", ValueError, "not a readable wm checkpoint"),
        ("other_format", ValueError, "is not a wm checkpoint"),
        ("other_version", ValueError, r"checkpoint format version 4, expected one of \[1, 2, 3\]"),
    ],
)
def test_bad_checkpoints_fail_clearly_and_write_nothing(checkpoint, tmp_path, case, error, message):
    folder = tmp_path / "run"
    folder.mkdir()
    path = folder / "ckpt.pt"
    if case == "not_a_checkpoint":
        path.write_text("these are not weights")
    elif case == "other_format":
        _write_payload(path, {"model": {}})
    elif case == "other_version":
        payload = torch.load(checkpoint, weights_only=True)
        _write_payload(path, {**payload, "format_version": 4})
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(error, match=message):
        export_artifacts(path)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_an_existing_output_needs_overwrite_and_overwrite_replaces_only_artifact_folders(
    checkpoint, exported, tmp_path
):
    dest = tmp_path / "artifacts"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not an artifact folder"):
            export_artifacts(checkpoint, dest, overwrite=overwrite)
    assert [p.name for p in dest.iterdir()] == ["notes.txt"]

    shutil.rmtree(dest)
    shutil.copytree(exported, dest)
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        export_artifacts(checkpoint, dest, decoder=False)
    assert set(load_manifest(dest)["graphs"]) == {"encoder", "prior_step", "decoder"}
    (dest / "notes.txt").write_text("mine")  # a user's file inside an earlier export: kept, the export refused
    with pytest.raises(FileExistsError, match=r"holds files its manifest.json does not list \(notes.txt\)"):
        export_artifacts(checkpoint, dest, overwrite=True, decoder=False)
    assert (dest / "notes.txt").read_text() == "mine"
    (dest / "notes.txt").unlink()
    export_artifacts(checkpoint, dest, overwrite=True, decoder=False)
    assert set(load_manifest(dest)["graphs"]) == {"encoder", "prior_step"}
    assert {p.name for p in dest.iterdir()} == {"encoder.onnx", "prior_step.onnx", "manifest.json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts"]  # no staging or swapped-out folders
    with pytest.warns(DeprecationWarning, match="overwrite"):
        export_artifacts(checkpoint, dest, force=True, decoder=False)  # the old name still replaces


def test_bad_options_fail_before_writing(checkpoint, tmp_path):
    dest = tmp_path / "artifacts"
    with pytest.raises(ValueError, match=r"opset must be in \[14, 20\], got 9"):
        export_artifacts(checkpoint, dest, opset=9)
    with pytest.raises(ValueError, match="1 <= opt_batch <= max_batch"):
        export_artifacts(checkpoint, dest, opt_batch=512, max_batch=64)
    with pytest.raises(ValueError, match="fp16 applies to TensorRT engines only"):
        export_artifacts(checkpoint, dest, fp16=True)
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        export_artifacts(checkpoint, dest, data=tmp_path / "no-data")
    assert list(tmp_path.iterdir()) == []


def test_discrete_model_with_validation_frames_exports(tmp_path, untrained_checkpoint):
    checkpoint = untrained_checkpoint(action_mode="discrete", path=tmp_path / "pong.pt")
    rng = np.random.default_rng(0)
    for i in range(3):
        obs = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
        save_episode(tmp_path / "data" / f"episode_{i:05d}.npz", obs, rng.integers(0, 6, 5))
    folder = export_artifacts(checkpoint, tmp_path / "out", data=tmp_path / "data", decoder=False)
    manifest = load_manifest(folder)
    assert manifest["dims"]["action"] == 6 and manifest["action_codec"]["mode"] == "discrete"
    assert manifest["parity_inputs"].startswith("5 frames of 1 episode(s), validation split of")
    assert set(manifest["parity"]["onnxruntime"]) == {
        "encoder.z_mean",
        "encoder.z_std",
        "prior_step.h_next",
        "prior_step.prior_mean",
        "prior_step.prior_std",
        "rollout50.z",
        "rollout50.h",
    }


def test_cli_exports_and_prints_the_parity_table(checkpoint, tmp_path):
    result = CliRunner().invoke(main, [str(checkpoint), "-o", str(tmp_path / "a"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "rollout50.z" in result.stdout and "decoder.frames" in result.stdout
    assert f"wrote {tmp_path / 'a'}" in result.stdout
    verify_folder(tmp_path / "a")


def test_cli_errors_are_one_line_with_exit_codes(checkpoint, tmp_path, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(main, [str(tmp_path / "missing.pt")])
    assert result.exit_code == EXIT_ERROR
    assert result.stderr.strip().splitlines() == [f"Error: checkpoint not found: {tmp_path / 'missing.pt'}"]

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = runner.invoke(main, [str(checkpoint), "-o", str(tmp_path / "taken"), "--overwrite"])
    assert result.exit_code == EXIT_ERROR and "not an artifact folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    (tmp_path / "notes.txt").write_text("not a checkpoint")
    result = runner.invoke(main, [str(tmp_path / "notes.txt")])
    assert result.exit_code == EXIT_ERROR
    assert len(result.stderr.strip().splitlines()) == 1 and "is not a readable wm checkpoint" in result.stderr

    result = runner.invoke(main, [str(checkpoint), "--max-batch", "0"])
    assert result.exit_code == 2  # click's usage error

    _perturb_on_export(monkeypatch, "encoder")
    result = runner.invoke(main, [str(checkpoint), "-o", str(tmp_path / "bad"), "--no-progress"])
    assert result.exit_code == EXIT_PARITY
    assert result.stderr.strip().splitlines()[-1].startswith("Error: onnxruntime parity check failed: encoder.")
    assert "FAIL" in result.stderr  # the table comes first
    assert not (tmp_path / "bad").exists()


def test_cli_trt_without_tensorrt_exits_3_and_keeps_the_onnx_artifacts(checkpoint, tmp_path):
    has_tensorrt = importlib.util.find_spec("tensorrt") is not None
    if has_tensorrt and torch.cuda.is_available():
        pytest.skip("TensorRT and a CUDA device are present: the missing-TensorRT path cannot happen here")
    result = CliRunner().invoke(main, [str(checkpoint), "-o", str(tmp_path / "a"), "--trt", "--no-progress"])
    assert result.exit_code == EXIT_NO_TENSORRT
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install ".[gpu]"' in lines[0]
    assert ("TensorRT is not installed" if not has_tensorrt else "no CUDA device") in lines[0]
    assert f"ONNX artifacts are complete in {tmp_path / 'a'}" in lines[0]
    assert "onnxruntime  rollout50.z" in result.stdout  # the ONNX parity table still comes out
    manifest = verify_folder(tmp_path / "a")
    assert manifest["tensorrt"] is None and set(manifest["graphs"]) == {"encoder", "prior_step", "decoder"}


def test_rollout_tolerance_rises_with_float32_drift_only(checkpoint, exported):
    model, cfg, extras = load_checkpoint(checkpoint)
    specs = graph_specs(cfg.model)
    graphs = build_graphs(model)
    reference_runner = TorchRunner(graphs, specs)
    inputs = make_inputs(reference_runner, specs, extras["action_codec"])
    reference = collect_outputs(reference_runner, specs, inputs)
    drift = float32_drift(graphs["prior_step"], inputs, reference)
    assert set(drift) == {"rollout50.z", "rollout50.h"} and all(0 < d < 1e-4 for d in drift.values())
    report = run_parity_gate(
        "onnxruntime",
        OnnxRuntimeRunner({n: exported / f"{n}.onnx" for n in specs}),
        specs,
        inputs,
        reference,
        ONNXRUNTIME_TOLERANCES,
        drift=drift,
    )
    assert report["rollout50.z"]["float32_drift"] == drift["rollout50.z"]
    assert report["rollout50.z"]["tolerance"] == max(1e-4, DRIFT_FACTOR * drift["rollout50.z"])
    assert "float32_drift" not in report["encoder.z_mean"]
