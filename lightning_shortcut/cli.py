"""``lightning-shortcut``: LightningCLI over the models, datamodules and callbacks of this package.

Usage::

    lightning-shortcut fit --config digits/shortcut2_small_relu      # a shipped recipe, by name
    lightning-shortcut fit --config path/to/recipe.yaml --trainer.max_epochs 5
    lightning-shortcut recipes                                       # list the shipped recipes

Models and datamodules are chosen by class path (``--model lightning_shortcut.models.ResidualClassifier``)
and callbacks are configured in YAML, as with any LightningCLI.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

from lightning_shortcut.recipes import list_recipes, resolve_recipe

__all__ = ["cli", "main"]


def _resolve_configs(args: list[str]) -> list[str]:
    resolved = list(args)
    for index, arg in enumerate(resolved):
        if arg in ("--config", "-c") and index + 1 < len(resolved):
            resolved[index + 1] = str(resolve_recipe(resolved[index + 1]))
        elif arg.startswith("--config="):
            resolved[index] = "--config=" + str(resolve_recipe(arg.split("=", 1)[1]))
    return resolved


def cli(args: Sequence[str]) -> LightningCLI:
    """Build and run the LightningCLI on ``args`` (recipe names resolved); returns it."""
    return LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=_resolve_configs(list(args)),
        save_config_kwargs={"overwrite": True},
    )


def main(args: Sequence[str] | None = None) -> None:
    """Console entry point: ``args`` default to ``sys.argv[1:]``; ``recipes`` lists the recipes."""
    arguments = list(sys.argv[1:] if args is None else args)
    if arguments[:1] == ["recipes"]:
        print("\n".join(list_recipes()))
        return
    cli(arguments)


if __name__ == "__main__":
    main()
