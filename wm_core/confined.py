"""File names read from a file (an artifact manifest, an episode store's index) that must name a file inside
the folder holding it: a plain name, no separators, no `..`, not absolute, and no symlink that resolves
outside the folder. Such files are then read once, through `read_confined`, so that what is checked is what is
used (docs/safety.md)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def plain_name_problem(name: object) -> str | None:
    """Why `name` is not a plain file name, or None."""
    if not isinstance(name, str) or not name:
        return f"not a file name ({type(name).__name__})"
    if "\x00" in name:
        return "it holds a NUL character"
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        return "it is an absolute path"
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        return "it holds a path separator"
    if name in (".", ".."):
        return f"{name!r} names a folder"
    return None


def confined_path(folder: str | Path, name: object, where: str, entry: str) -> Path:
    """`folder / name` after checking that `name` is a plain file name that stays inside `folder`; else a
    ValueError naming `where` (the manifest or index), the `entry` that holds the name, and why."""
    folder = Path(folder)
    problem = plain_name_problem(name)
    if problem is None:
        assert isinstance(name, str)  # plain_name_problem refuses anything else
        path = folder / name
        if path.is_symlink() and not path.resolve().is_relative_to(folder.resolve()):
            problem = f"it is a symlink resolving outside the folder (to {path.resolve()})"
        else:
            return path
    raise ValueError(f"{where}: entry {entry} names file {name!r}, refused: {problem}; files must lie in {folder}")


def read_confined(path: Path) -> bytes:
    """The bytes of the regular file `path` (checked by `confined_path`), read through its resolved name
    without following a symlink put there since: FileNotFoundError if it is missing, ValueError if it is not a
    regular file."""
    try:
        fd = os.open(path.resolve(), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is listed but missing") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        return file.read()
