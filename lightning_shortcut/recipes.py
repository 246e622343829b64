"""The YAML recipes: one per experiment of the paper, and how the CLI finds them.

The grid is dataset (each entry of :data:`~lightning_shortcut.data.DATASETS`, whose ``recipe``
holds its settings) x shortcut depth (1, 2, 3) x init (zero, small, xavier, orthogonal) x branch
(linear, relu). The files in ``recipes/`` are written by :func:`write_recipes` (run
``python -m lightning_shortcut.recipes``) and a test keeps them in sync with :func:`recipe_text`.
A recipe is given to the CLI by path or by name (``digits/shortcut2_small_relu``); names resolve in
the checkout's ``recipes/`` or, in an installed wheel, in the package's copy.
"""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

from lightning_shortcut.data.registry import DATASETS
from lightning_shortcut.init import INIT_STRATEGIES

__all__ = [
    "DATASETS",
    "INITS",
    "MEASUREMENTS",
    "MONITOR_ARGS",
    "list_recipes",
    "monitor_every_n_steps",
    "recipe_text",
    "recipes_dir",
    "resolve_recipe",
    "write_recipes",
]

#: The recipes' initializations by name (the same table the study reads).
INITS = INIT_STRATEGIES
#: Every recipe's HessianEigenvalueMonitor arguments but its schedule (:func:`monitor_every_n_steps`).
#: 512 samples, where the monitor's default is 256: the recipes reproduce the study's measurements
#: (``StudyConfig.hessian_samples``), and the residual Hessian of a small-init stack is cheap enough
#: per product to halve the sampling error's variance; a user's own model starts from 256.
MONITOR_ARGS = {
    "params": "residual",
    "num_samples": 512,
    "at_fit_start": True,
    "top_k": 1,
    "bottom_k": 1,
    "tol": 0.01,
}
#: Measurements after the one at the initial point in a recipe's run: its curves have one more point.
MEASUREMENTS = 20
_IDX_COST = (
    "Estimated on one CPU core (random data of this shape): a measurement, 22-88 Hessian-vector "
    "products on 512 samples, costs as much as 50-190 training steps (about 110 on average): "
    "about +55% of the training time."
)
#: What the schedule costs on each dataset's recipes (``shortcut2_small_relu``, ``tol=1e-2``, the
#: monitor's warm starts, torch 2.14.1), for the recipe's comment.
MEASUREMENT_COST = {
    "digits": "Measured on 2 CPU cores (shortcut2_small_relu): its 21 measurements, 8-96 (mean 37) "
    "Hessian-vector products on 512 samples each, take about 17 s in a run that trains in about "
    "14 s: the run takes about twice as long.",
    "mnist": _IDX_COST,
    "fashion_mnist": _IDX_COST,
    "cifar10": "Estimated from an H200 (a cold measurement about 4 s, 30 epochs about 160 s of "
    "training): at most about +50%; on a CPU one measurement takes minutes.",
}
#: The grid: every registered dataset x these shortcut depths x :data:`INITS` x these branches.
SHORTCUT_DEPTHS = (1, 2, 3)
ACTIVATIONS = ("linear", "relu")


def _yaml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return str(value)


def _comment(text: str) -> str:
    """``text`` as YAML comment lines."""
    return "\n".join(f"# {line}" for line in textwrap.wrap(text, width=98, break_on_hyphens=False))


def recipe_name(dataset: str, shortcut_depth: int, init: str, activation: str) -> str:
    return f"{dataset}/shortcut{shortcut_depth}_{init}_{activation}"


def monitor_every_n_steps(dataset: str) -> int:
    """The recipes' fixed schedule on ``dataset``: :data:`MEASUREMENTS` measurements spread over
    the run's ``max_epochs * steps_per_epoch`` steps (a fixed schedule, so no time budget cuts it)."""
    spec = DATASETS[dataset].recipe
    return max(1, spec.max_epochs * spec.steps_per_epoch // MEASUREMENTS)


def recipe_text(dataset: str, shortcut_depth: int, init: str, activation: str) -> str:
    """The YAML of one experiment."""
    info = DATASETS[dataset]
    spec = info.recipe
    every = monitor_every_n_steps(dataset)
    steps = spec.max_epochs * spec.steps_per_epoch
    schedule = (
        f"The Hessian monitor measures at the start and every {every} steps: a curve of "
        f"{1 + steps // every} points over the {steps} steps of {spec.max_epochs} epochs. "
        + MEASUREMENT_COST.get(dataset, "Its cost on this dataset is not measured.")
    )
    init_class, init_args = INITS[init]
    name = recipe_name(dataset, shortcut_depth, init, activation)
    init_block = "".join(f"\n            {k}: {_yaml_value(v)}" for k, v in init_args.items())
    init_section = f"\n          init_args:{init_block}" if init_args else ""
    data_block = "".join(f"\n    {k}: {_yaml_value(v)}" for k, v in spec.data_args.items())
    monitor_args = {"every_n_steps": every, **MONITOR_ARGS}
    monitor_block = "".join(f"\n        {k}: {_yaml_value(v)}" for k, v in monitor_args.items())
    return f"""\
# Demystifying ResNet (arXiv 1611.01186): shortcut depth {shortcut_depth}, {init} init, {activation} branches, {dataset}.
# Generated by `python -m lightning_shortcut.recipes`; run with
#   lightning-shortcut fit --config {name}
{_comment(schedule)}
seed_everything: 0
trainer:
  max_epochs: {spec.max_epochs}
  accelerator: auto
  devices: 1
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args:
      save_dir: lightning_logs
      name: {name}
  callbacks:
    - class_path: lightning_shortcut.callbacks.ResidualInit
      init_args:
        strategy:
          class_path: lightning_shortcut.{init_class.__name__}{init_section}
    - class_path: lightning_shortcut.callbacks.HessianEigenvalueMonitor
      init_args:{monitor_block}
model:
  class_path: lightning_shortcut.models.ResidualClassifier
  init_args:
    input_shape: {_yaml_value(info.input_shape)}
    num_classes: {info.num_classes}
    width: {spec.width}
    num_units: {spec.num_units}
    shortcut_depth: {shortcut_depth}
    layer: {info.layer}
    activation: {"null" if activation == "linear" else activation}
    optimizer: sgd
    lr: {spec.lr}
    momentum: 0.9
data:
  class_path: lightning_shortcut.data.{info.datamodule.__name__}
  init_args:{data_block}
"""


def all_recipes() -> list[tuple[str, int, str, str]]:
    """Every (dataset, shortcut depth, init, activation) of the grid."""
    return list(itertools.product(DATASETS, SHORTCUT_DEPTHS, INITS, ACTIVATIONS))


def recipes_dir() -> Path:
    """The recipes folder: the checkout's ``recipes/`` or the wheel's copy, ``lightning_shortcut/_recipes``."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_recipes", package.parent / "recipes"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"No recipes folder next to {package}.")


def list_recipes() -> list[str]:
    """Names of the shipped recipes, such as ``digits/shortcut2_small_relu``."""
    root = recipes_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.glob("*/*.yaml"))


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe's path from an existing path or a shipped recipe's name (``.yaml`` optional).

    Raises:
        FileNotFoundError: naming the recipes folder and how to list the names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    root = recipes_dir()
    for candidate in (root / name_or_path, root / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{name_or_path!r} is neither a file nor a recipe in {root}; "
        "`lightning-shortcut recipes` lists the names."
    )


def write_recipes(root: Path) -> list[Path]:
    """Write every recipe under ``root`` and return the paths."""
    written = []
    for dataset, depth, init, activation in all_recipes():
        path = root / f"{recipe_name(dataset, depth, init, activation)}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(recipe_text(dataset, depth, init, activation))
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "recipes"
    print(f"wrote {len(write_recipes(target))} recipes to {target}")
