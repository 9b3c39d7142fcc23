"""The fault promises in one place: what a user sees when the disk fills up, a run is killed, or a file on disk
is damaged. Where an older test already keeps part of a promise it is named here, not repeated.

- A write fails (ENOSPC) in wm-collect, wm-train, wm-eval or wm-export: one line on stderr naming the path and
  the cause, exit code 1, no traceback, no partial or temporary file. Injected by a patched writer (always) and
  by a full 3 MiB tmpfs (where this machine lets the tests mount one). Also: torch.save failing mid-checkpoint,
  and a read-only file system (tmpfs only: as root, a missing permission cannot be tested).
  An exception raised by the code that fills a staged report folder: test_evaluate.py.
- SIGKILL during training, then `--resume`: the same weights, best.pt and metrics as an uninterrupted run.
  A clean stop after an epoch, then `--resume`: test_trainer.py::test_resume_continues_exactly.
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
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

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
        return args, out / "episodes" / "episode_00000.npz"
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


# --- SIGKILL during training -----------------------------------------------------------------------------------


def test_sigkill_during_training_then_resume_matches_an_uninterrupted_run(episodes, tmp_path):
    """test_trainer.py::test_resume_continues_exactly stops cleanly after an epoch; here the process is killed
    as a crash or the out-of-memory killer would, as soon as epoch 1's last.pt is in place (so while epoch 2
    runs), and resumed by the CLI. Both runs are processes of their own, started side by side."""
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"

    def start(out_dir):
        command = [BIN / "wm-train", *map(str, train_args(episodes, out_dir, epochs=2))]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    straight, killed = start(straight_dir), start(killed_dir)
    deadline = time.monotonic() + 120
    while not (killed_dir / "last.pt").exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL  # it was still running: the kill landed during training
    assert torch.load(killed_dir / "last.pt", weights_only=True)["epoch"] == 1

    resumed = run_script("wm-train", [*train_args(episodes, killed_dir, epochs=2), "--resume"])
    assert resumed[0] == 0, resumed[1]
    assert straight.wait(timeout=300) == 0, straight.stderr.read()
    for name in ("last.pt", "best.pt"):
        a, _, a_extras = load_checkpoint(straight_dir / name)
        b, _, b_extras = load_checkpoint(killed_dir / name)
        assert b_extras["epoch"] == a_extras["epoch"]
        for key, tensor in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[key], tensor, rtol=0, atol=0)
    metrics = [
        [(m["epoch"], m["train"], m["val"]) for m in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
        for d in (straight_dir, killed_dir)
    ]
    assert metrics[1] == metrics[0] and [m[0] for m in metrics[0]] == [1, 2]


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
