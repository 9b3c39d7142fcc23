"""Publishing files so that a reader never sees half of one: one atomic single-file write and one staged
folder renamed into place. Every writer of the package (checkpoints, episodes, manifests, engines, the
TensorRT timing cache, export and evaluation folders) goes through these two, and a write they cannot finish
(a full disk, a missing permission, a read-only file system) comes out as a `WriteError` naming the file or
folder the caller asked for.

Durability (docs/safety.md): a file is written to a temporary file in the target's folder, flushed and
fsync'ed, renamed onto the target, and the folder is fsync'ed, so that once a writer returns the new content
survives a power loss; before it returns, a power loss leaves the old content or the new, never a mix. A
staged folder has every file and folder in it fsync'ed before it is renamed into place, and its parent after.

Replacing a folder (`replace_dir`) swaps the two atomically where Linux offers renameat2(RENAME_EXCHANGE);
elsewhere the old folder is renamed aside to `.NAME.old` and the new one renamed into place. A crash between
those two renames leaves `NAME` missing and `.NAME.old` complete: the next `replace_dir` or `staged_dir` on
`NAME`, and the readers of artifact folders and episode stores (`restore_aside`), rename it back first.

Whether a folder may be replaced at all (`check_replaceable`) is one convention for every command
(docs/cli.md): only a folder the command wrote itself, which it knows by its marker file, holding nothing that
marker does not list, and only with `--overwrite`; an empty folder is written into. Nothing a command did not
write is ever deleted or overwritten.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
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


def fsync_dir(folder: str | Path) -> None:
    """fsync the folder itself, so that the names renamed or created in it survive a power loss. Skipped only
    where the platform cannot: no O_DIRECTORY (Windows), or a file system that refuses fsync on a folder."""
    flags = getattr(os, "O_DIRECTORY", None)
    if flags is None:
        return
    fd = os.open(folder, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (deepest first), and `folder` itself."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def _make_folder(folder: Path) -> None:
    """mkdir -p `folder`, fsync'ing the parent of each folder it creates."""
    missing = []
    for parent in (folder, *folder.parents):
        if parent.is_dir():
            break
        missing.append(parent)
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
        fsync_dir(created.parent)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object], mode: int | None = None) -> Path:
    """Call `write(file)` on a temporary file beside `path`, fsync it, rename it onto `path` and fsync the
    folder: a crash or a full disk leaves the old file (or none), never a truncated one, and once this returns
    the new file survives a power loss. `mode`: permission bits (mkstemp's are 0o600)."""
    path = Path(path)
    with naming_failed_writes(path):
        _make_folder(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as file:
                write(file)
                file.flush()
                os.fsync(file.fileno())
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    return atomic_write(path, lambda file: file.write(data), mode)


def aside_path(target: str | Path) -> Path:
    """Where `replace_dir` keeps the old `target` while the new one is renamed into place: `.NAME.old`."""
    target = Path(target)
    return target.parent / f".{target.name}.old"


def restore_aside(target: str | Path) -> bool:
    """Finish what a crash inside `replace_dir` left: with `target` missing, rename `.NAME.old` back to it (->
    True); with `target` present, a `.NAME.old` beside it is the replaced copy whose deletion was cut short, and
    is deleted. Called by `replace_dir`, `staged_dir` and the readers of artifact folders and stores."""
    target = Path(target)
    aside = aside_path(target)
    if not aside.is_dir() or aside.is_symlink():
        return False
    if target.exists() or target.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
        return False
    os.replace(aside, target)
    fsync_dir(target.parent)
    return True


RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


@functools.cache
def _renameat2():
    return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names `a` and `b` in one step (Linux renameat2 RENAME_EXCHANGE) -> False where the kernel,
    C library or file system does not offer it."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_dir(new: Path, target: Path) -> None:
    """Rename the finished folder `new` to `target`, everything in it fsync'ed first and the parent after.

    An existing `target` is swapped with `new` atomically where the platform can (`_exchange`); otherwise it is
    renamed aside to `.NAME.old`, `new` is renamed into place, and the old copy is deleted only then. If that
    second rename fails the old copy is renamed back; if even that fails it stays at `.NAME.old`, where
    `restore_aside` finds it. `target` is therefore never half-written and its only copy is never deleted."""
    new, target = Path(new), Path(target)
    restore_aside(target)
    _fsync_tree(new)
    if not (target.exists() or target.is_symlink()):
        os.replace(new, target)
        fsync_dir(target.parent)
        return
    aside = aside_path(target)
    if _exchange(new, target):
        with contextlib.suppress(OSError):
            os.replace(new, aside)  # the old copy, now at `new`: to the name restore_aside cleans up after a crash
        shutil.rmtree(new, ignore_errors=True)
    else:
        os.replace(target, aside)
        try:
            os.replace(new, target)
        except BaseException:
            os.replace(aside, target)  # if this fails too, the old copy stays at `aside` for restore_aside
            raise
    try:
        fsync_dir(target.parent)
    finally:  # the new folder is in place: the old copy is no longer the only one
        shutil.rmtree(aside, ignore_errors=True)


OVERWRITE_FLAG = "--overwrite"
"""the one option with which every command replaces an output folder it wrote before"""


def check_replaceable(
    target: str | Path, overwrite: bool, what: str, marker: str, owned: Callable[[Path], Iterable[str]]
) -> None:
    """Refuse (FileExistsError) to replace `target` unless nothing would be lost:
    - a missing `target` or an empty folder may be written;
    - a folder whose `marker` file (relative path) is missing, or that `owned` cannot read, is not this
      command's: refused, even with `overwrite`;
    - a folder holding a file that `owned(target)` (the relative paths the marker lists, marker included) does
      not name is refused, even with `overwrite`, naming the file; leftovers of an `atomic_write` cut short
      (`.NAME.*.tmp` beside a listed NAME) count as listed;
    - any other folder is one this command wrote, and is replaced only with `overwrite`.
    `what` names the kind of folder in the messages ("artifact folder", "episode store")."""
    target = Path(target)
    restore_aside(target)  # a replacement cut short: the old folder is what is checked
    if not (target.exists() or target.is_symlink()):
        return
    if not target.is_dir() or target.is_symlink():
        raise FileExistsError(f"{what} path {target} exists and is not a folder")
    present = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if not p.is_dir() or p.is_symlink())
    if not present:
        return
    elsewhere = "; move it away or choose another output folder"
    if not (target / marker).is_file():
        raise FileExistsError(f"refusing to replace {target}: it is not {_article(what)} (no {marker}){elsewhere}")
    try:
        listed = set(owned(target))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FileExistsError(
            f"refusing to replace {target}: its {marker} cannot be read ({type(error).__name__}: {error}){elsewhere}"
        ) from None
    unlisted = [name for name in present if name not in listed and not _leftover_of(name, listed)]
    if unlisted:
        shown = ", ".join(unlisted[:3]) + (f" and {len(unlisted) - 3} more" if len(unlisted) > 3 else "")
        raise FileExistsError(
            f"refusing to replace {target}: it holds files its {marker} does not list ({shown}){elsewhere}"
        )
    if not overwrite:
        raise FileExistsError(f"{what} {target} already exists; pass {OVERWRITE_FLAG} to replace it")


def _article(what: str) -> str:
    return f"an {what}" if what[:1] in "aeiou" else f"a {what}"


def _leftover_of(name: str, listed: set[str]) -> bool:
    """Whether `name` is the temporary file of an `atomic_write` of a listed file (`.NAME.<random>.tmp`)."""
    folder, _, base = name.rpartition("/")
    match = re.fullmatch(r"\.(.+)\.[^./]+\.tmp", base)
    return match is not None and (f"{folder}/{match[1]}" if folder else match[1]) in listed


@contextlib.contextmanager
def staged_dir(target: str | Path, check: Callable[[], object] | None = None) -> Iterator[Path]:
    """A fresh, readable folder beside `target` to write into; on a clean exit it replaces `target`
    (`replace_dir`: its files fsync'ed, then renamed), on any error it is deleted and `target` is left as it
    was. A write failing in the block is a WriteError naming `target`. `check` (a `check_replaceable` of the
    caller's) runs again just before the replacement, for what appeared at `target` while the block ran."""
    target = Path(target)
    with naming_failed_writes(target):
        restore_aside(target)
        _make_folder(target.parent)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        with naming_failed_writes(target, inside=staging):
            staging.chmod(0o755)  # mkdtemp makes it private; a published folder is meant to be read
            yield staging
            if check is not None:
                check()
            replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
