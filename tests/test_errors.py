"""wm_core.errors, the one error convention of every command: a user's error is one line `Error: ...` and the
exit code EXIT_CODES states, click's usage errors keep 2, a bug keeps its traceback."""

from __future__ import annotations

import errno
import os
import re

import click
import pytest
from click.testing import CliRunner

from wm_core.errors import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_NO_TENSORRT,
    EXIT_PARITY,
    EXIT_USAGE,
    WriteError,
    one_line_errors,
)
from wm_core.tensorrt_engine import TensorRTUnavailableError
from wm_deploy.cli import control_command
from wm_export.cli import main as export_command
from wm_export.parity import ParityError
from wm_train.cli import collect_command, eval_command, store_command, train_command


def raising(error: BaseException) -> click.Command:
    @click.command()
    @click.option("--count", type=int, default=1)
    @one_line_errors
    def command(count):
        raise error

    return command


@pytest.mark.parametrize(
    "error, code",
    [
        (ValueError("bad value\nand an explanation below it"), EXIT_ERROR),
        (FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "missing.pt"), EXIT_ERROR),
        (WriteError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out/"), EXIT_ERROR),
        (ImportError("onnxruntime is not installed"), EXIT_ERROR),
        (TensorRTUnavailableError("TensorRT is not installed"), EXIT_NO_TENSORRT),
        (ParityError("onnxruntime", ["encoder.z_mean 1 > 1e-4"], {}), EXIT_PARITY),
    ],
)
def test_a_users_error_is_one_line_with_its_exit_code(error, code):
    result = CliRunner().invoke(raising(error), [])
    assert result.exit_code == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.stderr


def test_a_bug_keeps_its_traceback():
    result = CliRunner().invoke(raising(KeyError("a bug")), [])
    assert isinstance(result.exception, KeyError)


def test_a_bad_command_line_is_clicks_usage_error():
    result = CliRunner().invoke(raising(ValueError("not reached")), ["--count", "many"])
    assert result.exit_code == EXIT_USAGE and "not reached" not in result.stderr


@pytest.mark.parametrize(
    "command", [train_command, collect_command, eval_command, store_command, export_command, control_command]
)
def test_every_command_lists_documented_exit_codes(command):
    help_text = CliRunner().invoke(command, ["--help"]).stdout
    listed = [int(code) for code in re.findall(r"^ +(\d) +\S", help_text.split("Exit codes:")[1], re.MULTILINE)]
    assert listed[:3] == [0, EXIT_ERROR, EXIT_USAGE] and set(listed) <= set(EXIT_CODES)
