"""`wm-export`: a thin click wrapper over `export_artifacts`; errors become one line and an exit code
(wm_core.errors)."""

from __future__ import annotations

from pathlib import Path

import click

from wm_core.errors import (
    EXIT_ERROR,
    EXIT_NO_TENSORRT,
    EXIT_OK,
    EXIT_PARITY,
    EXIT_USAGE,
    exit_codes_epilog,
    one_line_errors,
)
from wm_core.manifest import load_manifest

from .export import DEFAULT_FOLDER, export_artifacts
from .parity import ParityError, format_table
from .tensorrt_build import TensorRTUnavailableError


@click.command(epilog=exit_codes_epilog(EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_TENSORRT, EXIT_PARITY))
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help=f"Artifact folder. Default: {DEFAULT_FOLDER}/ beside the checkpoint.",
)
@click.option("--trt", is_flag=True, help="Also build TensorRT engines (*.plan); needs TensorRT and a GPU.")
@click.option(
    "--fp16/--fp32",
    "fp16",
    default=None,
    help="Precision of the TensorRT engines. Default: the checkpoint config's export.fp16 (false).",
)
@click.option(
    "--opt-batch",
    type=click.IntRange(min=1),
    default=None,
    help="TensorRT profile: batch size to tune for. Default: export.opt_batch (256).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=None,
    help="TensorRT profile: largest batch. Default: export.max_batch (4096).",
)
@click.option("--opset", type=int, default=None, help="ONNX opset (14-20). Default: export.opset (17).")
@click.option("--decoder/--no-decoder", default=None, help="Export the decoder too. Default: export.decoder (true).")
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Episode folder (*.npz, as written by wm-collect); frames of its validation split feed the "
    "parity check. Default: random frames.",
)
@click.option(
    "--triton",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write a Triton Inference Server model repository here (encoder/, prior_step/, decoder/).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT (and the Triton repository) if it is an earlier export's.")
@click.option("--force", is_flag=True, hidden=True, help="The old name of --overwrite.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@one_line_errors
def main(
    checkpoint: Path,
    out_dir: Path | None,
    trt: bool,
    fp16: bool | None,
    opt_batch: int | None,
    max_batch: int | None,
    opset: int | None,
    decoder: bool | None,
    data: Path | None,
    triton: Path | None,
    overwrite: bool,
    force: bool,
    progress: bool,
) -> None:
    """Export a checkpoint to an artifact folder: ONNX graphs (encoder, prior_step, decoder) with a dynamic
    batch axis, checked against the PyTorch model with onnxruntime, optional TensorRT engines, manifest.json.

    Defaults for the options come from the `export` section of the checkpoint's config (in parentheses: a
    default config's values). The TensorRT timing cache is kept in tensorrt_timing.cache beside the artifact
    folder and reused by later exports."""
    try:
        folder = export_artifacts(
            checkpoint,
            out_dir,
            trt=trt,
            fp16=fp16,
            opt_batch=opt_batch,
            max_batch=max_batch,
            opset=opset,
            decoder=decoder,
            overwrite=overwrite or force,
            data=data,
            progress=progress,
            triton=triton,
        )
    except ParityError as error:  # the table of what disagreed, then (one_line_errors) the error's line
        click.echo(format_table({error.backend: error.report}), err=True)
        raise
    except TensorRTUnavailableError as error:  # the ONNX artifacts were written: report them, then the error
        if error.artifacts is not None:
            _report(error.artifacts, triton)
        raise
    _report(folder, triton)


def _report(folder: Path, triton: Path | None = None) -> None:
    manifest = load_manifest(folder)
    reports = dict(manifest["parity"])
    if manifest["tensorrt"]:
        reports["tensorrt"] = manifest["tensorrt"]["parity"]
    click.echo(format_table(reports))
    click.echo(f"parity inputs: {manifest['parity_inputs']}")
    click.echo(f"wrote {folder}")
    if triton is not None:
        click.echo(f"wrote the Triton model repository {triton}")


if __name__ == "__main__":
    main()
