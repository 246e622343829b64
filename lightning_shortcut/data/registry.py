"""The datasets as data (timm's ``default_cfgs``): one :class:`DatasetInfo` per name, read by the
study, the recipes and ``shortcut-study``; a new dataset is its datamodule and one entry in the
:func:`register_dataset` loop here (or a call of it anywhere)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning_shortcut.data.base import FileDataModule, TensorDataModule
from lightning_shortcut.data.cifar import CIFAR10DataModule
from lightning_shortcut.data.digits import DigitsDataModule
from lightning_shortcut.data.mnist import FashionMNISTDataModule, MNISTDataModule
from lightning_shortcut.hessian._validation import check_choice
from lightning_shortcut.tasks import CLASSIFICATION, REGRESSION, Task

__all__ = ["DATASETS", "DatasetInfo", "RecipeDefaults", "get_dataset", "register_dataset"]


@dataclass(frozen=True)
class RecipeDefaults:
    """What the YAML recipes of a dataset use (:mod:`lightning_shortcut.recipes`): the
    datamodule's ``init_args``, the stack's ``width`` and ``num_units``, ``max_epochs``, the SGD
    ``lr`` (momentum 0.9) and the ``steps_per_epoch`` the measurement schedule is set from."""

    data_args: Mapping[str, Any]
    width: int
    num_units: int
    max_epochs: int
    lr: float
    steps_per_epoch: int


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset: its ``name`` (``--data NAME``, ``recipes/NAME/``), its ``datamodule`` class,
    the ``task`` the study learns it by, the residual ``layer`` (``"linear"`` or ``"conv"``), the
    ``recipe`` settings and ``study_args``, the datamodule's arguments in the study besides
    ``batch_size``, ``seed`` and ``data_dir``."""

    name: str
    datamodule: type[TensorDataModule]
    task: Task
    layer: Literal["linear", "conv"]
    recipe: RecipeDefaults
    study_args: Mapping[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample as the datamodule gives it by default."""
        return self.datamodule.input_shape

    @property
    def num_classes(self) -> int:
        return self.datamodule.num_classes

    def study_datamodule(self, data_dir: Path, batch_size: int, seed: int) -> TensorDataModule:
        """The datamodule as the study uses it (not yet set up)."""
        kwargs = {**self.study_args, "batch_size": batch_size, "seed": seed}
        if issubclass(self.datamodule, FileDataModule):
            kwargs["data_dir"] = data_dir
        return self.datamodule(**kwargs)


#: Every dataset by name, in the order the recipes list them.
DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add ``info`` to :data:`DATASETS` (``ValueError`` if its name is taken); returns it."""
    if info.name in DATASETS:
        raise ValueError(f"A dataset named {info.name!r} is registered already.")
    DATASETS[info.name] = info
    return info


def get_dataset(name: str) -> DatasetInfo:
    """The registered dataset ``name`` (``ValueError`` naming the registered ones otherwise)."""
    return DATASETS[check_choice("data", name, DATASETS)]


# what the MNIST-format recipes share: 28x28 digits or clothes through a linear projection
_IDX_RECIPE = {"width": 64, "num_units": 16, "max_epochs": 10, "lr": 0.05, "steps_per_epoch": 422}
_DOWNLOAD = {"data_dir": "data", "download": True, "batch_size": 128}

for _info in (
    DatasetInfo(
        "digits",
        DigitsDataModule,
        # the theory's setting: whitened PCA coordinates in 16 dimensions, one-hot targets
        task=REGRESSION,
        study_args={"task": "regression", "width": 16},
        layer="linear",
        recipe=RecipeDefaults(
            {"batch_size": 64}, width=32, num_units=16, max_epochs=40, lr=0.05, steps_per_epoch=21
        ),
    ),
    DatasetInfo(
        "mnist",
        MNISTDataModule,
        task=CLASSIFICATION,
        layer="linear",
        recipe=RecipeDefaults(_DOWNLOAD, **_IDX_RECIPE),
    ),
    DatasetInfo(
        "fashion_mnist",
        FashionMNISTDataModule,
        task=CLASSIFICATION,
        layer="linear",
        recipe=RecipeDefaults(
            {"data_dir": "/usr/share/datasets/fashion-mnist", "download": False, "batch_size": 128},
            **_IDX_RECIPE,
        ),
    ),
    DatasetInfo(
        "cifar10",
        CIFAR10DataModule,
        task=CLASSIFICATION,
        layer="conv",
        recipe=RecipeDefaults(
            _DOWNLOAD, width=32, num_units=8, max_epochs=30, lr=0.05, steps_per_epoch=352
        ),
    ),
):
    register_dataset(_info)
