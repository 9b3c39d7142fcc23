"""The fault promises in one place: what a user sees when the disk fills up, a run is killed, or a file on disk
is damaged. Where an older test already keeps part of a promise it is named here, not repeated.

- A write fails (ENOSPC) in wm-collect, wm-train, wm-eval or wm-export: one line on stderr naming the path and
  the cause, exit code 1, no traceback, no partial or temporary file. Injected by a patched writer (always) and
  by a full 3 MiB tmpfs (where this machine lets the tests mount one). Also: torch.save failing mid-checkpoint,
  and a read-only file system, injected (always) and on a remounted tmpfs. Without root the injected variants
  keep every promise for every command in this process; only the tmpfs variants (root and mount(8)) add the
  kernel's own refusals: ENOSPC part-way through a write() and in wm-collect's worker processes, EROFS from
  mkdir, and the console scripts as installed. As root, a missing permission cannot be tested.
  An exception raised by the code that fills a staged report folder: test_evaluate.py.
- SIGKILL, twice at seeded points, then the same command again: wm-train (`--resume`) ends with the same
  weights, best.pt and metrics as an uninterrupted run; wm-collect --store (`--overwrite`) with the same store
  as an uninterrupted recording; wm-export (`--overwrite`) with an artifact folder that verifies and loads. A
  folder named like the output is never partial. A clean stop after an epoch, then `--resume`:
  test_trainer.py::test_resume_continues_exactly.
- A truncated episode file: one line naming the file, from every command that reads episodes. Other damaged
  or mismatched episode files: test_data.py, test_evaluate.py.
- A truncated checkpoint: one line naming it, from every command that reads checkpoints. Files that are no
  checkpoint or of another format version: test_checkpoint.py, test_export.py.
- A tampered artifact file: `Rollout.load` and `verify_folder` refuse it naming the file. Missing or unlisted
  files and damaged manifests: test_export.py, test_deploy_errors.py.
- Concurrent calls on one Rollout from several threads with mixed shapes, and a long-running process seeing
  many shapes (memory bounded by max_workspaces): test_rollout_threads.py.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import wm_core.checkpoint
import wm_core.publish
from wm_core.config import load_config
from wm_core.errors import WriteError
from wm_core.manifest import verify_folder
from wm_core.publish import atomic_write
from wm_export.cli import main as export_command
from wm_train import load_checkpoint
from wm_train.cli import collect_command, eval_command, train_command
from wm_train.data import episode_paths, split_episodes
from wm_train.store import open_episode, per_step_path, read_index
from wm_train.trainer import train

BIN = Path(sys.executable).parent
TINY_YAML = Path(__file__).parents[1] / "configs" / "tiny.yaml"
V1_ARTIFACTS = Path(__file__).parent / "fixtures" / "v1" / "artifacts"
NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"
COMMANDS = {
    "wm-collect": collect_command,
    "wm-train": train_command,
    "wm-eval": eval_command,
    "wm-export": export_command,
}


@pytest.fixture(scope="module")
def episodes(carracing_dir, tmp_path_factory):
    """Two of the recorded CarRacing episodes, one to train on and one to validate: an epoch is one step."""
    folder = tmp_path_factory.mktemp("episodes")
    for path in sorted(carracing_dir.glob("*.npz"))[:2]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def checkpoint(episodes, tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(tiny_config(episodes, out, epochs=1), progress=False)
    return out / "last.pt"


def train_args(episodes, out_dir, epochs=1) -> list:
    overrides = {"data.path": episodes, "train.out_dir": out_dir, "train.epochs": epochs}
    return [TINY_YAML, "--no-progress", *(f"--set={key}={value}" for key, value in overrides.items())]


def cli_case(command, episodes, checkpoint, out):
    """-> (arguments of `command` writing under `out`, the path its first failed write must name)."""
    if command == "wm-collect":
        args = ["CarRacing-v3", "-o", out / "episodes", "--episodes", 2, "--steps", 1, "--no-progress"]
        return args, out / "episodes"  # built in a staged folder: a failed write names the collection
    if command == "wm-train":
        return train_args(episodes, out / "run"), out / "run" / "metrics.jsonl"
    if command == "wm-eval":
        args = [checkpoint, "--data", episodes, "--context", 3, "--horizon", 5, "-o", out / "report", "--no-progress"]
        return args, out / "report"
    return [checkpoint, "-o", out / "artifacts", "--no-progress"], out / "artifacts"


def invoke(command: str, args) -> tuple[int, str]:
    """Run a command in this process as its console script would -> (exit code, stderr)."""
    result = CliRunner().invoke(COMMANDS[command], [str(a) for a in args])
    # An exception other than SystemExit escaped the command: a real run would have printed its traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stderr


def run_script(command: str, args) -> tuple[int, str]:
    """Run a console script in a fresh interpreter -> (exit code, stderr)."""
    done = subprocess.run([BIN / command, *map(str, args)], capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr


def assert_one_line_error(outcome: tuple[int, str], *fragments: str) -> None:
    code, stderr = outcome
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0]


def files_under(folder: Path) -> list[str]:
    """Files under `folder` and temporary folders (their names start with a dot), by relative path."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir() or p.name.startswith("."))


# --- a write fails: the disk is full ---------------------------------------------------------------------------


class OsOnAFullDisk:
    """`os` as wm_core.publish sees it on a full disk: renaming a finished file or folder into place fails,
    after every byte of it was written to a temporary name."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def replace(source, destination):
        raise OSError(errno.ENOSPC, NO_SPACE)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_full_disk_is_one_line_naming_the_path_patched_writer(command, episodes, checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(wm_core.publish, "os", OsOnAFullDisk())
    args, path = cli_case(command, episodes, checkpoint, tmp_path / "out")
    if command == "wm-collect":
        args += ["--workers", 1]  # worker processes would not see the patch
    assert_one_line_error(invoke(command, args), f"Error: cannot write {path}: {NO_SPACE}")
    assert files_under(tmp_path) == []  # every temporary file and staging folder is gone


class ReadOnlyFileSystem:
    """`os` or `tempfile` as the package's writers see them on a read-only file system: creating a temporary file
    or folder, and renaming one into place, fail with EROFS."""

    def __init__(self, module):
        self.module = module

    def __getattr__(self, name):
        return getattr(self.module, name)

    @staticmethod
    def _refuse(*_, **__):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    mkstemp = mkdtemp = replace = _refuse


@pytest.mark.parametrize("command", COMMANDS)
def test_a_read_only_file_system_is_one_line_naming_the_path_patched_writer(
    command, episodes, checkpoint, tmp_path, monkeypatch
):
    """Without root: the promise of test_a_read_only_file_system_is_one_line_naming_the_path, for every command,
    with the file system's refusal injected where the package creates and publishes files."""
    import tempfile

    import wm_export.export

    monkeypatch.setattr(wm_core.publish, "tempfile", ReadOnlyFileSystem(tempfile))
    monkeypatch.setattr(wm_core.publish, "os", ReadOnlyFileSystem(os))
    monkeypatch.setattr(wm_export.export, "tempfile", ReadOnlyFileSystem(tempfile))
    args, path = cli_case(command, episodes, checkpoint, tmp_path / "out")
    if command == "wm-collect":
        args += ["--workers", 1]  # worker processes would not see the patch
    assert_one_line_error(invoke(command, args), f"Error: cannot write {path}: {os.strerror(errno.EROFS)}")
    assert files_under(tmp_path) == []


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 3 MiB tmpfs filled to the last block by one file, `filler`."""
    mount = tmp_path / "full"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8); the patched-writer variant covers this machine")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", mount], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the patched-writer variant covers this")
    try:
        with pytest.raises(OSError) as full, open(mount / "filler", "wb", buffering=0) as filler:
            while True:
                filler.write(bytes(1 << 16))
        assert full.value.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", mount], check=True)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_full_disk_is_one_line_naming_the_path_tmpfs(command, episodes, checkpoint, full_tmpfs):
    """The console scripts themselves, writing into a full file system (wm-collect with its 2 workers)."""
    args, path = cli_case(command, episodes, checkpoint, full_tmpfs / "out")
    assert_one_line_error(run_script(command, args), f"Error: cannot write {path}: {NO_SPACE}")
    assert files_under(full_tmpfs) == ["filler"]


@pytest.mark.parametrize("command", ["wm-train", "wm-export"])
def test_a_read_only_file_system_is_one_line_naming_the_path(command, episodes, checkpoint, full_tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", full_tmpfs], check=True)
    args, path = cli_case(command, episodes, checkpoint, full_tmpfs / "out")
    assert_one_line_error(run_script(command, args), f"Error: cannot write {path}: {os.strerror(errno.EROFS)}")
    assert files_under(full_tmpfs) == ["filler"]


class FileOnAFullDisk:
    """A file with room for `room` more bytes; a write beyond that keeps what fits and fails as a full disk."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data) -> int:
        kept = min(len(data), self.room)
        self.file.write(memoryview(data)[:kept])
        self.room -= kept
        if kept < len(data):
            raise OSError(errno.ENOSPC, NO_SPACE)
        return kept

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_a_checkpoint_write_failing_inside_torch_save_is_one_line(episodes, tmp_path, monkeypatch):
    """The disk fills up while torch.save writes the first checkpoint (best.pt, then last.pt): torch turns the
    OSError of its file's write into its own RuntimeError."""
    real_atomic_write = wm_core.checkpoint.atomic_write

    def atomic_write_on_a_full_disk(path, write, mode=None):
        return real_atomic_write(path, lambda file: write(FileOnAFullDisk(file, 4096)), mode)

    monkeypatch.setattr(wm_core.checkpoint, "atomic_write", atomic_write_on_a_full_disk)
    run = tmp_path / "run"
    assert_one_line_error(invoke("wm-train", train_args(episodes, run)), f"cannot write {run}/best.pt: {NO_SPACE}")
    assert files_under(run) == ["metrics.jsonl", "preview_epoch001.png"]  # complete: written before the checkpoint


@pytest.mark.parametrize(
    "failure, cause",
    [
        (OSError(errno.EROFS, os.strerror(errno.EROFS)), os.strerror(errno.EROFS)),
        # torch.save given a path reports a failed write with this message alone, no OSError behind it
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), "PytorchStreamWriter"),
    ],
)
def test_a_failed_atomic_write_is_a_write_error_naming_the_file(tmp_path, failure, cause):
    def write_half(file):
        file.write(b"half")
        raise failure

    with pytest.raises(WriteError) as caught:
        atomic_write(tmp_path / "last.pt", write_half)
    assert str(caught.value).startswith(f"cannot write {tmp_path / 'last.pt'}: {cause}")
    assert caught.value.__cause__ is failure and files_under(tmp_path) == []
    # wm-collect's workers send it to the parent process pickled
    assert str(pickle.loads(pickle.dumps(caught.value))) == str(caught.value)


def test_an_error_that_is_no_failed_write_passes_unchanged(tmp_path):
    bug = RuntimeError("a bug in the writer")

    def buggy_write(file):
        raise bug

    with pytest.raises(RuntimeError) as caught:
        atomic_write(tmp_path / "x", buggy_write)
    assert caught.value is bug and files_under(tmp_path) == []


# --- SIGKILL at a random point, then the same command again ------------------------------------------------------


def start_module(module: str, *args) -> subprocess.Popen:
    """`python -m module args` in a fresh interpreter (this checkout's code, not the installed scripts')."""
    command = [sys.executable, "-m", module, *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when(process: subprocess.Popen, ready, timeout: float = 120) -> bool:
    """SIGKILL `process` as soon as `ready()` holds -> whether it was still running (the kill landed)."""
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    landed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    code = process.wait()
    assert not landed or code == -signal.SIGKILL
    return landed


def after(seconds: float):
    """A `ready` for kill_when: `seconds` from now."""
    end = time.monotonic() + seconds
    return lambda: time.monotonic() >= end


def glob_ready(folder: Path, pattern: str):
    """A `ready` for kill_when: a path matching `pattern` (recursive glob) exists under `folder`."""
    return lambda: any(folder.glob(pattern))


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def train_module_args(episodes, out_dir, epochs) -> list:
    return ["wm_train.cli", "train", *train_args(episodes, out_dir, epochs)]


def train_kill_points(out: Path) -> list:
    """Where a training run is killed, then killed again when run once more: a seeded random moment (often
    before the first checkpoint), and the moment epoch 2's metrics are in place (best.pt, last.pt not yet)."""
    return [
        after(random.Random(20240611).uniform(3.0, 8.0)),
        lambda: '"epoch": 2' in (out / "metrics.jsonl").read_text() if (out / "metrics.jsonl").exists() else False,
    ]


@pytest.fixture(scope="module")
def straight_run(episodes, tmp_path_factory):
    """An uninterrupted 2-epoch run of the CLI, the reference a killed and resumed run must equal."""
    out = tmp_path_factory.mktemp("straight")
    process = start_module(*train_module_args(episodes, out, epochs=2))
    assert process.wait(timeout=300) == 0, process.stderr.read()
    return out


def test_sigkill_during_training_then_resume_matches_an_uninterrupted_run(episodes, straight_run, tmp_path):
    """test_trainer.py::test_resume_continues_exactly stops cleanly after an epoch; here the process is killed
    as a crash or the out-of-memory killer would, run again (with --resume where a last.pt survived, as a user
    would), killed again at another point, and run again: the same weights, best.pt and metrics as the
    uninterrupted run."""
    killed_dir = tmp_path / "killed"
    for ready in train_kill_points(killed_dir):
        resume = ["--resume"] if (killed_dir / "last.pt").exists() else []
        kill_when(start_module(*train_module_args(episodes, killed_dir, epochs=2), *resume), ready)
    assert (killed_dir / "last.pt").exists()  # the second kill came after epoch 1
    again = start_module(*train_module_args(episodes, killed_dir, epochs=2), "--resume")
    assert again.wait(timeout=300) == 0, again.stderr.read()
    for name in ("last.pt", "best.pt"):
        a, _, a_extras = load_checkpoint(straight_run / name)
        b, _, b_extras = load_checkpoint(killed_dir / name)
        assert b_extras["epoch"] == a_extras["epoch"]
        for key, tensor in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[key], tensor, rtol=0, atol=0)
    metrics = [
        [(m["epoch"], m["train"], m["val"]) for m in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
        for d in (straight_run, killed_dir)
    ]
    assert metrics[1] == metrics[0] and [m[0] for m in metrics[0]] == [1, 2]


COLLECT_ARGS = ["--episodes", 3, "--steps", 6, "--frame-size", 16, "--workers", 1, "--store", "--no-progress"]


def store_contents(folder: Path) -> tuple[dict, list]:
    index = read_index(folder)
    arrays = []
    for episode in index["episodes"]:
        frames, action = open_episode(folder, episode["name"])
        extra = [np.load(per_step_path(folder, episode["name"], key)) for key in episode["arrays"]]
        arrays.append((np.asarray(frames), action, *extra))
    return index, arrays


@pytest.fixture(scope="module")
def straight_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight-store") / "store"
    process = start_module("wm_train.cli", "collect", "CarRacing-v3", "-o", out, *COLLECT_ARGS)
    assert process.wait(timeout=300) == 0, process.stderr.read()
    return out


def test_sigkill_during_collect_to_a_store_then_again_equals_an_uninterrupted_one(straight_store, tmp_path):
    """wm-collect --store killed while it records (into its hidden .npz folder) at a random episode, run again
    and killed while it converts (into the store's staging folder), then run again with --overwrite: the store
    holds exactly the uninterrupted recording, and no folder named like it ever held part of one."""
    out = tmp_path / "store"
    episode = random.Random(7).randrange(3)
    for ready in (
        glob_ready(tmp_path, f".store.*/**/episode_{episode:05d}.npz"),
        glob_ready(tmp_path, ".store.*.tmp/*.obs.npy"),
    ):
        process = start_module("wm_train.cli", "collect", "CarRacing-v3", "-o", out, *COLLECT_ARGS, "--overwrite")
        kill_when(process, lambda ready=ready: ready() or out.exists())
        if out.exists():  # the kill came after the store was renamed into place: it must be complete
            assert store_contents(out)[0] == store_contents(straight_store)[0]
        assert visible(tmp_path) in ([], ["store"])
    again = start_module("wm_train.cli", "collect", "CarRacing-v3", "-o", out, *COLLECT_ARGS, "--overwrite")
    assert again.wait(timeout=300) == 0, again.stderr.read()
    (index, arrays), (expected_index, expected) = store_contents(out), store_contents(straight_store)
    assert index == expected_index and len(arrays) == len(expected) == 3
    for got, want in zip(arrays, expected, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    assert (out / "meta.json").read_bytes() == (straight_store / "meta.json").read_bytes()
    assert visible(tmp_path) == ["store"]


def test_sigkill_during_export_then_again_gives_a_verified_artifact_folder(checkpoint, tmp_path):
    """wm-export killed at a random point of its staging folder's life (before it exists, while graphs are
    written, once its manifest is), run again and killed at another, then run again with --overwrite: the
    manifest verifies and every graph loads in onnxruntime."""
    import onnxruntime

    out = tmp_path / "artifacts"
    points = [
        glob_ready(tmp_path, ".artifacts.*.tmp"),
        glob_ready(tmp_path, ".artifacts.*.tmp/*.onnx"),
        glob_ready(tmp_path, ".artifacts.*.tmp/manifest.json"),
    ]
    for ready in random.Random(11).sample(points, 2):
        process = start_module("wm_export.cli", checkpoint, "-o", out, "--no-progress", "--overwrite")
        kill_when(process, lambda ready=ready: ready() or out.exists())
        if out.exists():
            verify_folder(out)  # renamed into place only when complete
        assert visible(tmp_path) in ([], ["artifacts"])
    again = start_module("wm_export.cli", checkpoint, "-o", out, "--no-progress", "--overwrite")
    assert again.wait(timeout=300) == 0, again.stderr.read()
    manifest = verify_folder(out)
    assert set(manifest["graphs"]) == {"encoder", "prior_step", "decoder"}
    for entry in manifest["graphs"].values():
        onnxruntime.InferenceSession(str(out / entry["file"]), providers=["CPUExecutionProvider"])
    assert visible(tmp_path) == ["artifacts"]


# --- damaged files -----------------------------------------------------------------------------------------------


def cut_in_half(path: Path) -> Path:
    os.truncate(path, path.stat().st_size // 2)
    return path


@pytest.mark.parametrize("command", ["wm-train", "wm-eval", "wm-export"])
def test_a_truncated_episode_file_is_one_line_naming_it(command, episodes, checkpoint, tmp_path):
    data = Path(shutil.copytree(episodes, tmp_path / "episodes"))
    cfg = load_config(TINY_YAML)  # the split of the checkpoint's config too
    _, validation = split_episodes(episode_paths(data), cfg.data.val_fraction, cfg.train.seed)
    damaged = cut_in_half(validation[0])  # read by all three (wm-export reads the validation split only)
    args = {
        "wm-train": train_args(data, tmp_path / "run"),
        "wm-eval": [checkpoint, "--data", data, "-o", tmp_path / "report", "--no-progress"],
        "wm-export": [checkpoint, "--data", data, "-o", tmp_path / "artifacts", "--no-progress"],
    }[command]
    assert_one_line_error(invoke(command, args), f"Error: {damaged}: not a readable episode file")
    assert files_under(tmp_path) == [f"episodes/{name}" for name in files_under(data)]


@pytest.mark.parametrize("command", ["wm-train --resume", "wm-eval", "wm-export"])
def test_a_truncated_checkpoint_is_one_line_naming_it(command, episodes, checkpoint, tmp_path):
    damaged = cut_in_half(Path(shutil.copy(checkpoint, tmp_path / "last.pt")))
    args = {
        "wm-train --resume": [*train_args(episodes, tmp_path, epochs=2), "--resume"],
        "wm-eval": [damaged, "--data", episodes, "-o", tmp_path / "report", "--no-progress"],
        "wm-export": [damaged, "-o", tmp_path / "artifacts", "--no-progress"],
    }[command]
    assert_one_line_error(invoke(command.split()[0], args), f"Error: {damaged} is not a readable wm checkpoint")
    assert files_under(tmp_path) == ["last.pt"]


@pytest.mark.parametrize("name", ["encoder.onnx", "prior_step.onnx", "decoder.onnx"])
def test_a_tampered_artifact_file_is_refused_naming_it(name, tmp_path):
    """One bit flipped in the middle of a graph file of the committed v1 folder (no export needed)."""
    pytest.importorskip("onnxruntime")
    from wm_deploy import Rollout

    folder = Path(shutil.copytree(V1_ARTIFACTS, tmp_path / "artifacts"))
    with open(folder / name, "r+b") as file:
        file.seek((folder / name).stat().st_size // 2)
        byte = file.read(1)[0]
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte ^ 1]))
    message = rf"{name}: sha256 [0-9a-f]{{64}} does not match the manifest's"
    with pytest.raises(ValueError, match=message):
        verify_folder(folder)
    with pytest.raises(ValueError, match=message):
        Rollout.load(folder, backend="onnxruntime", device="cpu")
