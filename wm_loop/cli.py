"""`wm-loop`: the data loop of wm_loop.loop from the command line."""

from __future__ import annotations

import click

from wm_core.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, exit_codes_epilog, one_line_errors


@click.command(context_settings={"show_default": True}, epilog=exit_codes_epilog(EXIT_OK, EXIT_ERROR, EXIT_USAGE))
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
@click.option("--rounds", type=click.IntRange(min=0), default=None, help="Rounds after round 0 (loop.rounds).")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a config value, e.g. --set loop.episodes=8 or --set planner.horizon=10 (repeatable).",
)
@click.option("--resume", is_flag=True, help="Continue the loop in loop.out_dir where it stopped.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@one_line_errors
def loop_command(config_path, rounds, overrides, resume, progress):
    """Improve a world model with its own experience: train on the recorded episodes of CONFIG.yaml, then each
    round drive the environment with the planner (plus exploration noise), add the episodes, fine-tune, export and
    evaluate on fixed seeds. Writes curve.jsonl, curve.md and curve.png into loop.out_dir."""
    from .config import load_loop_config
    from .curve import table
    from .loop import run_loop

    overrides = (*overrides, *([f"loop.rounds={rounds}"] if rounds is not None else []))
    settings = load_loop_config(config_path, overrides)
    rows = run_loop(settings, resume=resume, progress=progress, log=lambda line: click.echo(line, err=True))
    click.echo(table(rows), nl=False)
    click.echo(f"wrote {settings.loop.out_dir}/curve.jsonl, curve.md and curve.png")


if __name__ == "__main__":
    loop_command()
