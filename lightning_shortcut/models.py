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

from lightning_shortcut.residual import ActivationSpec, ResidualStack, check_positive_int
from lightning_shortcut.theory import half_mse_loss

__all__ = ["ResidualClassifier", "ResidualRegressor", "regression_loss"]

_OPTIMIZERS = ("sgd", "adam")


def _check_optimizer(optimizer: str, lr: float) -> None:
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {optimizer!r}; expected one of {list(_OPTIMIZERS)}.")
    if not (isinstance(lr, int | float) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"`lr` must be a finite float > 0, got {lr!r}.")


class _OptimizerMixin:
    hparams: Any

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return torch.optim.SGD(
            self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
        )


class ResidualClassifier(_OptimizerMixin, pl.LightningModule):
    """Input projection, a :class:`~lightning_shortcut.ResidualStack`, and a linear head.

    With ``layer="linear"`` inputs are flattened and projected by ``nn.Linear``; with
    ``layer="conv"`` (CIFAR-10) a 3x3 convolution projects to ``width`` channels, the stack is
    convolutional and the head reads the global average. The projection and head are trained too;
    the residual parameters (the paper's quantity) are what
    :func:`~lightning_shortcut.residual_parameters` returns.

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

    Example::

        model = ResidualClassifier([1, 28, 28], 10, width=64, num_units=16, activation="relu")
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
        _check_optimizer(optimizer, lr)
        check_positive_int("num_classes", num_classes)
        input_shape = tuple(input_shape)
        if not input_shape or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in input_shape
        ):
            raise ValueError(f"`input_shape` must be positive ints, got {input_shape!r}.")
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

    def _step(self, batch: Any, stage: str, accuracy: MulticlassAccuracy) -> Tensor:
        inputs, targets = batch
        logits = self(inputs)
        loss = F.cross_entropy(logits, targets)
        accuracy(logits, targets)
        self.log(f"{stage}_loss", loss, prog_bar=stage != "test")
        self.log(f"{stage}_acc", accuracy, prog_bar=stage == "val")
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_accuracy)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val", self.val_accuracy)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test", self.test_accuracy)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        inputs = batch[0] if isinstance(batch, list | tuple) else batch
        return self(inputs).argmax(dim=-1)


def regression_loss(module: nn.Module, batch: Any) -> Tensor:
    """``loss_fn`` for the Hessian monitor on regression: ``0.5 * mean ||f(x) - y||^2``."""
    inputs, targets = batch[0], batch[1]
    return half_mse_loss(module(inputs), targets)


class ResidualRegressor(_OptimizerMixin, pl.LightningModule):
    """The exact setting of the theory: ``f(x) = ResidualStack(x)`` on ``0.5 * mean ||f(x) - y||^2``.

    Inputs and targets are ``(N, width)``. With a linear branch and no biases the Hessian at the zero
    point is :func:`~lightning_shortcut.zero_point_hessian`'s. Use
    :func:`regression_loss` as the monitor's ``loss_fn``. ``val_acc`` is logged when the targets are
    one-hot codes in their first ``num_classes`` coordinates (the digits regression task).

    Args:
        width: features of inputs and targets.
        num_units: residual units.
        shortcut_depth: weight layers per branch.
        activation: nonlinearity between branch layers.
        num_classes: if given, accuracy of ``argmax`` over the first ``num_classes`` outputs.
        optimizer, lr, momentum, weight_decay: the optimizer.
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
        _check_optimizer(optimizer, lr)
        if num_classes is not None:
            check_positive_int("num_classes", num_classes)
            if num_classes > width:
                raise ValueError(f"`num_classes` ({num_classes}) cannot exceed `width` ({width}).")
        self.save_hyperparameters()
        self.stack = ResidualStack(width, num_units, shortcut_depth, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.stack(x)

    def _step(self, batch: Any, stage: str) -> Tensor:
        inputs, targets = batch
        outputs = self(inputs)
        loss = half_mse_loss(outputs, targets)
        self.log(f"{stage}_loss", loss, prog_bar=stage != "test")
        classes = self.hparams.num_classes
        if classes is not None:
            correct = outputs[:, :classes].argmax(dim=1) == targets[:, :classes].argmax(dim=1)
            self.log(f"{stage}_acc", correct.float().mean(), prog_bar=stage == "val")
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        inputs = batch[0] if isinstance(batch, list | tuple) else batch
        return self(inputs)
