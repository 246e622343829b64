"""``lightning-shortcut``: LightningCLI over the models, datamodules and callbacks of this package,
plus ``recipes`` (list the shipped recipes) and ``plot`` (a run's curves); see docs/recipes.md."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_shortcut.recipes import recipe_listing, resolve_recipe

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI

__all__ = ["ShortcutCLI", "cli", "main"]  # noqa: F822 (ShortcutCLI: module __getattr__)


def _resolve_configs(args: Sequence[str]) -> list[str]:
    resolved = list(args)
    for index, arg in enumerate(resolved):
        if arg in ("--config", "-c") and index + 1 < len(resolved):
            resolved[index + 1] = str(resolve_recipe(resolved[index + 1]))
        elif arg.startswith("--config="):
            resolved[index] = "--config=" + str(resolve_recipe(arg.split("=", 1)[1]))
    return resolved


@functools.cache
def _shortcut_cli_class() -> type[LightningCLI]:
    # imported on first use: `recipes` and `plot` need no Lightning, which takes seconds to import
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    class ShortcutCLI(LightningCLI):
        """LightningCLI that accepts recipe names for ``--config`` (from the command line or ``args``)."""

        def parse_arguments(
            self, parser: LightningArgumentParser, args: Sequence[str] | None
        ) -> None:
            # `args` and sys.argv are one command line here (LightningCLI warns when both are set)
            command_line = sys.argv[1:] if args is None else args
            self.config = parser.parse_args(_resolve_configs(command_line))

    ShortcutCLI.__module__, ShortcutCLI.__qualname__ = __name__, "ShortcutCLI"
    return ShortcutCLI


def __getattr__(name: str) -> Any:
    if name != "ShortcutCLI":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _shortcut_cli_class()  # built once: the function caches it


def cli(args: Sequence[str] | None = None) -> LightningCLI:
    """Build and run the LightningCLI on ``args`` (default: the command line); returns it."""
    import lightning.pytorch as pl

    return _shortcut_cli_class()(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if args is None else list(args),
        save_config_kwargs={"overwrite": True},
    )


def _print_lines(lines: Sequence[str]) -> None:
    """Print, and exit quietly when the reader closes the pipe (``lightning-shortcut recipes | head``)."""
    try:
        print("\n".join(lines))
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit either
        sys.exit(0)


def _plot(args: Sequence[str]) -> None:
    from lightning_shortcut.plot import drawn_series, load_hessian_metrics, plot_hessian_metrics
    from lightning_shortcut.plot_curvature import plot_curvature_figures
    from lightning_shortcut.run_log import read_run

    parser = argparse.ArgumentParser(
        prog="lightning-shortcut plot",
        description="Draw a run's hessian/* curves: the extreme eigenvalues with their standard "
        "errors as error bars, the condition number (resolved values) and the stability ratio "
        "with the edge at 1 (both on log axes). Given a run's folder, its version_N folders (a run "
        "resumed from a checkpoint logs into a new one) are merged by step, a version that starts "
        "at or before the previous one's first step starting a new run (the versions before it "
        "left out); given a version folder or a file, that alone. The files read are printed. Per-"
        "block metrics (the monitor's `blocks`) also give OUT_blocks (a heatmap above 8 blocks), "
        "density snapshots (hessian_density.csv) OUT_density.",
    )
    parser.add_argument(
        "source",
        help="a run's folder (its version_* merged), a version folder, a CSVLogger metrics.csv or "
        "a TensorBoard event file; a folder above runs: the run of the newest log below it",
    )
    parser.add_argument(
        "--out",
        help="the image to write (default: hessian.png in the source folder, or next to the "
        "source file)",
    )
    parser.add_argument("--prefix", default="hessian/", help="the monitor's log_prefix")
    parser.add_argument("--title", default=None)
    options = parser.parse_args(args)
    try:
        run = read_run(options.source)
        series = load_hessian_metrics(run, options.prefix)
        title = options.title or options.source
        if options.out is None:  # with the run's logs, not wherever the command was typed
            source = Path(options.source)
            options.out = (source if source.is_dir() else source.parent) / "hessian.png"
        # the run's steps, not only the measured ones
        out = plot_hessian_metrics(series, options.out, title=title, steps=run.step_range)
        curvature = plot_curvature_figures(run, series, options.out, title=title)
    except (FileNotFoundError, ValueError, ImportError) as error:
        parser.exit(2, f"lightning-shortcut plot: error: {error}\n")
    print(run.describe())
    for note in run.notes:
        print(f"note: {note}")
    print(f"wrote {out} ({', '.join(drawn_series(series))})")
    for path, drawn in curvature:
        print(f"wrote {path} ({', '.join(drawn)})")


def main(args: Sequence[str] | None = None) -> None:
    """Console entry point (``args`` default to the command line): ``recipes``, ``plot``, or
    LightningCLI's ``fit``, ``validate``, ``test`` and ``predict``."""
    arguments = list(sys.argv[1:] if args is None else args)
    if arguments[:1] == ["recipes"]:
        _print_lines(recipe_listing())
    elif arguments[:1] == ["plot"]:
        _plot(arguments[1:])
    else:
        cli(args)


if __name__ == "__main__":
    main()
