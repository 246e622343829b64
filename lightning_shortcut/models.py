"""LightningModules for the paper's settings, built on :class:`~lightning_shortcut.ResidualStack`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_shortcut.hessian._validation import (
    check_choice,
    check_positive_float,
    check_positive_int,
    check_positive_ints,
)
from lightning_shortcut.residual import ActivationSpec, ResidualStack
from lightning_shortcut.theory import half_mse_loss

__all__ = ["ResidualClassifier", "ResidualRegressor", "one_hot_accuracy", "regression_loss"]


class _ResidualModule(pl.LightningModule):
    """The shared steps, logging ``{stage}_loss`` and ``{stage}_acc``; a subclass saves ``optimizer``,
    ``lr``, ``momentum`` and ``weight_decay`` as hyperparameters."""

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The training loss of ``outputs`` against ``targets``."""
        raise NotImplementedError

    def _accuracy(self, stage: str, outputs: Tensor, targets: Tensor) -> Any:
        """What ``{stage}_acc`` logs (``None``: nothing)."""
        return None

    def _predict(self, outputs: Tensor) -> Tensor:
        return outputs

    def _step(self, batch: Any, stage: str) -> Tensor:
        inputs, targets = batch
        outputs = self(inputs)
        loss = self.loss(outputs, targets)
        self.log(f"{stage}_loss", loss, prog_bar=stage != "test")
        accuracy = self._accuracy(stage, outputs, targets)
        if accuracy is not None:
            self.log(f"{stage}_acc", accuracy, prog_bar=stage == "val")
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        inputs = batch[0] if isinstance(batch, list | tuple) else batch
        return self._predict(self(inputs))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return torch.optim.SGD(
            self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
        )


class ResidualClassifier(_ResidualModule):
    """Input projection, a :class:`~lightning_shortcut.ResidualStack`, and a linear head.

    With ``layer="linear"`` inputs are flattened and projected by ``nn.Linear``; with
    ``layer="conv"`` (CIFAR-10) a 3x3 convolution projects to ``width`` channels and the head reads
    the global average. All are trained; :func:`~lightning_shortcut.residual_parameters` are the
    paper's parameters.

    Args:
        input_shape: shape of one sample, e.g. ``[1, 28, 28]``.
        num_classes: number of classes.
        width: features or channels of the stack.
        num_units: residual units.
        shortcut_depth: weight layers per branch (the paper's ``n``).
        layer: ``"linear"`` or ``"conv"``.
        activation: nonlinearity between branch layers (``None`` for a linear branch).
        optimizer: ``"sgd"`` or ``"adam"``.
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay.

    Example:
        ```python
        model = ResidualClassifier([1, 28, 28], 10, width=64, num_units=16, activation="relu")
        ```
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        width: int = 64,
        num_units: int = 8,
        shortcut_depth: int = 2,
        layer: Literal["linear", "conv"] = "linear",
        activation: ActivationSpec = "relu",
        optimizer: Literal["sgd", "adam"] = "sgd",
        lr: float = 0.05,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        check_choice("optimizer", optimizer, ("sgd", "adam"))
        check_positive_float("lr", lr)
        check_positive_int("num_classes", num_classes)
        input_shape = check_positive_ints("input_shape", tuple(input_shape))
        if layer == "conv" and len(input_shape) != 3:
            raise ValueError(f"layer='conv' needs input_shape (C, H, W), got {input_shape!r}.")
        self.save_hyperparameters()
        if layer == "conv":
            self.projection: nn.Module = nn.Conv2d(input_shape[0], width, 3, padding=1)
        else:
            self.projection = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width))
        self.stack = ResidualStack(
            width, num_units, shortcut_depth, layer=layer, activation=activation
        )
        self.head = nn.Linear(width, num_classes)
        self.train_accuracy = MulticlassAccuracy(num_classes)
        self.val_accuracy = MulticlassAccuracy(num_classes)
        self.test_accuracy = MulticlassAccuracy(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stack(self.projection(x))
        if self.hparams.layer == "conv":
            h = h.mean(dim=(-2, -1))
        return self.head(h)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy of the logits against integer labels."""
        return F.cross_entropy(outputs, targets)

    def _accuracy(self, stage: str, outputs: Tensor, targets: Tensor) -> MulticlassAccuracy:
        metric = getattr(self, f"{stage}_accuracy")
        metric(outputs, targets)
        return metric

    def _predict(self, outputs: Tensor) -> Tensor:
        return outputs.argmax(dim=-1)


def regression_loss(module: nn.Module, batch: Any) -> Tensor:
    """``loss_fn`` for the Hessian monitor on regression: ``0.5 * mean ||f(x) - y||^2``."""
    return half_mse_loss(module(batch[0]), batch[1])


def one_hot_accuracy(outputs: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Share of samples whose largest output among the first ``num_classes`` is the target's one."""
    correct = outputs[:, :num_classes].argmax(dim=1) == targets[:, :num_classes].argmax(dim=1)
    return correct.float().mean()


class ResidualRegressor(_ResidualModule):
    """The exact setting of the theory: ``f(x) = ResidualStack(x)`` on ``0.5 * mean ||f(x) - y||^2``.

    Inputs and targets are ``(N, width)``; with a linear branch the Hessian at the zero point is
    :func:`~lightning_shortcut.zero_point_hessian`'s. The monitor's ``loss_fn`` is
    :func:`regression_loss`.

    Args:
        width: features of inputs and targets.
        num_units: residual units.
        shortcut_depth: weight layers per branch.
        activation: nonlinearity between branch layers.
        num_classes: if given, ``{stage}_acc`` logs the accuracy of ``argmax`` over the first
            ``num_classes`` outputs against one-hot targets (the digits task).
        optimizer: ``"sgd"`` or ``"adam"``.
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay.
    """

    def __init__(
        self,
        width: int = 16,
        num_units: int = 8,
        shortcut_depth: int = 2,
        activation: ActivationSpec = None,
        num_classes: int | None = None,
        optimizer: Literal["sgd", "adam"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        check_choice("optimizer", optimizer, ("sgd", "adam"))
        check_positive_float("lr", lr)
        if num_classes is not None:
            check_positive_int("num_classes", num_classes)
            if num_classes > width:
                raise ValueError(f"`num_classes` ({num_classes}) cannot exceed `width` ({width}).")
        self.save_hyperparameters()
        self.stack = ResidualStack(width, num_units, shortcut_depth, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.stack(x)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The theory's ``0.5 * mean ||f(x) - y||^2``."""
        return half_mse_loss(outputs, targets)

    def _accuracy(self, stage: str, outputs: Tensor, targets: Tensor) -> Tensor | None:
        classes = self.hparams.num_classes
        return None if classes is None else one_hot_accuracy(outputs, targets, classes)
