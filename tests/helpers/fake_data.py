"""Small files in MNIST's IDX and CIFAR-10's python formats, written by the tests."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def write_mnist(
    folder: Path, num_train: int = 60, num_test: int = 20, gz: bool = True, seed: int = 0
) -> Path:
    """IDX files as MNIST/Fashion-MNIST ship them (``.gz`` by default) into ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (num_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(num_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (num_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(num_test) % 10,
    }
    for name, array in files.items():
        data = _idx_bytes(np.asarray(array))
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as handle:
                handle.write(data)
        else:
            (folder / name).write_bytes(data)
    return folder


def write_cifar10(root: Path, per_batch: int = 8, num_test: int = 10, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with five training batches and a test batch."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        count = num_test if name == "test_batch" else per_batch
        batch = {
            b"data": rng.integers(0, 256, (count, 3072)).astype(np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, count)],
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    return root
