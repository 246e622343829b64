"""The YAML recipes: one per experiment of the paper (docs/recipes.md), and how the CLI finds them.

:func:`write_recipes` writes ``recipes/`` (``python -m lightning_shortcut.recipes``); a test
keeps it in sync with :func:`recipe_text`.
"""

from __future__ import annotations

import importlib
import itertools
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_shortcut.data.registry import DATASETS
    from lightning_shortcut.init import INIT_STRATEGIES as INITS

__all__ = [
    "DATASETS",
    "EXACT_ZERO_INITS",
    "INITS",
    "MEASUREMENTS",
    "MONITOR_ARGS",
    "SADDLE_TAG",
    "is_saddle_recipe",
    "list_recipes",
    "monitor_every_n_steps",
    "recipe_listing",
    "recipe_text",
    "recipes_dir",
    "resolve_recipe",
    "write_recipes",
]

# imported on first use (PEP 562), here too: they import torch, which listing recipes does not need
_LAZY = {
    "DATASETS": ("lightning_shortcut.data.registry", "DATASETS"),
    "INITS": ("lightning_shortcut.init", "INIT_STRATEGIES"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    globals()[name] = getattr(importlib.import_module(module), attribute)
    return globals()[name]


#: The :data:`INITS` whose branch weights start at exactly zero (``ZeroInit(scale=0.0)``): a saddle
#: the branches never leave where the shortcut depth is 2 or more (:func:`is_saddle_recipe`).
EXACT_ZERO_INITS = ("zero",)
#: Every recipe's HessianEigenvalueMonitor arguments but its schedule (:func:`monitor_every_n_steps`):
#: 512 samples, as the study's ``hessian_samples``: twice the monitor's default, cheap here.
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


def _block(mapping: Mapping[str, object], indent: int) -> str:
    """``mapping``'s items as YAML lines, each after a line break and ``indent`` spaces."""
    return "".join(f"\n{' ' * indent}{k}: {_yaml_value(v)}" for k, v in mapping.items())


def _comment(text: str) -> str:
    """``text`` as YAML comment lines."""
    return "\n".join(f"# {line}" for line in textwrap.wrap(text, width=98, break_on_hyphens=False))


def recipe_name(dataset: str, shortcut_depth: int, init: str, activation: str) -> str:
    return f"{dataset}/shortcut{shortcut_depth}_{init}_{activation}"


# a shipped recipe's name, as `recipe_name` writes it
_NAME = re.compile(
    r"(?P<dataset>[^/]+)/shortcut(?P<depth>\d+)_(?P<init>[a-z]+)_(?P<activation>[a-z]+)"
)
#: The listing's tag beside a recipe where :func:`is_saddle_recipe` holds.
SADDLE_TAG = "[saddle: zero gradient, branches never train]"
_SADDLE_LEGEND = (
    "[saddle] exact zero init with shortcut depth >= 2: the zero point is a saddle where every "
    "branch weight gets exactly zero gradient, so the branches never move and only the input "
    "projection and the head train. These recipes show the Hessian at the paper's zero point; to "
    "train from near zero, use the matching *_small_* recipe."
)


def is_saddle_recipe(shortcut_depth: int, init: str) -> bool:
    """Whether a recipe starts at a saddle its branches cannot leave: an exact zero init
    (:data:`EXACT_ZERO_INITS`) with ``shortcut_depth >= 2``, every branch gradient exactly zero."""
    return init in EXACT_ZERO_INITS and shortcut_depth >= 2


def _saddle_note(dataset: str, shortcut_depth: int, activation: str) -> str:
    """The comment of a recipe where :func:`is_saddle_recipe` holds: what it is for."""
    if shortcut_depth == 2 and activation == "linear":
        hessian = "a strict saddle: its eigenvalues come in +- pairs"
    elif shortcut_depth == 2:
        hessian = "exactly zero in PyTorch, which takes ReLU's slope at 0 to be 0"
    else:
        hessian = "exactly zero: a flat, high-order saddle"
    return (
        "A saddle, not a training run: at the exact zero point with shortcut depth >= 2 each branch "
        f"is a product of {shortcut_depth} zero layers, so every branch weight gets exactly zero "
        "gradient and SGD never moves the branches; only the input projection and the head train. "
        "The run measures the residual Hessian at the paper's zero point, where it is "
        f"{hessian} (lightning_shortcut.theory). To train from near zero, run "
        f"{recipe_name(dataset, shortcut_depth, 'small', activation)}."
    )


def monitor_every_n_steps(dataset: str) -> int:
    """The recipes' fixed schedule: :data:`MEASUREMENTS` measurements over the run's steps."""
    spec = __getattr__("DATASETS")[dataset].recipe
    return max(1, spec.max_epochs * spec.steps_per_epoch // MEASUREMENTS)


def recipe_text(dataset: str, shortcut_depth: int, init: str, activation: str) -> str:
    """The YAML of one experiment."""
    info = __getattr__("DATASETS")[dataset]
    spec = info.recipe
    every = monitor_every_n_steps(dataset)
    steps = spec.max_epochs * spec.steps_per_epoch
    schedule = (
        f"The Hessian monitor measures at the start and every {every} steps: a curve of "
        f"{1 + steps // every} points over the {steps} steps of {spec.max_epochs} epochs. "
        + MEASUREMENT_COST.get(dataset, "Its cost on this dataset is not measured.")
    )
    init_class, init_args = __getattr__("INITS")[init]
    name = recipe_name(dataset, shortcut_depth, init, activation)
    purpose = ""
    if is_saddle_recipe(shortcut_depth, init):
        purpose = _comment(_saddle_note(dataset, shortcut_depth, activation)) + "\n"
    init_section = f"\n          init_args:{_block(init_args, 12)}" if init_args else ""
    monitor_block = _block({"every_n_steps": every, **MONITOR_ARGS}, 8)
    return f"""\
# Demystifying ResNet (arXiv 1611.01186): shortcut depth {shortcut_depth}, {init} init, {activation} branches, {dataset}.
# Generated by `python -m lightning_shortcut.recipes`; run with
#   lightning-shortcut fit --config {name}
{purpose}{_comment(schedule)}
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
  init_args:{_block(spec.data_args, 4)}
"""


def all_recipes() -> list[tuple[str, int, str, str]]:
    """Every (dataset, shortcut depth, init, activation) of the grid."""
    grid = (__getattr__("DATASETS"), SHORTCUT_DEPTHS, __getattr__("INITS"), ACTIVATIONS)
    return list(itertools.product(*grid))


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


def recipe_listing() -> list[str]:
    """The lines ``lightning-shortcut recipes`` prints: each shipped recipe's name first on its
    line, then :data:`SADDLE_TAG` where :func:`is_saddle_recipe` holds; the tag's legend last."""
    names = list_recipes()
    width = max((len(name) for name in names), default=0)
    matches = [(name, _NAME.fullmatch(name)) for name in names]
    saddles = {n for n, m in matches if m and is_saddle_recipe(int(m["depth"]), m["init"])}
    lines = [f"{name:<{width}}  {SADDLE_TAG}" if name in saddles else name for name in names]
    if saddles:
        lines += ["", *textwrap.wrap(_SADDLE_LEGEND, width=100, break_on_hyphens=False)]
    return lines


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
