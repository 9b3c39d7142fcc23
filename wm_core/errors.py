"""The error every writer raises when the disk says no, and how a command-line tool shows any error: one line
that names the path and the cause, never a traceback."""

from __future__ import annotations


class WriteError(OSError):
    """Writing `filename` failed: the disk is full, permission is denied, the file system is read-only. Raised
    in place of the operating system's OSError (or torch's RuntimeError wrapping one) so that the message names
    what the caller asked to write rather than a temporary file; the original error is its `__cause__`."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def error_line(error: BaseException) -> str:
    """One line for a CLI: an operating-system error as 'PATH: cause', any other error's first line (some,
    like torch.load's unpickling errors, carry a multi-line explanation after it)."""
    if isinstance(error, OSError) and not isinstance(error, WriteError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
