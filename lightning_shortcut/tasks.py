"""Tasks: how the study learns a dataset (model, loss, evaluation), named by its
:class:`~lightning_shortcut.data.DatasetInfo`, so the study never asks which dataset it runs on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from lightning_shortcut.hessian.operator import cross_entropy_loss
from lightning_shortcut.models import (
    ResidualClassifier,
    ResidualRegressor,
    one_hot_accuracy,
    regression_loss,
)
from lightning_shortcut.theory import half_mse_loss

__all__ = ["CLASSIFICATION", "REGRESSION", "Task"]


@dataclass(frozen=True)
class Task:
    """How a dataset is learned: ``loss_fn(module, batch)`` (the Hessian's), ``metrics(outputs,
    targets, num_classes) -> (loss, accuracy)``, ``build_model(datamodule, layer=, num_units=,
    shortcut_depth=, lr=)``, and whether the closed forms of
    :func:`~lightning_shortcut.zero_point_hessian` hold for the model (``closed_form``)."""

    name: str
    loss_fn: Callable[[nn.Module, Any], Tensor]
    metrics: Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]]
    build_model: Callable[..., pl.LightningModule]
    closed_form: bool = False

    def evaluate(
        self, model: nn.Module, dataset: TensorDataset, num_classes: int
    ) -> tuple[float, float]:
        """The loss and the accuracy of ``model`` (put in eval mode) on all of ``dataset``."""
        inputs, targets = dataset.tensors
        with torch.no_grad():
            model.eval()
            loss, accuracy = self.metrics(model(inputs), targets, num_classes)
        return float(loss), float(accuracy)


def _classification_metrics(
    outputs: Tensor, targets: Tensor, num_classes: int
) -> tuple[Tensor, Tensor]:
    return F.cross_entropy(outputs, targets), (outputs.argmax(1) == targets).float().mean()


def _regression_metrics(
    outputs: Tensor, targets: Tensor, num_classes: int
) -> tuple[Tensor, Tensor]:
    return half_mse_loss(outputs, targets), one_hot_accuracy(outputs, targets, num_classes)


def _classifier(datamodule: Any, **kwargs: Any) -> ResidualClassifier:
    """Input projection, a linear-branch stack (32 wide unless ``width`` is given) and a head."""
    kwargs = {"width": 32, "activation": None} | kwargs
    return ResidualClassifier(datamodule.input_shape, datamodule.num_classes, **kwargs)


def _regressor(datamodule: Any, *, layer: str, **kwargs: Any) -> ResidualRegressor:
    """The theory's bias-free linear stack on inputs of ``datamodule.input_shape = (width,)``."""
    (width,) = datamodule.input_shape
    return ResidualRegressor(width, num_classes=datamodule.num_classes, **kwargs)


#: cross-entropy on integer labels; accuracy of the largest logit
CLASSIFICATION = Task("classification", cross_entropy_loss, _classification_metrics, _classifier)
#: ``0.5 * mean ||f(x) - y||^2`` on one-hot targets; accuracy of the largest of the class outputs
REGRESSION = Task("regression", regression_loss, _regression_metrics, _regressor, closed_form=True)
