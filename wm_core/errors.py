"""How every command-line tool ends: the exit codes (stated once, in `EXIT_CODES`), the errors a user can act on,
and the decorator that turns one of them into a single line `Error: <message>` on stderr, never a traceback.

Every command (wm-train, wm-collect, wm-eval, wm-store, wm-export, wm-control) is wrapped in `one_line_errors`:
- ValueError, OSError (FileNotFoundError, a full disk, a folder that may not be written: `WriteError`),
  ImportError (a missing optional dependency) and this package's own errors (`WmError`) print one line and exit
  with the error's code: `WmError.exit_code`, else EXIT_ERROR;
- click's usage errors (an unknown option, a missing argument, a value of the wrong type) keep click's own
  message and EXIT_USAGE;
- anything else is a bug: its traceback is shown.
"""

from __future__ import annotations

import functools
import sys
import textwrap
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import click

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_TENSORRT = 3
EXIT_PARITY = 4

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_ERROR: "bad input or a failed write: a missing or unreadable file, a bad config, a model that does not fit "
    "the environment, a full disk, a folder that may not be written, a failed TensorRT build",
    EXIT_USAGE: "bad command line: an unknown option, a missing argument, an option's value of the wrong type or "
    "out of its range",
    EXIT_NO_TENSORRT: "TensorRT or a CUDA device missing (wm-export: the ONNX artifacts are still written)",
    EXIT_PARITY: "parity check failed: an exported graph disagrees with the PyTorch model (nothing written)",
}
"""exit code -> what it means, for every command; a command's --help lists the codes it can return"""


class WmError(Exception):
    """An error of this package that a user can act on (a TensorRT that cannot be used, a failed parity check):
    a command prints its message in one line and exits with `exit_code`."""

    exit_code: int = EXIT_ERROR


class WriteError(OSError):
    """Writing `filename` failed: the disk is full, permission is denied, the file system is read-only. Raised
    in place of the operating system's OSError (or torch's RuntimeError wrapping one) so that the message names
    what the caller asked to write rather than a temporary file; the original error is its `__cause__`."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


USER_ERRORS = (ValueError, OSError, ImportError, WmError)
"""what a command reports in one line; OSError covers FileNotFoundError, FileExistsError and WriteError"""


def exit_code(error: BaseException) -> int | None:
    """The code a command exits with on `error`; None for a bug, whose traceback is shown."""
    if isinstance(error, WmError):
        return error.exit_code
    return EXIT_ERROR if isinstance(error, USER_ERRORS) else None


def error_line(error: BaseException) -> str:
    """One line for a CLI: an operating-system error as 'PATH: cause', any other error's first line (some,
    like torch.load's unpickling errors, carry a multi-line explanation after it)."""
    if isinstance(error, OSError) and not isinstance(error, WriteError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def exit_codes_epilog(*codes: int) -> str:
    """The 'Exit codes' paragraph of a command's --help: `codes` (each a key of EXIT_CODES), one entry each."""
    entries = [
        textwrap.fill(EXIT_CODES[code], 78, initial_indent=f"  {code}  ", subsequent_indent=" " * 5) for code in codes
    ]
    return "\b\nExit codes:\n" + "\n".join(entries)  # \b: click keeps these lines as they are


Command = TypeVar("Command", bound=Callable[..., Any])


def one_line_errors(command: Command) -> Command:
    """Wrap a click command's function: an error a user can act on becomes one line `Error: <message>` on
    stderr and its exit code (see the module docstring); a warning becomes one line `warning: ...`."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        warnings.showwarning = lambda message, category, *_: click.echo(
            f"warning: {message} ({category.__name__})", err=True
        )
        warnings.filterwarnings("default", category=DeprecationWarning, module="wm_")  # ours, not libraries'
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as error:
            code = exit_code(error)
            assert code is not None  # every USER_ERRORS has one
            click.echo(f"Error: {error_line(error)}", err=True)
            sys.exit(code)

    return wrapper  # type: ignore[return-value]
