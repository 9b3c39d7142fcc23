"""Publishing files so that a reader never sees half of one: one atomic single-file write and one staged
folder renamed into place. Every writer of the package (checkpoints, episodes, manifests, engines, the
TensorRT timing cache, export and evaluation folders) goes through these two, and a write they cannot finish
(a full disk, a missing permission, a read-only file system) comes out as a `WriteError` naming the file or
folder the caller asked for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import WriteError

# torch.save given a path rather than a file object reports a failed write with this message and no OSError.
TORCH_WRITE_FAILED = "PytorchStreamWriter failed writing file"


def write_failure(error: BaseException, path: str | Path, inside: Path | None = None) -> WriteError | None:
    """`error` as a WriteError naming `path` if it is a failed write, else None (re-raise it as it is).

    A failed write is an OSError from the operating system (its errno is set; the package's own
    FileNotFoundError("...") messages have none), a RuntimeError raised from or while handling one (torch.save
    turns a failed write of its file into one), or torch's own failed-write message. A WriteError that already
    names a file is kept, unless that file lies in the temporary folder `inside`, which the caller never named."""
    if isinstance(error, WriteError):
        if inside is None or not Path(error.filename).is_relative_to(inside):
            return None
        return WriteError(error.errno, error.strerror, str(path))
    cause = _os_error_behind(error) if isinstance(error, (OSError, RuntimeError)) else None
    if cause is not None:
        assert cause.errno is not None  # _os_error_behind returns only errors that carry one
        return WriteError(cause.errno, cause.strerror or os.strerror(cause.errno), str(path))
    if isinstance(error, RuntimeError) and TORCH_WRITE_FAILED in str(error):
        return WriteError(None, str(error).strip().splitlines()[0], str(path))
    return None


def _os_error_behind(error: BaseException) -> OSError | None:
    link: BaseException | None = error
    for _ in range(8):  # exception chains are short; the bound only guards against a cycle
        if link is None or (isinstance(link, OSError) and link.errno is not None):
            return link
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)
    return None


@contextlib.contextmanager
def naming_failed_writes(path: str | Path, inside: Path | None = None) -> Iterator[None]:
    """Re-raise a write that fails in the block (see `write_failure`) as a WriteError naming `path`."""
    try:
        yield
    except BaseException as error:
        failure = write_failure(error, path, inside)
        if failure is None:
            raise
        raise failure from error


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object], mode: int | None = None) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then rename it onto `path`: a crash or a full disk
    leaves the old file (or none), never a truncated one. `mode`: permission bits (mkstemp's are 0o600)."""
    path = Path(path)
    with naming_failed_writes(path):
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
    (`replace_dir`), on any error it is deleted and `target` is left as it was. A write failing in the block
    is a WriteError naming `target`."""
    target = Path(target)
    with naming_failed_writes(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        with naming_failed_writes(target, inside=staging):
            staging.chmod(0o755)  # mkdtemp makes it private; a published folder is meant to be read
            yield staging
            replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
