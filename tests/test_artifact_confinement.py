"""Artifact folders and episode stores are confined (docs/safety.md): a crafted folder is refused with one line
and nothing outside it is read.

The crafted artifact folders: a graph named by an absolute path, by `../`, a graph file that is a symlink out of
the folder, a TensorRT engine named outside, a graph keeping its weights in external data, graphs whose inputs
and outputs are not the contract's. A file swapped between its hash and its load cannot slip through: the bytes
loaded are the bytes hashed. The episode store: names in store.json pointing outside, and a symlink out.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import wm_core.manifest
from wm_core.manifest import MANIFEST, load_manifest, verify_folder
from wm_train.store import open_episode, read_index, write_store

onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture
def opened(monkeypatch):
    """The real paths of every file opened through open(), io.open and os.open while the test runs."""
    paths: list[str] = []
    real_open, real_os_open = io.open, os.open

    def record(file):
        if isinstance(file, (str, bytes, os.PathLike)):
            paths.append(os.path.realpath(os.fsdecode(file)))

    def open_(file, *args, **kwargs):
        record(file)
        return real_open(file, *args, **kwargs)

    def os_open(path, *args, **kwargs):
        record(path)
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "open", os_open)
    return paths


def _edit_manifest(folder: Path, edit) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    edit(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _absolute_name(folder: Path, sentinel: Path) -> None:
    def edit(manifest):
        manifest["graphs"]["encoder"].update(file=str(sentinel), sha256=_sha(sentinel.read_bytes()))

    _edit_manifest(folder, edit)


def _dotdot_name(folder: Path, sentinel: Path) -> None:
    def edit(manifest):
        manifest["graphs"]["encoder"].update(file=f"../{sentinel.name}", sha256=_sha(sentinel.read_bytes()))

    _edit_manifest(folder, edit)


def _symlink_out(folder: Path, sentinel: Path) -> None:
    (folder / "encoder.onnx").unlink()
    (folder / "encoder.onnx").symlink_to(sentinel)  # the sentinel is a copy: the manifest's hash matches


def _engine_outside(folder: Path, sentinel: Path) -> None:
    def edit(manifest):
        engine = {"file": f"../{sentinel.name}", "sha256": _sha(sentinel.read_bytes())}
        manifest["tensorrt"] = {"precision": "fp32", "profile": {"max": 8}, "engines": {"encoder": engine}}

    _edit_manifest(folder, edit)


CRAFTED = {
    "absolute name": (_absolute_name, "graphs.encoder.file .* refused: it is an absolute path"),
    "dot-dot name": (_dotdot_name, r"graphs.encoder.file names file '\.\./sentinel.onnx', refused: .*separator"),
    "symlink out of the folder": (_symlink_out, "refused: it is a symlink resolving outside the folder"),
    "engine named outside": (_engine_outside, "tensorrt.engines.encoder.file .* refused"),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_a_file_named_outside_the_folder_is_refused_and_never_read(case, artifact_copy, tmp_path, opened):
    craft, message = CRAFTED[case]
    folder = artifact_copy("continuous", tmp_path / "artifacts")
    sentinel = tmp_path / "sentinel.onnx"
    sentinel.write_bytes((folder / "encoder.onnx").read_bytes())
    craft(folder, sentinel)
    from wm_deploy import Rollout

    for load in (verify_folder, lambda f: Rollout.load(f, backend="onnxruntime", device="cpu")):
        opened.clear()
        with pytest.raises(ValueError, match=message) as refused:
            load(folder)
        assert "\n" not in str(refused.value) and str(folder / MANIFEST) in str(refused.value)
        assert str(sentinel) not in opened  # not hashed, not loaded


def _external_data(folder: Path, outside: Path) -> None:
    """encoder.onnx keeps its weights in `outside`, beside the folder (the manifest's hash updated)."""
    model = onnx.load(str(folder / "encoder.onnx"))
    onnx.save_model(model, str(folder / "encoder.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)  # fmt: skip
    (folder / "weights.bin").rename(outside)
    model = onnx.load(str(folder / "encoder.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = f"../{outside.name}"
    data = model.SerializeToString()
    (folder / "encoder.onnx").write_bytes(data)
    _edit_manifest(folder, lambda m: m["graphs"]["encoder"].update(sha256=_sha(data)))


def test_a_graph_with_external_data_is_refused_at_load_and_its_data_never_read(artifact_copy, tmp_path, opened):
    from wm_deploy import Rollout

    folder = artifact_copy("continuous", tmp_path / "artifacts")
    outside = tmp_path / "weights_outside.bin"
    _external_data(folder, outside)
    opened.clear()
    with pytest.raises(ValueError, match=r"encoder.onnx: the graph keeps \d+ tensor\(s\) in external data") as refused:
        Rollout.load(folder, backend="onnxruntime", device="cpu")
    assert "\n" not in str(refused.value) and str(outside) not in opened


def test_graphs_whose_inputs_and_outputs_differ_from_the_contract_are_refused(artifact_copy, tmp_path):
    """The decoder's graph under the encoder's name, its hash updated: the hash matches, the graph does not."""
    from wm_deploy import Rollout

    folder = artifact_copy("continuous", tmp_path / "artifacts")
    data = (folder / "decoder.onnx").read_bytes()
    (folder / "encoder.onnx").write_bytes(data)
    _edit_manifest(folder, lambda m: m["graphs"]["encoder"].update(sha256=_sha(data)))
    with pytest.raises(ValueError, match=r"encoder.onnx: graph inputs and outputs .*, expected .*'obs'") as refused:
        Rollout.load(folder, backend="onnxruntime", device="cpu")
    assert "\n" not in str(refused.value)


def test_a_file_swapped_right_after_it_is_hashed_is_not_what_loads(artifact_copy, tmp_path, monkeypatch):
    """The reader is patched to replace encoder.onnx the moment its hash is computed: what onnxruntime gets
    must still be the bytes that were hashed."""
    from wm_deploy import Rollout

    folder = artifact_copy("continuous", tmp_path / "artifacts")
    listed = {entry["sha256"] for entry in load_manifest(folder)["graphs"].values()}
    other = onnx.load(str(folder / "encoder.onnx"))
    other.doc_string = "not the graph that was hashed"  # a graph that loads, under a hash no manifest lists
    swapped = other.SerializeToString()

    class SwapAfterHashing:
        """hashlib as wm_core.manifest sees it: each digest, once computed, swaps encoder.onnx on disk."""

        def __getattr__(self, name):
            return getattr(hashlib, name)

        @staticmethod
        def sha256(*data):
            digest = hashlib.sha256(*data)

            class Digest:
                def update(self, block):
                    digest.update(block)

                def hexdigest(self):
                    value = digest.hexdigest()
                    (folder / "encoder.onnx").write_bytes(swapped)
                    return value

            return Digest()

    loaded: list[bytes] = []
    real_session = onnxruntime.InferenceSession

    def session(model, *args, **kwargs):
        loaded.append(model if isinstance(model, bytes) else Path(model).read_bytes())
        return real_session(model, *args, **kwargs)

    monkeypatch.setattr(wm_core.manifest, "hashlib", SwapAfterHashing())
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    Rollout.load(folder, backend="onnxruntime", device="cpu")
    assert (folder / "encoder.onnx").read_bytes() == swapped  # the swap happened
    assert {_sha(data) for data in loaded} == listed  # yet every graph loaded is one the manifest lists


def test_write_triton_repository_refuses_to_replace_a_folder_that_is_not_its_own(tiny_artifacts, tmp_path):
    from wm_export.triton import write_triton_repository

    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing to replace .*precious: it is not a Triton repository"):
        write_triton_repository(tiny_artifacts("continuous"), target, 8)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


def test_the_triton_writer_copies_no_file_named_outside_the_artifacts(artifact_copy, tmp_path, opened):
    from wm_export.triton import write_triton_repository

    folder = artifact_copy("continuous", tmp_path / "artifacts")
    sentinel = tmp_path / "sentinel.onnx"
    sentinel.write_bytes((folder / "encoder.onnx").read_bytes())
    _dotdot_name(folder, sentinel)
    opened.clear()
    with pytest.raises(ValueError, match=r"graphs.encoder.file names file '\.\./sentinel.onnx', refused"):
        write_triton_repository(folder, tmp_path / "triton", 8)
    assert str(sentinel) not in opened and not (tmp_path / "triton").exists()


# --- the episode store ------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    action = rng.normal(size=(4, 3)).astype(np.float32)
    write_store(tmp_path / "store", [("ep0", obs, action, {"reward": np.zeros(4, np.float32)})])
    return tmp_path / "store"


@pytest.mark.parametrize(
    "entry, name, why",
    [
        ("name", "../ep0", "path separator"),
        ("name", "/tmp/ep0", "absolute path"),
        ("name", "sub/ep0", "path separator"),
        ("name", "..", "names a folder"),
        ("arrays", "../../reward", "path separator"),
    ],
)
def test_a_store_index_naming_files_outside_the_store_is_refused(store, entry, name, why):
    index = json.loads((store / "store.json").read_text())
    index["episodes"][0][entry] = [name] if entry == "arrays" else name
    (store / "store.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"store.json: entry episodes\[0\]\.{entry}.* refused: .*{why}") as refused:
        read_index(store)
    assert "\n" not in str(refused.value)


def test_a_store_episode_file_that_is_a_symlink_out_of_the_store_is_refused_and_never_read(store, tmp_path, opened):
    sentinel = tmp_path / "outside.obs.npy"
    (store / "ep0.obs.npy").rename(sentinel)
    (store / "ep0.obs.npy").symlink_to(sentinel)
    opened.clear()
    with pytest.raises(ValueError, match="store.json: entry episode 'ep0' .* symlink resolving outside"):
        open_episode(store, "ep0")
    assert str(sentinel) not in opened
