"""LightningDataModules: MNIST, Fashion-MNIST, CIFAR-10, the offline ``digits`` default and a teacher
task, one module per family, and the registry of datasets the study and the recipes read
(:data:`DATASETS`)."""

from lightning_shortcut.data.base import FileDataModule, TensorDataModule
from lightning_shortcut.data.cifar import CIFAR10DataModule
from lightning_shortcut.data.digits import DigitsDataModule
from lightning_shortcut.data.mnist import FashionMNISTDataModule, MNISTDataModule, read_idx
from lightning_shortcut.data.registry import (
    DATASETS,
    DatasetInfo,
    RecipeDefaults,
    get_dataset,
    register_dataset,
)
from lightning_shortcut.data.teacher import LinearTeacherDataModule

__all__ = [
    "DATASETS",
    "CIFAR10DataModule",
    "DatasetInfo",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "FileDataModule",
    "LinearTeacherDataModule",
    "MNISTDataModule",
    "RecipeDefaults",
    "TensorDataModule",
    "get_dataset",
    "read_idx",
    "register_dataset",
]
