"""The base classes: data held as tensors (a seeded validation split), and data read from files that
torchvision can download (only in ``prepare_data``, when ``download=True``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_shortcut.hessian._validation import (
    check_fraction,
    check_non_negative_int,
    check_positive_int,
)

__all__ = ["FileDataModule", "TensorDataModule"]


class TensorDataModule(pl.LightningDataModule, ABC):
    """Base class: a subclass implements :meth:`_load` and sets ``input_shape`` and ``num_classes``.

    Args:
        batch_size: samples per batch of every dataloader.
        val_fraction: share of the training data held out as the validation set.
        num_workers: dataloader worker processes.
        seed: seed of the train/validation split.
    """

    input_shape: tuple[int, ...]
    num_classes: int  # 0 for regression targets

    def __init__(
        self, batch_size: int = 64, val_fraction: float = 0.1, num_workers: int = 0, seed: int = 0
    ) -> None:
        super().__init__()
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.num_workers = check_non_negative_int("num_workers", num_workers)
        self.seed = seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    @abstractmethod
    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The training inputs and targets, then the test inputs and targets."""

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return  # every stage shares one load
        train_x, train_y, test_x, test_y = self._load()
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(self.seed))
        num_val = round(self.val_fraction * len(train_x))
        val_index, train_index = order[:num_val], order[num_val:]
        self.train_set = TensorDataset(train_x[train_index], train_y[train_index])
        self.val_set = TensorDataset(train_x[val_index], train_y[val_index])
        self.test_set = TensorDataset(test_x, test_y)

    def _loader(self, dataset: TensorDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for data.")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class FileDataModule(TensorDataModule):
    """Base class for data read from files in ``data_dir`` that torchvision can download.

    A subclass names the dataset (``_name``, as torchvision spells it) and implements
    :meth:`_candidates`, :meth:`_locate` and :meth:`_download`; its :meth:`_load` reads what
    :meth:`_locate` found, or raises :meth:`_missing`.

    Args:
        data_dir: the folder the files are in (or downloaded to).
        download: download the files in ``prepare_data`` if they are missing (needs internet).
        batch_size, val_fraction, num_workers, seed: as in :class:`TensorDataModule`.
    """

    _name = ""

    def __init__(
        self,
        data_dir: str | Path = "data",
        download: bool = False,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, num_workers, seed)
        self.data_dir = Path(data_dir)
        self.download = download

    @abstractmethod
    def _candidates(self) -> list[Path]:
        """The folders that may hold the files, in the order they are searched."""

    @abstractmethod
    def _locate(self) -> object | None:
        """The files in the first candidate folder that holds them all, or ``None``."""

    @abstractmethod
    def _download(self) -> None:
        """Fetch the files into ``data_dir`` (with torchvision)."""

    def _missing(self, files: str, where: str) -> FileNotFoundError:
        """The error for missing ``files``: where they were looked for and how to get them."""
        searched = ", ".join(str(path) for path in self._candidates())
        return FileNotFoundError(
            f"{type(self).__name__}: no {files} in {searched}. With internet, pass download=True "
            f"(--data.init_args.download true) to fetch them with torchvision into "
            f"{self.data_dir}; offline, point data_dir at {where}."
        )

    def prepare_data(self) -> None:
        if not self.download or self._locate() is not None:
            return
        try:
            self._download()
        except Exception as error:  # no network, say: one clear error
            raise RuntimeError(
                f"Could not download {self._name} into {self.data_dir} ({type(error).__name__}: "
                f"{error}). Without network access, put the dataset's files into "
                f"{self.data_dir} yourself and pass download=False "
                "(--data.init_args.download false)."
            ) from None
