"""``CIFAR10DataModule``: CIFAR-10 from its python-format batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_shortcut.data.base import FileDataModule

__all__ = ["CIFAR10DataModule"]


class CIFAR10DataModule(FileDataModule):
    """CIFAR-10 from its python-format batches in ``data_dir/cifar-10-batches-py`` or ``data_dir``
    (``download=True`` with internet); images ``(3, 32, 32)``, standardized per channel."""

    input_shape = (3, 32, 32)
    num_classes = 10
    _name = "CIFAR10"
    _train_files = tuple(f"data_batch_{i}" for i in range(1, 6))

    def _candidates(self) -> list[Path]:
        return [self.data_dir / "cifar-10-batches-py", self.data_dir]

    def _locate(self) -> Path | None:
        names = (*self._train_files, "test_batch")
        return next((f for f in self._candidates() if all((f / n).is_file() for n in names)), None)

    def _download(self) -> None:
        import torchvision.datasets

        torchvision.datasets.CIFAR10(str(self.data_dir), train=True, download=True)

    @staticmethod
    def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return images, np.asarray(batch[b"labels"], dtype=np.int64)

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        folder = self._locate()
        if folder is None:
            raise self._missing(
                "CIFAR-10 python batches (data_batch_1..5, test_batch)",
                "the extracted cifar-10-batches-py folder",
            )
        parts = [self._read(folder / name) for name in self._train_files]
        train_x = torch.tensor(np.concatenate([p[0] for p in parts]), dtype=torch.float32) / 255.0
        train_y = torch.tensor(np.concatenate([p[1] for p in parts]))
        test_images, test_labels = self._read(folder / "test_batch")
        test_x = torch.tensor(test_images, dtype=torch.float32) / 255.0
        mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
        std = train_x.std(dim=(0, 2, 3), keepdim=True)
        return (train_x - mean) / std, train_y, (test_x - mean) / std, torch.tensor(test_labels)
