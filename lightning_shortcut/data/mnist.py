"""MNIST and Fashion-MNIST from their IDX files, and ``read_idx``."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from lightning_shortcut.data.base import FileDataModule

__all__ = ["FashionMNISTDataModule", "MNISTDataModule", "read_idx"]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {array.size} values.")
    return array.reshape(shape)


class _IDXDataModule(FileDataModule):
    """MNIST-format IDX files (``.gz`` or not) in ``data_dir`` or ``data_dir/<Name>/raw``."""

    input_shape = (1, 28, 28)
    num_classes = 10
    _files: ClassVar[dict[str, tuple[str, str]]] = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    _hint = ""

    def _download(self) -> None:
        import torchvision.datasets

        dataset = getattr(torchvision.datasets, self._name)
        for train in (True, False):
            dataset(str(self.data_dir), train=train, download=True)

    def _candidates(self) -> list[Path]:
        return [self.data_dir, self.data_dir / self._name / "raw"]

    def _locate(self) -> dict[str, Path] | None:
        names = [name for pair in self._files.values() for name in pair]
        for folder in self._candidates():
            found = {
                n: next((p for p in (folder / n, folder / f"{n}.gz") if p.is_file()), None)
                for n in names
            }
            if None not in found.values():
                return found
        return None

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        found = self._locate()
        if found is None:
            files = ", ".join(f"{name}[.gz]" for pair in self._files.values() for name in pair)
            missing = self._missing(f"{self._name} IDX files ({files})", "a folder that holds them")
            raise FileNotFoundError(f"{missing}{self._hint}")
        (train_x, train_y), (test_x, test_y) = (
            (
                torch.tensor(read_idx(found[images]), dtype=torch.float32).unsqueeze(1) / 255.0,
                torch.tensor(read_idx(found[labels]), dtype=torch.long),
            )
            for images, labels in self._files.values()
        )
        mean, std = train_x.mean(), train_x.std()
        return (train_x - mean) / std, train_y, (test_x - mean) / std, test_y


class MNISTDataModule(_IDXDataModule):
    """MNIST (60k/10k 28x28 digits) from IDX files in ``data_dir``; ``download=True`` with internet."""

    _name = "MNIST"


class FashionMNISTDataModule(_IDXDataModule):
    """Fashion-MNIST from IDX files in ``data_dir``; ``download=True`` with internet (offline on
    Debian: ``apt-get install dataset-fashion-mnist``, ``/usr/share/datasets/fashion-mnist``)."""

    _name = "FashionMNIST"
    _hint = (
        " On Debian, `apt-get install dataset-fashion-mnist` puts them in "
        "/usr/share/datasets/fashion-mnist."
    )
