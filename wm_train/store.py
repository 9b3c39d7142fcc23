"""The episode store: episodes whose frames stay on disk and are read a window at a time.

A store is a folder:

    store.json                 {"format": "wm-episode-store", "format_version": 1, "frame_shape": [H, W, 3],
                                "action_mode": ..., "episodes": [{"name": ..., "frames": T, "arrays": [...]}, ...]}
    <name>.obs.npy             uint8 [T, H, W, 3], uncompressed
    <name>.action.npy          float32 [T, A] or int64 [T], as in the episode files
    <name>.<key>.npy           per-step arrays [T] kept with the episode (`reward`, `terminated`: what
                                model.heads trains on), listed per episode under "arrays"; absent in stores
                                converted from episodes without them
    meta.json                  the source folder's meta.json (wm_core.dataset_meta), when it has one

The per-step arrays and meta.json are optional additions to format version 1: a reader that predates them
ignores them, and a store without them reads as one whose episodes hold none.

Why this layout. Frames are the bulk (12 KiB each at 64x64); actions are a few bytes per frame and are read into
memory whole (the action codec is fitted on them, and the window sampler needs the episode lengths). An
uncompressed .npy per episode puts window t..t+L of an episode at one known byte range, so a window costs one
read of exactly its frames, and the files stay plain NumPy anyone can open. The frames are read with a plain
file read at an offset rather than through `np.load(mmap_mode="r")`: every page a memory map touches counts in
the process's resident memory until the kernel happens to reclaim it, so a trainer sampling windows all over a
large store would grow towards the store's size. Reads go through the OS page cache instead, which caches what
fits in free memory and is given back under pressure; the trainer holds only the batch it is assembling.
Chunked files decoded by worker processes would add a decoder and inter-process copies for no gain at this
frame size (a step's read is ~3 MiB, far below the cost of the step).

Every name in store.json must be a plain name: an episode's files must lie in the store's folder (no separators,
no `..`, not absolute, no symlink resolving outside it); `read_index` and `open_episode` refuse any other.

The episode order in store.json is the order of the `.npz` folder it was converted from, so the train/validation
split of a store equals that of its source folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from wm_core.confined import confined_path, plain_name_problem
from wm_core.dataset_meta import META
from wm_core.publish import check_replaceable, restore_aside, staged_dir

FORMAT = "wm-episode-store"
FORMAT_VERSION = 1
INDEX = "store.json"


def is_store(path: str | Path) -> bool:
    return (Path(path) / INDEX).is_file()


class DiskFrames:
    """The frames of one episode, uint8 [T, H, W, 3] in a .npy file, read on demand: `len()` and slicing
    `frames[start:end]` (a step of 1) give what the in-memory array would, as a fresh array."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(file)
            self.offset = file.tell()
        if dtype != np.uint8 or fortran_order or len(shape) != 4:
            raise ValueError(f"{path}: frames must be a C-ordered uint8 [T, H, W, 3] array, got {dtype} {shape}")
        self.shape = tuple(shape)
        self.dtype = np.dtype(np.uint8)
        self.frame_bytes = int(np.prod(shape[1:]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError(f"DiskFrames takes a contiguous slice, got {index!r}")
        start, stop, _ = index.indices(len(self))
        frames = np.empty((max(0, stop - start), *self.shape[1:]), dtype=np.uint8)
        with open(self.path, "rb", buffering=0) as file:
            file.seek(self.offset + start * self.frame_bytes)
            read = file.readinto(frames.data.cast("B"))
        if read != frames.nbytes:
            raise ValueError(f"{self.path}: truncated, expected {frames.nbytes} bytes at frame {start}, read {read}")
        return frames

    def __array__(self, dtype=None, copy=None):
        frames = self[:]
        return frames if dtype is None else frames.astype(dtype)


def write_store(
    target: str | Path,
    episodes: Iterable[tuple[str, np.ndarray, np.ndarray, dict[str, np.ndarray]]],
    files: dict[str, bytes] | None = None,
    overwrite: bool = False,
) -> int:
    """Write (name, obs uint8 [T, H, W, 3], action, per-step arrays by name) episodes as a store at `target`, one
    episode in memory at a time, with `files` (name -> content) beside store.json; the folder is built beside
    `target` and renamed into place when complete. An existing `target` is replaced only if it is a store
    holding nothing but its own files, and only with `overwrite` (`check_store_destination`). -> the number of
    episodes."""
    index = []
    frame_shape, action_mode = None, None
    check_store_destination(target, overwrite)
    with staged_dir(target, check=lambda: check_store_destination(target, overwrite)) as folder:
        for name, obs, action, per_step in episodes:
            mode = "discrete" if action.dtype.kind in "iu" else "continuous"
            if frame_shape is None:
                frame_shape, action_mode = list(obs.shape[1:]), mode
            if list(obs.shape[1:]) != frame_shape or mode != action_mode:
                raise ValueError(
                    f"{name}: frames {list(obs.shape[1:])} with {mode} actions, but the store's first episode "
                    f"has frames {frame_shape} with {action_mode} actions"
                )
            np.save(folder / f"{name}.obs.npy", np.ascontiguousarray(obs, dtype=np.uint8))
            np.save(folder / f"{name}.action.npy", action)
            for key, values in per_step.items():
                np.save(folder / f"{name}.{key}.npy", values)
            index.append({"name": name, "frames": len(obs), "arrays": sorted(per_step)})
        if not index:
            raise ValueError(f"no episodes to write to {target}")
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "frame_shape": frame_shape,
            "action_mode": action_mode,
            "episodes": index,
        }
        (folder / INDEX).write_text(json.dumps(meta, indent=1) + "\n")
        for file_name, content in (files or {}).items():
            (folder / file_name).write_bytes(content)
    return len(index)


def check_store_destination(target: str | Path, overwrite: bool) -> None:
    """Refuse to write a store at `target` where that would delete what the store's writer did not write: a
    folder that is no store, or a store holding files its store.json does not list; an earlier store is
    replaced only with `overwrite` (wm_core.publish.check_replaceable)."""
    check_replaceable(target, overwrite, "episode store", INDEX, store_files)


def store_files(path: str | Path) -> set[str]:
    """The files a store's writer put in the store at `path`: store.json, meta.json and every episode's files."""
    files = {INDEX, META}
    for episode in read_index(path)["episodes"]:
        suffixes = ["obs", "action", *episode.get("arrays", [])]
        files.update(f"{episode['name']}.{suffix}.npy" for suffix in suffixes)
    return files


def read_index(path: str | Path) -> dict:
    """store.json after checking its format and version, and that every episode name and array key in it is a
    plain name (ValueError naming the entry otherwise)."""
    if not Path(path).exists():
        restore_aside(path)  # a replacement of the store cut short by a crash
    file = Path(path) / INDEX
    if not file.is_file():
        raise FileNotFoundError(f"not an episode store: {file} is missing (convert a folder with `wm-store`)")
    meta = json.loads(file.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{file}: not an episode store (format {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file}: store format version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    episodes = meta.get("episodes")
    if not isinstance(episodes, list) or not all(isinstance(e, dict) for e in episodes):
        raise ValueError(f"{file}: `episodes` must be a list of episode entries, got {type(episodes).__name__}")
    for i, episode in enumerate(episodes):
        named = [(f"episodes[{i}].name", episode.get("name"))]
        named += [(f"episodes[{i}].arrays[{j}]", key) for j, key in enumerate(episode.get("arrays", []))]
        for entry, name in named:
            problem = plain_name_problem(name)
            if problem is not None:
                raise ValueError(f"{file}: entry {entry} names {name!r}, refused: {problem}; files must lie in {path}")
    return meta


def open_episode(path: str | Path, name: str) -> tuple[DiskFrames, np.ndarray]:
    """One episode of the store at `path`: its frames on disk and its actions in memory. ValueError if a file
    of it would lie outside the store."""
    obs, action = (_episode_file(path, name, suffix) for suffix in ("obs", "action"))
    return DiskFrames(obs.resolve()), np.load(action.resolve())


def per_step_path(path: str | Path, name: str, key: str) -> Path:
    """The file of episode `name`'s per-step array `key` in the store at `path` (it may not exist)."""
    return _episode_file(path, name, key).resolve()


def _episode_file(path: str | Path, name: str, suffix: str) -> Path:
    """`path/<name>.<suffix>.npy`, refused (ValueError naming store.json) unless it is a plain name in the store."""
    for entry, part in (("name", name), ("array", suffix)):
        problem = plain_name_problem(part)
        if problem is not None:
            raise ValueError(f"{Path(path) / INDEX}: episode {entry} {part!r} refused: {problem}")
    return confined_path(path, f"{name}.{suffix}.npy", str(Path(path) / INDEX), f"episode {name!r}")
