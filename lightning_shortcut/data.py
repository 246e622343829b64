"""LightningDataModules: MNIST, Fashion-MNIST, CIFAR-10, the offline ``digits`` default and a teacher task.

Every module holds its data as tensors (these datasets fit in memory), splits a validation set from
the training data with a seeded permutation, downloads only in ``prepare_data`` (when
``download=True``) and reads files in ``setup``. When files are missing it raises one
``FileNotFoundError`` that says where they should be and how to get them.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_shortcut.residual import check_positive_int

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "LinearTeacherDataModule",
    "MNISTDataModule",
    "read_idx",
]


def _check_fraction(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"`{name}` must be a float in [0, 1), got {value!r}.")
    return float(value)


class _TensorDataModule(pl.LightningDataModule):
    """Base class: subclasses implement :meth:`_load` returning train and test tensors."""

    input_shape: tuple[int, ...]
    num_classes: int

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.val_fraction = _check_fraction("val_fraction", val_fraction)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"`num_workers` must be an int >= 0, got {num_workers!r}.")
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

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


class DigitsDataModule(_TensorDataModule):
    """scikit-learn's bundled ``digits`` (1797 8x8 images, 10 classes): offline, no download.

    ``task="classification"``: images ``(1, 8, 8)`` standardized, integer labels.
    ``task="regression"``: the theory's setting: inputs are the images' PCA coordinates, whitened, in
    ``width`` dimensions (fitted on the training split); targets are the one-hot labels in the first
    10 of ``width`` coordinates, so ``f: R^width -> R^width`` and ``0.5 * mean ||f(x) - y||^2`` apply.

    A seeded split holds out ``test_fraction`` as the test set and ``val_fraction`` of the rest.
    """

    num_classes = 10

    def __init__(
        self,
        task: Literal["classification", "regression"] = "classification",
        width: int = 16,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, num_workers, seed)
        if task not in ("classification", "regression"):
            raise ValueError(f"Unknown task {task!r}; expected 'classification' or 'regression'.")
        check_positive_int("width", width)
        if task == "regression" and not 10 <= width <= 64:
            raise ValueError(f"The regression task needs 10 <= width <= 64, got width={width}.")
        self.task = task
        self.width = width
        self.test_fraction = _check_fraction("test_fraction", test_fraction)
        self.input_shape = (1, 8, 8) if task == "classification" else (width,)

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed + 1))
        num_test = round(self.test_fraction * len(images))
        test, train = order[:num_test], order[num_test:]
        if self.task == "classification":
            mean, std = images[train].mean(), images[train].std()
            shaped = ((images - mean) / std).view(-1, 1, 8, 8)
            return shaped[train], labels[train], shaped[test], labels[test]
        mean = images[train].mean(dim=0)
        _, singular, basis = torch.linalg.svd(images[train] - mean, full_matrices=False)
        scale = singular[: self.width] / (len(train) - 1) ** 0.5
        inputs = (images - mean) @ basis[: self.width].T / scale
        targets = torch.zeros(len(images), self.width)
        targets[torch.arange(len(images)), labels] = 1.0
        return inputs[train], targets[train], inputs[test], targets[test]


@contextmanager
def _download_errors(name: str, data_dir: Path) -> Iterator[None]:
    """Turn a failed torchvision download (no network, say) into one clear error."""
    try:
        yield
    except Exception as error:
        raise RuntimeError(
            f"Could not download {name} into {data_dir} ({type(error).__name__}: {error}). Without "
            f"network access, put the dataset's files into {data_dir} yourself and pass "
            f"download=False (--data.init_args.download false)."
        ) from None


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


class _FileDataModule(_TensorDataModule):
    """Base class for data read from files in ``data_dir`` that torchvision can download.

    Subclasses implement :meth:`_locate` (``None`` when the files are missing) and :meth:`_download`.
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

    def _locate(self) -> object | None:
        raise NotImplementedError

    def _download(self) -> None:
        raise NotImplementedError

    def prepare_data(self) -> None:
        if self.download and self._locate() is None:
            with _download_errors(self._name, self.data_dir):
                self._download()


class _IDXDataModule(_FileDataModule):
    """MNIST-format data from IDX files (``.gz`` or not) in ``data_dir``.

    Looked for in ``data_dir`` itself (for instance Debian's ``/usr/share/datasets/fashion-mnist``)
    and in torchvision's layout ``data_dir/<Name>/raw``. ``download=True`` fetches them with
    torchvision in ``prepare_data``.
    """

    input_shape = (1, 28, 28)
    num_classes = 10
    _files: ClassVar[dict[str, tuple[str, str]]] = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    _hint = ""

    def _download(self) -> None:
        import torchvision.datasets

        for train in (True, False):
            getattr(torchvision.datasets, self._name)(
                str(self.data_dir), train=train, download=True
            )

    def _candidates(self) -> list[Path]:
        return [self.data_dir, self.data_dir / self._name / "raw"]

    def _locate(self) -> dict[str, Path] | None:
        for folder in self._candidates():
            found: dict[str, Path] = {}
            for name in (n for pair in self._files.values() for n in pair):
                for suffix in ("", ".gz"):
                    if (folder / f"{name}{suffix}").is_file():
                        found[name] = folder / f"{name}{suffix}"
                        break
            if len(found) == 4:
                return found
        return None

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        found = self._locate()
        if found is None:
            searched = ", ".join(str(p) for p in self._candidates())
            raise FileNotFoundError(
                f"{type(self).__name__}: no {self._name} IDX files (train-images-idx3-ubyte[.gz], "
                f"train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
                f"t10k-labels-idx1-ubyte[.gz]) in {searched}. With internet, pass download=True "
                f"(--data.init_args.download true) to fetch them with torchvision into {self.data_dir}; "
                f"offline, point data_dir at a folder that holds them.{self._hint}"
            )
        arrays = {name: read_idx(path) for name, path in found.items()}
        (train_images, train_labels), (test_images, test_labels) = (
            (arrays[images], arrays[labels]) for images, labels in self._files.values()
        )
        train_x = torch.tensor(train_images, dtype=torch.float32).unsqueeze(1) / 255.0
        test_x = torch.tensor(test_images, dtype=torch.float32).unsqueeze(1) / 255.0
        mean, std = train_x.mean(), train_x.std()
        return (
            (train_x - mean) / std,
            torch.tensor(train_labels, dtype=torch.long),
            (test_x - mean) / std,
            torch.tensor(test_labels, dtype=torch.long),
        )


class MNISTDataModule(_IDXDataModule):
    """MNIST (60k/10k 28x28 digits) from IDX files in ``data_dir``; ``download=True`` with internet."""

    _name = "MNIST"


class FashionMNISTDataModule(_IDXDataModule):
    """Fashion-MNIST from IDX files in ``data_dir``; ``download=True`` with internet.

    Offline on Debian: ``apt-get install dataset-fashion-mnist`` and
    ``data_dir=/usr/share/datasets/fashion-mnist``.
    """

    _name = "FashionMNIST"
    _hint = (
        " On Debian, `apt-get install dataset-fashion-mnist` puts them in "
        "/usr/share/datasets/fashion-mnist."
    )


class CIFAR10DataModule(_FileDataModule):
    """CIFAR-10 from its python-format batches (``cifar-10-batches-py``) in ``data_dir``.

    Looked for in ``data_dir/cifar-10-batches-py`` and ``data_dir``; ``download=True`` fetches them
    with torchvision in ``prepare_data``. Images are ``(3, 32, 32)``, standardized per channel.
    """

    input_shape = (3, 32, 32)
    num_classes = 10
    _name = "CIFAR10"
    _train_files = tuple(f"data_batch_{i}" for i in range(1, 6))

    def _candidates(self) -> list[Path]:
        return [self.data_dir / "cifar-10-batches-py", self.data_dir]

    def _locate(self) -> Path | None:
        for folder in self._candidates():
            if all((folder / name).is_file() for name in (*self._train_files, "test_batch")):
                return folder
        return None

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
            searched = ", ".join(str(p) for p in self._candidates())
            raise FileNotFoundError(
                f"CIFAR10DataModule: no CIFAR-10 python batches (data_batch_1..5, test_batch) in "
                f"{searched}. With internet, pass download=True (--data.init_args.download true) to fetch "
                f"them with torchvision into {self.data_dir}; offline, point data_dir at the "
                f"extracted cifar-10-batches-py folder."
            )
        parts = [self._read(folder / name) for name in self._train_files]
        train_x = torch.tensor(np.concatenate([p[0] for p in parts]), dtype=torch.float32) / 255.0
        train_y = torch.tensor(np.concatenate([p[1] for p in parts]))
        test_images, test_labels = self._read(folder / "test_batch")
        test_x = torch.tensor(test_images, dtype=torch.float32) / 255.0
        mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
        std = train_x.std(dim=(0, 2, 3), keepdim=True)
        return (train_x - mean) / std, train_y, (test_x - mean) / std, torch.tensor(test_labels)


class LinearTeacherDataModule(_TensorDataModule):
    """A linear teacher task: ``x ~ N(0, I_width)``, ``y = T x`` (plus optional noise).

    ``T = I + teacher_scale * G / sqrt(width)`` with ``G`` Gaussian, drawn from ``seed``: a target a
    linear residual network can fit exactly. This is the theory's setting with a known answer.
    """

    num_classes = 0

    def __init__(
        self,
        width: int = 16,
        num_train: int = 1024,
        num_test: int = 256,
        teacher_scale: float = 0.5,
        noise: float = 0.0,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, num_workers, seed)
        self.width = check_positive_int("width", width)
        self.num_train = check_positive_int("num_train", num_train)
        self.num_test = check_positive_int("num_test", num_test)
        self.teacher_scale = float(teacher_scale)
        self.noise = float(noise)
        self.input_shape = (width,)

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        teacher = (
            torch.eye(self.width)
            + self.teacher_scale
            * torch.randn(self.width, self.width, generator=generator)
            / self.width**0.5
        )
        x = torch.randn(self.num_train + self.num_test, self.width, generator=generator)
        y = x @ teacher.T + self.noise * torch.randn(x.shape, generator=generator)
        return x[: self.num_train], y[: self.num_train], x[self.num_train :], y[self.num_train :]
