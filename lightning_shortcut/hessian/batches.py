"""The batches a Hessian is taken on, and the default loss: what every product reads."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

LossFn = Callable[[nn.Module, Any], Tensor]

__all__ = ["LossFn", "batch_size", "cross_entropy_loss", "detach_inference", "normalize_batches"]

_PASS_LOSS_FN = (
    "Pass `loss_fn=lambda model, batch: ...` returning the scalar mean loss of a batch (or, in "
    "Lightning, define `hessian_loss(self, batch)` on the LightningModule)."
)


def cross_entropy_loss(model: nn.Module, batch: Any) -> Tensor:
    """The default loss: cross-entropy of ``model(inputs)`` against ``targets`` (``ValueError`` on
    a batch that is not ``(inputs, targets, ...)`` tensors)."""
    if not (
        isinstance(batch, tuple | list)
        and len(batch) >= 2
        and isinstance(batch[0], Tensor)
        and isinstance(batch[1], Tensor)
    ):
        raise ValueError(
            "The default loss reads a batch as (inputs, targets) and computes the cross-entropy of "
            f"model(inputs); got a batch of type {type(batch).__name__}. {_PASS_LOSS_FN}"
        )
    inputs, targets = batch[0], batch[1]
    logits = model(inputs)
    if not isinstance(logits, Tensor):
        raise ValueError(
            "The default loss is the cross-entropy of model(inputs), which must be a tensor of "
            f"logits; the model returned a {type(logits).__name__}. {_PASS_LOSS_FN}"
        )
    if targets.is_floating_point():
        _check_soft_labels(logits, targets)
    return F.cross_entropy(logits, targets)


def _check_soft_labels(logits: Tensor, targets: Tensor) -> None:
    """Float targets are valid for cross-entropy only as class probabilities; say so either way."""
    probabilities = (
        targets.shape == logits.shape
        and targets.ndim >= 2
        and bool((targets >= 0).all())
        and bool(torch.allclose(targets.sum(dim=1), targets.new_ones(())))
    )
    if not probabilities:
        raise ValueError(
            f"The default loss is classification cross-entropy, but the targets are floats of shape "
            f"{tuple(targets.shape)} that are not class probabilities (a regression?). "
            f"{_PASS_LOSS_FN}"
        )
    warnings.warn(
        "The default loss reads float targets as class probabilities (soft labels); if that is not "
        f"what the model is trained on, pass `loss_fn`. {_PASS_LOSS_FN[5:]}",
        UserWarning,
        stacklevel=3,
    )


def normalize_batches(data: Any) -> list[Any]:
    """One batch or an iterable of batches as a list (``ValueError`` on none or a tensorless one)."""
    if isinstance(data, Tensor):
        raise ValueError(
            "`data` must be a batch such as (inputs, targets) or an iterable of batches, got a "
            "bare tensor; pass (inputs, targets)."
        )
    single = isinstance(data, tuple | list) and len(data) > 0 and isinstance(data[0], Tensor)
    batches = [data] if single or isinstance(data, dict) else list(data)
    if not batches:
        raise ValueError("`data` holds no batch; pass (inputs, targets) or a non-empty iterable.")
    for batch in batches:
        batch_size(batch)
    return batches


def batch_size(batch: Any) -> int:
    """The number of samples of a batch: the first dimension of its first tensor."""
    leaves, _ = tree_flatten(batch)
    for leaf in leaves:
        if isinstance(leaf, Tensor) and leaf.ndim > 0:
            if leaf.shape[0] == 0:
                raise ValueError("`data` holds an empty batch (first dimension 0).")
            return int(leaf.shape[0])
    raise ValueError(
        f"A batch must hold at least one tensor with a batch dimension, got {batch!r}."
    )


def detach_inference(batch: Any) -> Any:
    # Tensors made under `torch.inference_mode` cannot be saved for backward; clone them out.
    return tree_map(
        lambda leaf: leaf.clone() if isinstance(leaf, Tensor) and leaf.is_inference() else leaf,
        batch,
    )
