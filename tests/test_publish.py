"""The publishing layer (wm_core.publish): durability and what a failed or interrupted write leaves.

- Every writer of the package, failed part-way by a full disk (ENOSPC injected at the Nth file write, fsync
  or rename), leaves the previous content or the new one, byte for byte, and no temporary file or folder.
- atomic_write fsyncs the file before renaming it and the folder after; a staged folder has every file and
  folder in it fsync'ed before it is renamed into place, and its parent after.
- replace_dir: atomic exchange or the two-rename fallback; a failed first rename leaks nothing; a failed
  restore keeps the old copy at `.NAME.old`; a crash between the renames (the process killed) is recovered by
  the next writer or reader.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import wm_core.publish
from wm_core.checkpoint import save_checkpoint
from wm_core.episode_file import save_episode
from wm_core.manifest import load_manifest, write_manifest
from wm_core.publish import aside_path, atomic_write_bytes, replace_dir, restore_aside, staged_dir
from wm_train.store import read_index, write_store

NO_SPACE = os.strerror(errno.ENOSPC)
REPO = Path(__file__).parents[1]


# --- fault injection at the write layer ---------------------------------------------------------------------


class FailingFile:
    """A file opened for writing whose `write` counts towards the faults (and raises at the chosen call)."""

    def __init__(self, file, faults: Faults):
        self._file, self._faults = file, faults

    def write(self, data):
        self._faults.tick("write")
        return self._file.write(data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        self._file.__enter__()
        return self

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)

    def __iter__(self):
        return iter(self._file)


class Faults:
    """Count the file writes, fsyncs and renames (os.replace) made while installed; the `at`-th call of `kind`
    raises OSError(ENOSPC), as a full disk would."""

    def __init__(self, kind: str | None = None, at: int | None = None):
        self.kind, self.at = kind, at
        self.calls = {"write": 0, "fsync": 0, "replace": 0}

    def tick(self, kind: str) -> None:
        self.calls[kind] += 1
        if kind == self.kind and self.calls[kind] == self.at:
            raise OSError(errno.ENOSPC, NO_SPACE)

    def install(self, monkeypatch) -> None:
        real_fsync, real_replace, real_open = os.fsync, os.replace, io.open

        def fsync(fd):
            self.tick("fsync")
            return real_fsync(fd)

        def replace(source, destination, **kwargs):
            self.tick("replace")
            return real_replace(source, destination, **kwargs)

        def open_(file, mode="r", *args, **kwargs):
            opened = real_open(file, mode, *args, **kwargs)
            return FailingFile(opened, self) if any(c in mode for c in "wax+") else opened

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(io, "open", open_)  # os.fdopen and pathlib open through io.open
        monkeypatch.setattr(builtins, "open", open_)


def snapshot(path: Path) -> bytes | dict[str, bytes] | None:
    """A file's bytes, a folder's files by relative path -> bytes, None if absent."""
    if path.is_file():
        return path.read_bytes()
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    return None


def injection_points(count: int, most: int = 12) -> list[int]:
    """1..count, or the first and last three and `most` spread over it: a writer's last calls are often those
    of its last file."""
    if count <= most:
        return list(range(1, count + 1))
    spread = {round(1 + i * (count - 1) / (most - 1)) for i in range(most)}
    return sorted(spread | {1, 2, 3, count - 2, count - 1, count})


def old_or_new(now, old, new, per_file: bool) -> bool:
    """Whether `now` is `old` or `new`; with `per_file`, each file of a folder on its own (files written one by
    one, each atomically, as wm-control's report)."""
    if not per_file:
        return now in (old, new)
    return set(now) <= set(old) | set(new) and all(now[f] in (old.get(f), new.get(f)) for f in now)


def check_writer_never_leaves_a_partial_file(
    write_old, write_new, target: Path, tmp_path: Path, monkeypatch, per_file: bool = False
):
    """`write_old(target)` then `write_new(target)` failed at every injection point of every kind: the target is
    then the old content or the new, byte for byte (`per_file`: each file of the folder `target`), and its
    folder holds nothing else."""
    reference = tmp_path / "reference" / target.name
    write_new(reference)
    new = snapshot(reference)
    write_old(target)
    old = snapshot(target)
    assert old is not None and new is not None and old != new, "the test needs two different contents"
    pristine = tmp_path / "pristine"
    shutil.copytree(target.parent, pristine)
    counted = Faults()
    with monkeypatch.context() as patch:
        counted.install(patch)
        write_new(target)
    assert snapshot(target) == new, "the writer is not deterministic: byte comparison would mean nothing"
    assert counted.calls["fsync"] > 0 and counted.calls["replace"] > 0
    for kind, count in counted.calls.items():
        for at in injection_points(count):
            shutil.rmtree(target.parent)
            shutil.copytree(pristine, target.parent)
            faults = Faults(kind, at)
            with monkeypatch.context() as patch:
                faults.install(patch)
                try:
                    write_new(target)
                except OSError as error:
                    assert NO_SPACE in str(error), error
            now = snapshot(target)
            assert old_or_new(now, old, new, per_file), f"{kind} #{at}: {target.name} is neither the old nor the new"
            assert sorted(os.listdir(target.parent)) == sorted(os.listdir(pristine)), f"{kind} #{at}: leftovers"


# --- the writers ---------------------------------------------------------------------------------------------


def _episode(seed: int, frames: int = 6):
    rng = np.random.default_rng(seed)
    obs = rng.integers(0, 256, (frames, 64, 64, 3), dtype=np.uint8)
    action = rng.normal(size=(frames, 3)).astype(np.float32)
    return obs, action, {"reward": rng.normal(size=frames).astype(np.float32), "terminated": np.zeros(frames, bool)}


@pytest.fixture(scope="module")
def eval_reports(untrained_checkpoint, carracing_dir):
    """Two evaluation reports of the untrained tiny model (different horizons)."""
    from wm_train.evaluate import evaluate_checkpoint

    checkpoint = untrained_checkpoint()
    return [
        evaluate_checkpoint(checkpoint, carracing_dir, context=3, horizon=h, progress=False, examples=1) for h in (3, 4)
    ]


@pytest.fixture(scope="module")
def control_results(untrained_checkpoint):
    """Two wm-control results of the untrained tiny model with heads (seeds 0 and 1, 3 steps of Pong)."""
    from wm_deploy import Rollout
    from wm_deploy.control import run_control
    from wm_deploy.planner import PlannerSettings

    rollout = Rollout.load(untrained_checkpoint("tiny", "discrete", heads=True), backend="torch", device="cpu")
    settings = PlannerSettings(horizon=2, samples=8, iterations=1, elites=2, replay=1)
    return [
        run_control(rollout, "ALE/Pong-v5", episodes=1, steps=3, seed=s, settings=settings, record=True) for s in (0, 1)
    ]


def test_a_checkpoint_write_failing_part_way_leaves_the_old_or_the_new(untrained_model, tmp_path, monkeypatch):
    model, cfg, codec = untrained_model()
    changed, _, _ = untrained_model()
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    check_writer_never_leaves_a_partial_file(
        lambda path: save_checkpoint(path, model, cfg, codec),
        lambda path: save_checkpoint(path, changed, cfg, codec),
        tmp_path / "run" / "last.pt",
        tmp_path,
        monkeypatch,
    )


def test_an_episode_write_failing_part_way_leaves_the_old_or_the_new(tmp_path, monkeypatch):
    (obs0, action0, steps0), (obs1, action1, steps1) = _episode(0), _episode(1)
    check_writer_never_leaves_a_partial_file(
        lambda path: save_episode(path, obs0, action0, **steps0),
        lambda path: save_episode(path, obs1, action1, **steps1),
        tmp_path / "episodes" / "episode_00000.npz",
        tmp_path,
        monkeypatch,
    )


def test_a_store_write_failing_part_way_leaves_the_old_or_the_new(tmp_path, monkeypatch):
    def store(seeds):
        episodes = [(f"ep{s}", *_episode(s)) for s in seeds]
        return lambda path: write_store(path, episodes, {"meta.json": b"{}\n"}, overwrite=True)

    check_writer_never_leaves_a_partial_file(
        store([0, 1]), store([2]), tmp_path / "data" / "store", tmp_path, monkeypatch
    )


def test_a_manifest_write_failing_part_way_leaves_the_old_or_the_new(tmp_path, monkeypatch):
    check_writer_never_leaves_a_partial_file(
        lambda path: write_manifest(path.parent, {"format": "wm-artifacts", "opset": 17}),
        lambda path: write_manifest(path.parent, {"format": "wm-artifacts", "opset": 18}),
        tmp_path / "artifacts" / "manifest.json",
        tmp_path,
        monkeypatch,
    )


def test_a_metrics_write_failing_part_way_leaves_the_old_or_the_new(tmp_path, monkeypatch):
    """metrics.jsonl, rewritten whole after each epoch by the trainer's one call (Trainer._report)."""
    lines = [json.dumps({"epoch": e, "train": {"loss": 1.0 / (e + 1)}}) + "\n" for e in range(3)]
    check_writer_never_leaves_a_partial_file(
        lambda path: atomic_write_bytes(path, "".join(lines[:2]).encode(), mode=0o644),
        lambda path: atomic_write_bytes(path, "".join(lines).encode(), mode=0o644),
        tmp_path / "run" / "metrics.jsonl",
        tmp_path,
        monkeypatch,
    )


def test_a_preview_write_failing_part_way_leaves_the_old_or_the_new(
    untrained_model, carracing_dir, tiny_config, tmp_path, monkeypatch
):
    from wm_train.data import load_splits
    from wm_train.preview import save_preview

    model, _, _ = untrained_model()
    _, val, codec = load_splits(tiny_config(carracing_dir, tmp_path / "unused"))
    check_writer_never_leaves_a_partial_file(
        lambda path: save_preview(model, val, codec, path, columns=2),
        lambda path: save_preview(model, val, codec, path, columns=3),
        tmp_path / "run" / "preview_epoch001.png",
        tmp_path,
        monkeypatch,
    )


def test_an_eval_report_write_failing_part_way_leaves_the_old_or_the_new(eval_reports, tmp_path, monkeypatch):
    from wm_train.evaluate import write_report

    old, new = eval_reports
    check_writer_never_leaves_a_partial_file(
        lambda path: write_report(old, path, overwrite=True),
        lambda path: write_report(new, path, overwrite=True),
        tmp_path / "reports" / "eval",
        tmp_path,
        monkeypatch,
    )


def test_a_control_report_write_failing_part_way_leaves_the_old_or_the_new(control_results, tmp_path, monkeypatch):
    """control.json and the plot and video beside it, published as one folder."""
    from wm_deploy.control_report import write_report

    old, new = control_results
    check_writer_never_leaves_a_partial_file(
        lambda path: write_report(old, path, overwrite=True),
        lambda path: write_report(new, path, overwrite=True),
        tmp_path / "runs" / "control",
        tmp_path,
        monkeypatch,
    )


def test_a_triton_repository_write_failing_part_way_leaves_the_old_or_the_new(tiny_artifacts, tmp_path, monkeypatch):
    from wm_export.triton import write_triton_repository

    artifacts = tiny_artifacts("continuous")
    check_writer_never_leaves_a_partial_file(
        lambda path: write_triton_repository(artifacts, path, 8),
        lambda path: write_triton_repository(artifacts, path, 16),
        tmp_path / "serve" / "triton",
        tmp_path,
        monkeypatch,
    )


# --- fsync of file and folder ----------------------------------------------------------------------------------


@pytest.fixture
def events(monkeypatch):
    """Every os.fsync (the path its fd is open on) and os.replace, in order."""
    log: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(source, destination, **kwargs):
        log.append(("replace", str(source), str(destination)))
        return real_replace(source, destination, **kwargs)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to name the file an fsync'ed descriptor is open on")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, events):
    target = atomic_write_bytes(tmp_path / "out" / "metrics.jsonl", b"{}\n")
    replaced = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(target))
    temporary = events[replaced][1]
    assert Path(temporary).parent == target.parent and Path(temporary).name.startswith(".metrics.jsonl.")
    assert ("fsync", temporary) in events[:replaced]  # the content is on disk before the name points at it
    assert ("fsync", str(target.parent)) in events[replaced + 1 :]  # and the new name after
    assert ("fsync", str(tmp_path)) in events  # the folder `out` it created


def test_a_staged_folder_is_fsynced_whole_before_its_rename_and_its_parent_after(tmp_path, events):
    target = tmp_path / "report"
    with staged_dir(target) as folder:
        (folder / "report.json").write_text("{}\n")
        (folder / "plots").mkdir()
        (folder / "plots" / "a.png").write_bytes(b"png")
    replaced = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(target))
    staging = events[replaced][1]
    synced_before = {e[1] for e in events[:replaced] if e[0] == "fsync"}
    for name in ("report.json", "plots/a.png", "plots", ""):
        assert str(Path(staging) / name) in synced_before, name
    assert ("fsync", str(tmp_path)) in events[replaced + 1 :]


def test_replacing_a_folder_fsyncs_the_new_folder_and_the_parent(tmp_path, events):
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "old").write_text("old")
    new = tmp_path / "new"
    new.mkdir()
    (new / "file").write_text("new")
    replace_dir(new, tmp_path / "target")
    assert ("fsync", str(new / "file")) in events and ("fsync", str(tmp_path)) in events
    assert snapshot(tmp_path / "target") == {"file": b"new"}


# --- replace_dir: exchange, fallback, restore, crash -----------------------------------------------------------


def _folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "data.txt").write_text(text)
    (path / "sub").mkdir()
    (path / "sub" / "more.txt").write_text(text * 2)
    return path


@pytest.fixture(params=["exchange", "two renames"])
def how(request, monkeypatch):
    """Both ways replace_dir swaps folders: the atomic exchange (where this system offers it) and the
    two-rename fallback."""
    if request.param == "two renames":
        monkeypatch.setattr(wm_core.publish, "_exchange", lambda a, b: False)
    return request.param


def test_replace_dir_puts_the_new_folder_in_place_and_leaves_nothing_else(tmp_path, how):
    target = _folder(tmp_path / "target", "old")
    new = _folder(tmp_path / ".target.staging", "new")
    replace_dir(new, target)
    assert snapshot(target) == {"data.txt": b"new", "sub/more.txt": b"newnew"}
    assert sorted(os.listdir(tmp_path)) == ["target"]


def test_replace_dir_uses_the_atomic_exchange_where_linux_offers_it(tmp_path, monkeypatch):
    """With renameat2(RENAME_EXCHANGE) the target is never renamed away: there is no moment without it."""
    probe_a, probe_b = _folder(tmp_path / "a", "a"), _folder(tmp_path / "b", "b")
    if not wm_core.publish._exchange(probe_a, probe_b):
        pytest.skip("this kernel, C library or file system offers no renameat2(RENAME_EXCHANGE)")
    assert (probe_a / "data.txt").read_text() == "b"
    target = _folder(tmp_path / "target", "old")
    new = _folder(tmp_path / "new", "new")
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda s, d: renamed.append(str(s)) or real_replace(s, d))
    replace_dir(new, target)
    assert str(target) not in renamed and snapshot(target)["data.txt"] == b"new"


def test_replace_dir_whose_first_rename_fails_leaks_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(wm_core.publish, "_exchange", lambda a, b: False)
    target = _folder(tmp_path / "target", "old")
    new = _folder(tmp_path / "new", "new")
    faults = Faults("replace", 1)
    faults.install(monkeypatch)
    with pytest.raises(OSError, match=NO_SPACE):
        replace_dir(new, target)
    monkeypatch.undo()
    assert snapshot(target)["data.txt"] == b"old"
    assert sorted(os.listdir(tmp_path)) == ["new", "target"]  # `new` is the caller's to delete


def test_replace_dir_whose_second_rename_fails_restores_the_old_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(wm_core.publish, "_exchange", lambda a, b: False)
    target = _folder(tmp_path / "target", "old")
    with pytest.raises(OSError, match=NO_SPACE):
        with staged_dir(target) as folder:
            (folder / "data.txt").write_text("new")
            Faults("replace", 2).install(monkeypatch)
    monkeypatch.undo()
    assert snapshot(target) == {"data.txt": b"old", "sub/more.txt": b"oldold"}
    assert sorted(os.listdir(tmp_path)) == ["target"]


def test_replace_dir_whose_restore_fails_too_keeps_the_only_copy_and_the_next_writer_restores_it(tmp_path, monkeypatch):
    monkeypatch.setattr(wm_core.publish, "_exchange", lambda a, b: False)
    target = _folder(tmp_path / "target", "old")
    real_replace = os.replace
    calls = []

    def replace(source, destination):
        calls.append(source)
        if len(calls) >= 2:  # the new folder into place, then the old one back: both fail
            raise OSError(errno.ENOSPC, NO_SPACE)
        return real_replace(source, destination)

    with pytest.raises(OSError, match=NO_SPACE):
        with staged_dir(target) as folder:
            (folder / "data.txt").write_text("new")
            monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not target.exists()
    assert snapshot(aside_path(target)) == {"data.txt": b"old", "sub/more.txt": b"oldold"}  # never deleted
    assert restore_aside(target)
    assert snapshot(target) == {"data.txt": b"old", "sub/more.txt": b"oldold"}
    assert sorted(os.listdir(tmp_path)) == ["target"]


CRASH_BETWEEN_RENAMES = """
import os, sys
from pathlib import Path
import wm_core.publish
from wm_core.publish import replace_dir

wm_core.publish._exchange = lambda a, b: False  # the two-rename path, as on a system without the exchange
real_replace, renames = os.replace, []

def replace(source, destination):
    renames.append(source)
    if len(renames) == 2:
        os._exit(9)  # killed between the renames: no except, no finally runs
    return real_replace(source, destination)

os.replace = replace
replace_dir(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def _crash_between_renames(new: Path, target: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = textwrap.dedent(CRASH_BETWEEN_RENAMES)
    done = subprocess.run([sys.executable, "-c", script, str(new), str(target)], env=env, timeout=120)
    assert done.returncode == 9
    assert not target.exists() and aside_path(target).is_dir()  # the moment the crash left behind


def test_a_crash_between_the_renames_is_recovered_by_the_next_staged_dir(tmp_path):
    target = _folder(tmp_path / "target", "old")
    _crash_between_renames(_folder(tmp_path / "new", "new"), target)
    with staged_dir(target) as folder:
        assert snapshot(target)["data.txt"] == b"old"  # put back before anything else
        (folder / "data.txt").write_text("newer")
    assert snapshot(target) == {"data.txt": b"newer"}
    assert sorted(os.listdir(tmp_path)) == ["new", "target"]  # `new`: the staging a crash leaves, never read


def test_a_crash_between_the_renames_is_recovered_by_the_readers(tmp_path):
    """The artifact and store readers rename `.NAME.old` back when NAME is missing."""
    artifacts = tmp_path / "artifacts"
    write_manifest(artifacts, {"format": "wm-artifacts", "format_version": 2, "graphs": {}})
    _crash_between_renames(_folder(tmp_path / "new_artifacts", "new"), artifacts)
    assert load_manifest(artifacts)["format_version"] == 2
    store = tmp_path / "store"
    write_store(store, [("ep0", *_episode(0))])
    _crash_between_renames(_folder(tmp_path / "new_store", "new"), store)
    assert [e["name"] for e in read_index(store)["episodes"]] == ["ep0"]


def test_a_leftover_old_copy_beside_a_complete_target_is_deleted(tmp_path):
    """A crash after the new folder was in place but before the old copy was deleted."""
    target = _folder(tmp_path / "target", "new")
    _folder(aside_path(target), "old")
    with staged_dir(target) as folder:
        (folder / "data.txt").write_text("newer")
    assert sorted(os.listdir(tmp_path)) == ["target"]


# --- which folder a command may replace ---------------------------------------------------------------------------


def _listed(folder: Path) -> set[str]:
    return set(json.loads((folder / "marker.json").read_text()))


def _check(folder: Path, overwrite: bool) -> None:
    wm_core.publish.check_replaceable(folder, overwrite, "output folder", "marker.json", _listed)


def test_check_replaceable_passes_a_missing_or_empty_folder_and_an_own_one_with_overwrite(tmp_path):
    _check(tmp_path / "missing", overwrite=False)
    (tmp_path / "empty").mkdir()
    _check(tmp_path / "empty", overwrite=False)
    own = tmp_path / "own"
    (own / "sub").mkdir(parents=True)
    (own / "marker.json").write_text(json.dumps(["marker.json", "sub/a.bin"]))
    (own / "sub" / "a.bin").write_bytes(b"a")
    (own / "sub" / ".a.bin.k2j3h4_x.tmp").write_bytes(b"half")  # what an atomic_write cut short leaves
    with pytest.raises(FileExistsError, match=f"output folder {own} already exists; pass --overwrite"):
        _check(own, overwrite=False)
    _check(own, overwrite=True)


@pytest.mark.parametrize(
    "files, message",
    [
        ({"photo.jpg": "x"}, "it is not an output folder \\(no marker.json\\)"),
        ({"marker.json": "not json", "a.bin": "a"}, "its marker.json cannot be read \\(JSONDecodeError"),
        ({"marker.json": '["marker.json"]', "a.bin": "a"}, "it holds files its marker.json does not list \\(a.bin\\)"),
        (
            {"marker.json": '["marker.json"]', ".b.bin.x.tmp": "t"},
            "it holds files its marker.json does not list \\(.b.bin",
        ),
    ],
)
def test_check_replaceable_refuses_what_the_command_did_not_write_even_with_overwrite(tmp_path, files, message):
    folder = tmp_path / "out"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=f"refusing to replace {folder}: {message}"):
            _check(folder, overwrite)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        _check(tmp_path / "file", overwrite=True)


def test_check_replaceable_checks_the_folder_a_crash_left_aside(tmp_path):
    target = tmp_path / "out"
    aside_path(target).mkdir()
    (aside_path(target) / "photo.jpg").write_text("x")  # a replacement of a user's folder cut short
    with pytest.raises(FileExistsError, match="not an output folder"):
        _check(target, overwrite=True)
    assert (target / "photo.jpg").read_text() == "x"


def test_staged_dir_checks_again_before_it_replaces(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(FileExistsError, match="not an output folder"):
        with staged_dir(target, check=lambda: _check(target, overwrite=True)) as folder:
            (folder / "marker.json").write_text('["marker.json"]')
            target.mkdir()  # appears while the folder is being written
            (target / "photo.jpg").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in target.iterdir()] == ["photo.jpg"]
