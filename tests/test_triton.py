"""`wm-export --triton`: a Triton model repository whose configs parse with Triton's own schema and agree with
the ONNX graphs they serve."""

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from wm_core.manifest import load_manifest
from wm_export.cli import main
from wm_export.triton import write_triton_repository

ROOT = Path(__file__).resolve().parents[1]
ONNX_TO_TRITON = {onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.FLOAT: "TYPE_FP32"}


def _parse_config(path):
    model_config_pb2 = pytest.importorskip(
        "tritonclient.grpc.model_config_pb2", reason='needs tritonclient (pip install ".[triton]")'
    )
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _graph_tensors(values):
    """ONNX inputs or outputs -> [(name, Triton type, dims without the batch axis)], checking the batch axis."""
    tensors = []
    for value in values:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch", value.name
        tensors.append((value.name, ONNX_TO_TRITON[value.type.tensor_type.elem_type], [d.dim_value for d in dims[1:]]))
    return tensors


def _config_tensors(tensors, model_config_pb2):
    return [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors]


@pytest.mark.parametrize("mode", ["continuous", "discrete"])
def test_repository_configs_parse_and_match_the_onnx_graphs(tiny_artifacts, tmp_path, mode):
    artifacts = tiny_artifacts(mode)
    repo = write_triton_repository(artifacts, tmp_path / "repo", max_batch=512)
    manifest = load_manifest(artifacts)
    assert sorted(p.name for p in repo.iterdir()) == ["decoder", "encoder", "prior_step"]
    for name in ("encoder", "prior_step", "decoder"):
        config = _parse_config(repo / name / "config.pbtxt")
        from tritonclient.grpc import model_config_pb2

        graph = onnx.load(repo / name / "1" / "model.onnx").graph
        assert (repo / name / "1" / "model.onnx").read_bytes() == (artifacts / f"{name}.onnx").read_bytes()
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 512
        assert config.HasField("dynamic_batching")
        assert _config_tensors(config.input, model_config_pb2) == _graph_tensors(graph.input)
        assert _config_tensors(config.output, model_config_pb2) == _graph_tensors(graph.output)
    prior = _parse_config(repo / "prior_step" / "config.pbtxt")
    assert json.loads(prior.parameters["action_codec"].string_value) == manifest["action_codec"]
    assert json.loads(prior.parameters["dims"].string_value) == manifest["dims"]


def test_export_cli_writes_the_repository_and_refuses_to_overwrite_it(tiny_checkpoint, tmp_path):
    args = [str(tiny_checkpoint("continuous")), "-o", str(tmp_path / "a"), "--triton", str(tmp_path / "repo")]
    result = CliRunner().invoke(main, [*args, "--no-progress", "--max-batch", "1024"])
    assert result.exit_code == 0, result.output
    assert "wrote the Triton model repository" in result.output
    config = _parse_config(tmp_path / "repo" / "prior_step" / "config.pbtxt")
    assert config.max_batch_size == 1024
    args[2] = str(tmp_path / "b")  # a new artifact folder, the same repository
    again = CliRunner().invoke(main, [*args, "--no-progress"])
    assert again.exit_code == 1 and "Triton repository" in again.output and "pass --overwrite" in again.output
    assert not (tmp_path / "b").exists()
    for flag in ("--overwrite", "--force"):  # --force: the old name, kept hidden
        replaced = CliRunner().invoke(main, [*args, "--no-progress", flag])
        assert replaced.exit_code == 0, replaced.output


def test_overwrite_refuses_to_replace_a_folder_that_is_not_a_repository(tiny_artifacts, tmp_path):
    from wm_export.triton import check_repository_destination, write_triton_repository

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a Triton repository"):
        check_repository_destination(tmp_path / "photos", overwrite=True)
    repo = write_triton_repository(tiny_artifacts("continuous"), tmp_path / "repo", 64)
    (repo / "encoder" / "README").write_text("mine")  # a user's file inside a repository: kept, refused
    with pytest.raises(FileExistsError, match="does not list \\(encoder/README\\)"):
        write_triton_repository(tiny_artifacts("continuous"), repo, 64)
    assert (repo / "encoder" / "README").read_text() == "mine"


def test_example_client_observes_and_imagines_like_rollout(tiny_artifacts, tmp_path, random_frames, random_actions):
    """examples/triton_client.py's observe and imagine, with the server's inference done by onnxruntime on the
    repository's model files, against Rollout on the artifact folder: the same tensors, the same action
    encoding."""
    import importlib.util

    import numpy as np
    import onnxruntime

    from wm_deploy import LatentState, Rollout

    spec = importlib.util.spec_from_file_location("triton_client", ROOT / "examples" / "triton_client.py")
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    mode = "discrete"
    repo = write_triton_repository(tiny_artifacts(mode), tmp_path / "repo", max_batch=64)
    parameters = {
        k: json.loads(v.string_value) for k, v in _parse_config(repo / "prior_step" / "config.pbtxt").parameters.items()
    }
    codec, dims = client.ActionCodec.from_dict(parameters["action_codec"]), parameters["dims"]
    sessions = {
        name: onnxruntime.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        for name in ("encoder", "prior_step")
    }

    def infer(graph, arrays):
        names = client.specs_of(dims)[graph].output_names
        return dict(zip(names, sessions[graph].run(names, arrays)))

    frames, first_action = random_frames(2), random_actions(mode, 1, None)
    actions = random_actions(mode, 8, 5)
    state = client.observe(infer, codec, dims, None, frames[:1])
    state = client.observe(infer, codec, dims, state, frames[1:], first_action)
    futures = client.imagine(infer, codec, state, actions)

    rollout = Rollout.load(tiny_artifacts(mode), backend="onnxruntime")
    expected = rollout.observe(rollout.initial(1), frames[:1])
    expected = rollout.observe(expected, frames[1:], first_action)
    np.testing.assert_allclose(state[0], expected.h, atol=1e-5)
    np.testing.assert_allclose(state[1], expected.z, atol=1e-5)
    forked = LatentState(np.repeat(expected.h, 8, axis=0), np.repeat(expected.z, 8, axis=0))
    trajectory = rollout.imagine(forked, actions)
    np.testing.assert_allclose(futures["z"], trajectory.z, atol=1e-5)
    np.testing.assert_allclose(futures["h"], trajectory.h, atol=1e-5)
