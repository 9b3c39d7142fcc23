"""Publishing files so that a reader never sees half of one: one atomic single-file write and one staged
folder renamed into place. Every writer of the package (checkpoints, episodes, manifests, engines, the
TensorRT timing cache, export and evaluation folders) goes through these two.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object], mode: int | None = None) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then rename it onto `path`: a crash or a full disk
    leaves the old file (or none), never a truncated one. `mode`: permission bits (mkstemp's are 0o600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    return atomic_write(path, lambda file: file.write(data), mode)


def replace_dir(new: Path, target: Path) -> None:
    """Rename the finished folder `new` to `target`. An existing `target` is moved aside first and deleted
    only once `new` is in place (put back if the rename fails), so `target` is never half-written."""
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, old / target.name)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old / target.name, target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """A fresh, readable folder beside `target` to write into; on a clean exit it replaces `target`
    (`replace_dir`), on any error it is deleted and `target` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a published folder is meant to be read
    try:
        yield staging
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
