"""``StudyPart``: one part of the study (:data:`~lightning_shortcut.study.runner.PARTS`), which
runs in steps and reports tables and figures."""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_shortcut.data.base import TensorDataModule
from lightning_shortcut.data.registry import DatasetInfo
from lightning_shortcut.hessian import HessianSpectrum, hessian_eigenvalues
from lightning_shortcut.init import init_strategy
from lightning_shortcut.residual import residual_parameters
from lightning_shortcut.study.config import StudyConfig

__all__ = ["DIVERGED_LOSS", "Step", "StudyPart", "Table", "diverged"]

#: A run diverged when its training loss is not finite or exceeds this.
DIVERGED_LOSS = 1e6


def diverged(loss: float) -> bool:
    """Whether a training loss says the run diverged (not finite, or above :data:`DIVERGED_LOSS`)."""
    return not math.isfinite(loss) or loss > DIVERGED_LOSS


#: a unit of work and the progress bar's description of it; the work returns its result (picklable:
#: a step may run in another process), which the part's :meth:`StudyPart.keep` stores
Step = tuple[str, Callable[[], Any]]


@dataclass
class Table:
    """One table of the study: the CSV ``file_name``, its section ``title`` in ``summary.md``, its
    ``label`` on the console, the ``rows`` (dicts with the same keys) and the ``columns`` that
    ``summary.md`` shows (default: all)."""

    file_name: str
    title: str
    label: str
    rows: list[dict[str, Any]]
    columns: Sequence[str] | None = None


class StudyPart(ABC):
    """A part of the study on one ``dataset`` (its registry entry and its ``datamodule``, set up
    for ``"fit"``): its :meth:`steps` run first, then :meth:`tables` and :meth:`figures` report."""

    def __init__(
        self, config: StudyConfig, dataset: DatasetInfo, datamodule: TensorDataModule
    ) -> None:
        self.config = config
        self.dataset = dataset
        self.datamodule = datamodule
        self.results: list[Any] = []

    @abstractmethod
    def steps(self) -> list[Step]:
        """The work, as (description, callable) pairs. Each callable seeds what it draws and
        returns its result without storing it, so that steps may run in any process and order."""

    @staticmethod
    def _each(description: str, work: Callable[..., Any], *axes: Sequence[Any]) -> list[Step]:
        """One step ``work(*values)`` per combination of the ``axes``' values, in order."""
        combinations = itertools.product(*axes)
        return [(description.format(*values), partial(work, *values)) for values in combinations]

    def keep(self, result: Any) -> None:
        """Store one step's result in :attr:`results` (called in the steps' order)."""
        self.results.append(result)

    def run(self) -> None:
        """Run every step here, in order, and keep the results."""
        for _, work in self.steps():
            self.keep(work())

    @abstractmethod
    def tables(self) -> list[Table]:
        """The results as tables."""

    def figures(self) -> list[Path]:
        """Write the part's figures into ``config.out``; returns their paths."""
        return []

    def _model(
        self, shortcut_depth: int, init: str, num_units: int, lr: float | None = None
    ) -> pl.LightningModule:
        """The task's model, seeded, its branches initialized by ``init`` (``"small"`` at
        ``small_scale``), trained by SGD at ``lr`` (default: the study's)."""
        pl.seed_everything(self.config.seed, verbose=False)
        model = self.dataset.task.build_model(
            self.datamodule,
            layer=self.dataset.layer,
            num_units=num_units,
            shortcut_depth=shortcut_depth,
            lr=self.config.lr if lr is None else lr,
        )
        overrides = {"scale": self.config.small_scale} if init == "small" else {}
        return init_strategy(init, **overrides)(model)

    def _both_ends(self, model: pl.LightningModule, max_iter: int) -> HessianSpectrum:
        """The residual Hessian's extreme ``|eigenvalue|`` on the Hessian batch, at ``tol=1e-6``
        where the closed forms give a number to check, else ``1e-3`` (a classifier's is singular
        at the zero point, which ``1e-6`` takes thousands of steps to say)."""
        tol = 1e-6 if self.dataset.task.closed_form else 1e-3
        loss_fn, params = self.dataset.task.loss_fn, residual_parameters(model)
        batch = self._hessian_batch()
        return hessian_eigenvalues(
            model, batch, loss_fn, params=params, min_abs=True, tol=tol, max_iter=max_iter
        )

    def _hessian_batch(self) -> tuple[Tensor, Tensor]:
        """The first ``hessian_samples`` training samples: the batch every Hessian is taken on."""
        inputs, targets = self.datamodule.train_set.tensors
        count = self.config.hessian_samples
        return inputs[:count], targets[:count]

    def _sgd_step(self, model: nn.Module, optimizer: Optimizer, batches: Iterator[Any]) -> float:
        """One SGD step on the next of ``batches`` (none once diverged); returns the loss."""
        loss = self.dataset.task.loss_fn(model, next(batches))
        value = float(loss.detach())
        if not diverged(value):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return value

    def _minibatches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The study's shuffled training minibatches (full ones only), epoch after epoch."""
        generator = torch.Generator().manual_seed(self.config.seed)
        inputs, targets = self.datamodule.train_set.tensors
        size = self.config.batch_size
        if len(inputs) < size:
            raise ValueError(
                f"batch_size={size} is larger than the {len(inputs)} training samples of "
                f"{self.config.data!r}; pass a batch_size of at most {len(inputs)}."
            )
        while True:
            order = torch.randperm(len(inputs), generator=generator)
            for begin in range(0, len(order) - size + 1, size):
                index = order[begin : begin + size]
                yield inputs[index], targets[index]
