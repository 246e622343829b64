"""``DigitsDataModule``: scikit-learn's bundled digits, the offline default."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_shortcut.data.base import TensorDataModule
from lightning_shortcut.hessian._validation import check_choice, check_fraction, check_positive_int

__all__ = ["DigitsDataModule"]


class DigitsDataModule(TensorDataModule):
    """scikit-learn's bundled ``digits`` (1797 8x8 images, 10 classes): offline, no download.

    ``task="classification"``: images ``(1, 8, 8)`` standardized, integer labels.
    ``task="regression"`` (the theory's setting): the images' whitened PCA coordinates in ``width``
    dimensions, targets the one-hot labels in the first 10 of them. A seeded split holds out
    ``test_fraction`` as the test set and ``val_fraction`` of the rest.
    """

    input_shape = (1, 8, 8)  # the classification task's; an instance for regression has (width,)
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
        self.task = check_choice("task", task, ("classification", "regression"))
        self.width = check_positive_int("width", width)
        if task == "regression" and not 10 <= width <= 64:
            raise ValueError(f"The regression task needs 10 <= width <= 64, got width={width}.")
        self.test_fraction = check_fraction("test_fraction", test_fraction)
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
