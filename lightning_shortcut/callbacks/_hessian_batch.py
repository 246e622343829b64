"""The Hessian batch: the first ``num_samples`` samples of a stage's data in dataset order (no RNG
drawn), split across ranks, chunked, on the strategy's device in the precision's input dtype."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils._pytree import tree_map
from torch.utils.data import DataLoader, IterableDataset

from lightning_shortcut.hessian._state import preserved_rng, preserved_state
from lightning_shortcut.hessian.operator import batch_size as count_samples
from lightning_shortcut.hessian.operator import cross_entropy_loss

__all__ = ["check_loss", "gather_hessian_batch", "resolve_loss_fn", "stage_dataloader"]


def stage_dataloader(
    trainer: pl.Trainer, data: DataLoader | pl.LightningDataModule | None, stage: str
) -> Any:
    """The dataloader of ``stage``: ``data`` if given (or a datamodule's loader for the stage),
    else the Trainer's first one (a ``ValueError`` where it has none)."""
    if isinstance(data, pl.LightningDataModule):
        data.setup(stage)
        return {
            "fit": data.train_dataloader,
            "validate": data.val_dataloader,
            "test": data.test_dataloader,
        }[stage]()
    if data is not None:
        return data
    loaders = {
        "fit": trainer.train_dataloader,
        "validate": trainer.val_dataloaders,
        "test": trainer.test_dataloaders,
    }[stage]
    if isinstance(loaders, Sequence) and not isinstance(loaders, DataLoader):
        loaders = loaders[0] if loaders else None
    elif isinstance(loaders, dict):
        loaders = next(iter(loaders.values()), None)
    if loaders is None:
        raise ValueError(f"HessianEigenvalueMonitor found no {stage} dataloader; pass `data=`.")
    return loaders


def gather_hessian_batch(
    trainer: pl.Trainer, loader: Any, num_samples: int, batch_size: int | None, stage: str
) -> list[Any]:
    """This rank's share of the first ``num_samples`` samples of ``loader``, on the device: of a
    map-style dataset rank ``r`` of ``w`` takes samples ``r, r + w, ...`` in chunks of
    ``batch_size``; any other loader is iterated until ``ceil(num_samples / w)`` samples. A
    ``ValueError`` if the data holds no sample."""
    rank, world = trainer.global_rank, trainer.world_size
    with preserved_rng():
        if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset):
            total = min(num_samples, len(loader.dataset))
            share = DataLoader(
                loader.dataset,
                batch_size=batch_size or num_samples,
                sampler=list(range(rank, total, world)),
                collate_fn=loader.collate_fn,
            )
            batches = list(share)
        else:
            batches = _take(loader, math.ceil(num_samples / world))
    if not batches:
        raise ValueError(f"The {stage} data holds no sample for the Hessian batch.")
    # as the Trainer prepares training batches (64-true: float64, bf16-true: bfloat16)
    convert = trainer.precision_plugin.convert_input
    return [convert(trainer.strategy.batch_to_device(batch)) for batch in batches]


def samples_over_ranks(trainer: pl.Trainer, batches: list[Any]) -> int:
    """The samples in a Hessian batch over all ranks (each rank holds ``batches``)."""
    return sum(count_samples(batch) for batch in batches) * trainer.world_size


def check_loss(
    loss_fn: Callable[[Any, Any], Any], pl_module: pl.LightningModule, batch: Any
) -> None:
    """Raise a ``ValueError`` unless ``loss_fn(pl_module, batch)`` is a scalar tensor: once, in
    eval mode without gradients and the module's state restored, to fail before the solver does."""
    with torch.no_grad(), preserved_state(pl_module):
        pl_module.eval()
        loss = loss_fn(pl_module, batch)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError("`loss_fn` must return a scalar tensor for a batch.")


def _head(leaf: Any, count: int) -> Any:
    return leaf[:count] if isinstance(leaf, Tensor) and leaf.ndim > 0 else leaf


def _take(loader: Iterable[Any], num_samples: int) -> list[Any]:
    """Iterate ``loader`` until ``num_samples`` samples, trimming the last batch."""
    batches: list[Any] = []
    count = 0
    for batch in loader:
        size = count_samples(batch)
        keep = min(size, num_samples - count)
        if keep < size:
            batch = tree_map(partial(_head, count=keep), batch)
        batches.append(batch)
        count += keep
        if count >= num_samples:
            break
    return batches


def resolve_loss_fn(loss_fn: Callable | None, pl_module: pl.LightningModule) -> Callable:
    """``loss_fn`` if given, else the module's ``hessian_loss(batch)``, else cross-entropy."""
    if loss_fn is not None:
        return loss_fn
    if callable(getattr(pl_module, "hessian_loss", None)):
        return _call_hessian_loss
    return cross_entropy_loss


def _call_hessian_loss(pl_module: pl.LightningModule, batch: Any) -> Tensor:
    return pl_module.hessian_loss(batch)
