"""``HessianEigenvalueMonitor``: the loss Hessian's extreme eigenvalues, logged during training."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torch.utils._pytree import tree_map
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

from lightning_shortcut.hessian._state import preserved_rng, preserved_state
from lightning_shortcut.hessian.operator import batch_size as count_samples
from lightning_shortcut.hessian.operator import cross_entropy_loss
from lightning_shortcut.hessian.spectrum import (
    HessianSpectrum,
    hessian_eigenvalues,
    validate_solver_args,
)
from lightning_shortcut.residual import check_positive_int, residual_parameters

__all__ = ["HessianEigenvalueMonitor"]

ParamsSpec = Literal["all", "residual"] | Callable[[nn.Module], Iterable[Tensor]] | None
_STAGES = ("fit", "validate", "test")
#: The share of training wall time a self-scheduling monitor plans for by default: half the 10% it
#: may add, leaving room for estimates that miss and for costs its clock cannot see.
DEFAULT_MAX_OVERHEAD = 0.05
# The time budget's clock; a module attribute so tests can make the schedule deterministic.
_clock = time.perf_counter


class HessianEigenvalueMonitor(Callback):
    r"""Compute and log the top and bottom eigenvalues of the loss Hessian during training.

    Add it to any ``Trainer``: it needs no change to the model and does not change training. The
    Hessian is that of the mean loss over a fixed *Hessian batch*: the first ``num_samples`` samples
    of the train dataloader's dataset (in dataset order, so no RNG is drawn), taken once at the start
    of fitting and kept on the module's device, so successive measurements differ only by the
    weights. Everything numerical is :func:`~lightning_shortcut.hessian.hessian_eigenvalues`; this
    class schedules, gathers data and logs.

    Logged at ``step = trainer.global_step`` to every logger of the Trainer (rank zero only):
    ``{log_prefix}max_eigenvalue``, ``min_eigenvalue``, ``condition_number`` and
    ``min_abs_eigenvalue`` (with ``min_abs=True``), ``top_<i>``/``bottom_<i>`` (for ``k > 1``),
    ``num_hvps``, ``seconds`` and ``converged``. Measurements made inside ``trainer.validate`` or
    ``trainer.test`` use ``{log_prefix}validate/...`` and ``{log_prefix}test/...``. Every measurement
    is also appended to :attr:`history` (a list of dicts with ``step``, ``epoch``, ``stage`` and the
    values), which is saved in checkpoints, so a resumed run continues the same schedule and history.

    Guarantees: training is bit-for-bit the same with or without the monitor (no global RNG draws, no
    buffer, ``.grad`` or optimizer change, train/eval modes restored); at most one measurement per
    ``global_step`` (gradient accumulation calls batch hooks several times); sanity checking and
    ``fast_dev_run`` are skipped. Under DDP each rank holds its share of the Hessian batch and every
    product is all-reduced, so every rank gets the spectrum of the union of the data. A non-finite loss
    or a solver that did not converge is logged (NaN where there is no value) and warned about once;
    training goes on.

    Schedule: by default (neither ``every_n_steps`` nor ``every_n_epochs``) the monitor schedules
    itself within a time budget: after an optimizer step it measures if the wall time spent measuring
    so far, plus the previous measurement's time as the estimate of this one, stays within
    ``max_overhead`` (5%) of the training wall time so far (everything else the run did since
    ``on_train_start``: steps, validation, checkpoints). It thus measures as often as the budget
    allows: often when measurements are cheap next to training steps, rarely when they are not. The
    measurement at the initial point is always made and counts against the budget, so a run shorter
    than ``1 / max_overhead`` times that measurement exceeds the budget by it. The budget is kept in checkpoints;
    under DDP rank zero decides and broadcasts, so every rank measures at the same steps. Which steps
    are measured depends on timing; for the same steps in every run, give ``every_n_steps`` or
    ``every_n_epochs``, a fixed schedule that the budget does not cut unless ``max_overhead`` is set.

    Cost: one measurement costs about ``num_hvps`` Hessian-vector products on ``num_samples``
    samples, each about 1.5-2.5 times a training step's forward and backward on that many samples
    (more for convolutions on a GPU; see ``benchmarks/``). Lanczos needs roughly 10-40 products at
    ``tol=1e-2`` for one eigenvalue at each end, grows slowly as ``tol`` shrinks, runs once more per
    extra ``top_k``/``bottom_k``, and ``min_abs`` can need hundreds. Cost is linear in
    ``num_samples``; ``batch_size`` bounds memory. Under the time budget a costlier measurement means
    fewer measurements, not a slower run.

    Args:
        every_n_steps: measure every this many optimizer steps (``None``: not by steps).
        every_n_epochs: measure at the end of every this many training epochs (``None``: not by epochs).
        max_overhead: the share of training wall time the monitor may use, e.g. ``0.05``; a due
            measurement that would exceed it is skipped, and ``0`` keeps only the one at fit start.
            ``None`` (default): ``0.05`` when the monitor schedules itself (measured wall-time cost on
            the recipes: at most about 10%, see ``benchmarks/``), no limit for a fixed
            ``every_n_steps``/``every_n_epochs`` schedule.
        at_fit_start: measure at the initial point, before the first step (the paper's moment).
        num_samples: size of the Hessian batch (over all ranks).
        batch_size: chunk size of the Hessian batch, to bound memory (default: one chunk, whose
            first-order graph is then built once per measurement and reused by every product;
            with several chunks each product recomputes it for every chunk).
        method: ``"lanczos"``, ``"power"`` or ``"pyhessian"``.
        top_k: number of largest eigenvalues.
        bottom_k: number of smallest eigenvalues.
        min_abs: also the smallest ``|eigenvalue|`` and the condition number (Lanczos only).
        params: ``"all"``/``None`` (every trainable parameter), ``"residual"`` (the ResidualStack
            branch parameters, the paper's quantity) or a callable ``module -> parameters``.
        tol: residual tolerance relative to the largest ``|eigenvalue|``.
        max_iter: products per eigenvalue run.
        loss_fn: ``loss_fn(pl_module, batch) -> scalar`` (default: cross-entropy of
            ``pl_module(inputs)`` against ``targets``).
        log_prefix: prefix of the logged names.
        data: a ``DataLoader`` or ``LightningDataModule`` to draw the Hessian batch from instead of the
            Trainer's train dataloader.
        stages: where to measure: ``"fit"`` and, at the start of ``trainer.validate``/``trainer.test``,
            ``"validate"``/``"test"`` (on the first ``num_samples`` samples of their dataloader).
        mode: ``"eval"`` (dropout off, BatchNorm running statistics) or ``"train"``.
        seed: seed of the solver's private generator.

    Raises:
        ValueError: on a bad argument, naming it and what is accepted; at the start of fitting, on a
            batch the default loss cannot read or a ``params="residual"`` model without ResidualStack.
        MisconfigurationException: under FSDP or DeepSpeed, which do not support double backward.

    Example::

        # as often as 5% of the training time allows
        trainer = Trainer(callbacks=[HessianEigenvalueMonitor(params="residual")])
        # every 100 steps, whatever it costs
        trainer = Trainer(callbacks=[HessianEigenvalueMonitor(every_n_steps=100)])
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        max_overhead: float | None = None,
        at_fit_start: bool = True,
        num_samples: int = 512,
        batch_size: int | None = None,
        method: Literal["lanczos", "power", "pyhessian"] = "lanczos",
        top_k: int = 1,
        bottom_k: int = 1,
        min_abs: bool = False,
        params: ParamsSpec = None,
        tol: float = 1e-2,
        max_iter: int | None = 100,
        loss_fn: Callable[[pl.LightningModule, Any], Tensor] | None = None,
        log_prefix: str = "hessian/",
        data: DataLoader | pl.LightningDataModule | None = None,
        stages: Sequence[str] = ("fit",),
        mode: Literal["eval", "train"] = "eval",
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None:
                check_positive_int(name, value)
        if max_overhead is not None and not (
            isinstance(max_overhead, int | float)
            and not isinstance(max_overhead, bool)
            and 0 <= max_overhead < math.inf
        ):
            raise ValueError(
                "`max_overhead` must be None or a non-negative finite share of training time "
                f"(such as 0.05), got {max_overhead!r}."
            )
        check_positive_int("num_samples", num_samples)
        if batch_size is not None:
            check_positive_int("batch_size", batch_size)
        validate_solver_args(method, top_k, bottom_k, min_abs, tol, max_iter)
        if not (params is None or params in ("all", "residual") or callable(params)):
            raise ValueError(
                f"`params` must be None, 'all', 'residual' or a callable, got {params!r}."
            )
        stages = (stages,) if isinstance(stages, str) else tuple(stages)
        unknown = [s for s in stages if s not in _STAGES]
        if unknown or not stages:
            raise ValueError(
                f"`stages` must be a non-empty subset of {list(_STAGES)}, got {stages!r}."
            )
        if mode not in ("eval", "train"):
            raise ValueError(f"Unknown mode {mode!r}; expected 'eval' or 'train'.")
        if data is not None and not isinstance(data, DataLoader | pl.LightningDataModule):
            raise TypeError(
                f"`data` must be a DataLoader or a LightningDataModule, got {type(data).__name__}."
            )
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.max_overhead = max_overhead
        self.at_fit_start = at_fit_start
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.method = method
        self.top_k = top_k
        self.bottom_k = bottom_k
        self.min_abs = min_abs
        self.params = params
        self.tol = tol
        self.max_iter = max_iter
        self.loss_fn = loss_fn
        self.log_prefix = log_prefix
        self.data = data
        self.stages = stages
        self.mode = mode
        self.seed = seed
        self.history: list[dict[str, Any]] = []
        self._last_step: int = -1
        self._last_checked_step: int = -1
        # the time budget: wall seconds of training and of the monitor, the last measurement's cost
        self._train_seconds = 0.0
        self._monitor_seconds = 0.0
        self._last_cost = 0.0
        self._mark = 0.0
        self._batches: dict[str, list[Any]] = {}
        self._warned: set[str] = set()

    @property
    def self_scheduling(self) -> bool:
        """Whether the monitor picks its steps within the time budget (no fixed schedule given)."""
        return self.every_n_steps is None and self.every_n_epochs is None

    @property
    def overhead_budget(self) -> float | None:
        """The share of training time the monitor may use (``None``: no limit)."""
        if self.max_overhead is not None:
            return float(self.max_overhead)
        return DEFAULT_MAX_OVERHEAD if self.self_scheduling else None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            every_n_steps=self.every_n_steps,
            every_n_epochs=self.every_n_epochs,
            method=self.method,
            log_prefix=self.log_prefix,
        )

    # ----------------------------------------------------------------------------- Lightning hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy, FSDPStrategy | DeepSpeedStrategy):
            raise MisconfigurationException(
                f"HessianEigenvalueMonitor needs double backward, which "
                f"{type(trainer.strategy).__name__} does not support; use DDP or a single device."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_skip(trainer, "fit"):
            return
        self._mark = _clock()
        self._batches["fit"] = self._gather(trainer, pl_module, "fit")
        self._account(monitor=True)
        if self.at_fit_start and trainer.global_step == 0:
            self._measure(trainer, pl_module, "fit")

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if self._should_skip(trainer, "fit") or step in (0, self._last_checked_step):
            return
        self._last_checked_step = step  # gradient accumulation calls this hook several times a step
        due = self.self_scheduling or (
            self.every_n_steps is not None and step % self.every_n_steps == 0
        )
        if due and self._within_budget(trainer):
            self._measure(trainer, pl_module, "fit")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_skip(trainer, "fit") or self.every_n_epochs is None:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 and self._within_budget(trainer):
            self._measure(trainer, pl_module, "fit")

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and not self._should_skip(trainer, "validate"):
            self._batches["validate"] = self._gather(trainer, pl_module, "validate")
            self._measure(trainer, pl_module, "validate")

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_skip(trainer, "test"):
            self._batches["test"] = self._gather(trainer, pl_module, "test")
            self._measure(trainer, pl_module, "test")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [dict(record) for record in self.history],
            "last_step": self._last_step,
            "train_seconds": self._train_seconds,
            "monitor_seconds": self._monitor_seconds,
            "last_cost": self._last_cost,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(record) for record in state_dict.get("history", [])]
        self._last_step = int(state_dict.get("last_step", -1))
        self._train_seconds = float(state_dict.get("train_seconds", 0.0))
        self._monitor_seconds = float(state_dict.get("monitor_seconds", 0.0))
        self._last_cost = float(state_dict.get("last_cost", 0.0))

    # ----------------------------------------------------------------------------- decisions

    def _should_skip(self, trainer: pl.Trainer, stage: str) -> bool:
        return stage not in self.stages or trainer.sanity_checking or bool(trainer.fast_dev_run)

    def _account(self, monitor: bool) -> float:
        """Book the wall time since the last mark to the monitor or to training; return it."""
        now = _clock()
        seconds, self._mark = now - self._mark, now
        if monitor:
            self._monitor_seconds += seconds
        else:
            self._train_seconds += seconds
        return seconds

    def _within_budget(self, trainer: pl.Trainer) -> bool:
        """Whether a measurement now keeps the monitor within its share of training time."""
        budget = self.overhead_budget
        if budget is None or budget == 0:  # the same on every rank: no clock, no collective
            return budget is None
        self._account(monitor=False)
        allowed = self._monitor_seconds + self._last_cost <= budget * self._train_seconds
        if trainer.world_size > 1:  # every rank must take part in the products, or none
            allowed = trainer.strategy.broadcast(allowed, src=0)
        return bool(allowed)

    # ----------------------------------------------------------------------------- data

    def _source(self, trainer: pl.Trainer, stage: str) -> Any:
        if self.data is not None:
            if isinstance(self.data, pl.LightningDataModule):
                self.data.setup(stage)
                return {
                    "fit": self.data.train_dataloader,
                    "validate": self.data.val_dataloader,
                    "test": self.data.test_dataloader,
                }[stage]()
            return self.data
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

    def _gather(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> list[Any]:
        """This rank's share of the first ``num_samples`` samples, on the module's device."""
        loader = self._source(trainer, stage)
        rank, world = trainer.global_rank, trainer.world_size
        chunk = self.batch_size or self.num_samples
        with preserved_rng():
            if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset):
                total = min(self.num_samples, len(loader.dataset))
                indices = list(range(rank, total, world))
                subset = DataLoader(
                    loader.dataset, batch_size=chunk, sampler=indices, collate_fn=loader.collate_fn
                )
                batches = list(subset)
            else:
                batches = _take(loader, math.ceil(self.num_samples / world))
        if not batches:
            raise ValueError(f"The {stage} data holds no sample for the Hessian batch.")
        batches = [trainer.strategy.batch_to_device(batch) for batch in batches]
        self._check_loss(pl_module, batches[0])
        return batches

    def _check_loss(self, pl_module: pl.LightningModule, batch: Any) -> None:
        loss_fn = self.loss_fn or cross_entropy_loss
        with torch.no_grad(), preserved_state(pl_module):
            pl_module.eval()
            loss = loss_fn(pl_module, batch)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError("`loss_fn` must return a scalar tensor for a batch.")

    # ----------------------------------------------------------------------------- measuring

    def _resolve_params(self, pl_module: pl.LightningModule) -> list[Tensor] | None:
        if self.params is None or self.params == "all":
            return None
        if self.params == "residual":
            params = residual_parameters(pl_module)
            if not params:
                raise ValueError(
                    f"params='residual' but {type(pl_module).__name__} contains no ResidualStack."
                )
            return params
        return list(self.params(pl_module))

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        step = trainer.global_step
        if stage == "fit":
            if step == self._last_step:
                return
            self._last_step = step
            self._account(monitor=False)
            self._compute(trainer, pl_module, stage)
            self._last_cost = self._account(monitor=True)
        else:
            self._compute(trainer, pl_module, stage)

    def _compute(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        step = trainer.global_step
        batches = self._batches.get(stage)
        if batches is None:
            batches = self._batches[stage] = self._gather(trainer, pl_module, stage)
        world_size = trainer.world_size
        all_reduce = (
            (lambda t: trainer.strategy.reduce(t, reduce_op="sum")) if world_size > 1 else None
        )
        try:
            spectrum = hessian_eigenvalues(
                pl_module,
                batches,
                self.loss_fn or cross_entropy_loss,
                method=self.method,
                top_k=self.top_k,
                bottom_k=self.bottom_k,
                min_abs=self.min_abs,
                params=self._resolve_params(pl_module),
                tol=self.tol,
                max_iter=self.max_iter,
                seed=self.seed,
                mode=self.mode,
                all_reduce=all_reduce,
            )
        except (
            RuntimeError,
            torch.OutOfMemoryError,
        ) as error:  # numerical or memory: keep training
            self._warn_once(
                "error",
                f"HessianEigenvalueMonitor could not compute the spectrum at step {step}: {error}",
            )
            spectrum = self._nan_spectrum()
        values = spectrum.as_dict()
        if any(
            math.isnan(v)
            for k, v in values.items()
            if k not in ("seconds", "num_hvps", "converged")
        ):
            self._warn_once(
                "nan",
                f"HessianEigenvalueMonitor: non-finite loss or spectrum at step {step}; logged as NaN.",
            )
        elif not spectrum.converged:
            self._warn_once(
                "not_converged",
                f"HessianEigenvalueMonitor: the solver did not reach tol={self.tol} within "
                f"max_iter={self.max_iter} at step {step}; the logged values are its best estimates.",
            )
        self.history.append(
            {"step": step, "epoch": trainer.current_epoch, "stage": stage, **values}
        )
        self._log(trainer, stage, values)

    def _nan_spectrum(self) -> HessianSpectrum:
        nan = math.nan
        return HessianSpectrum(
            top=[nan] * self.top_k,
            bottom=[nan] * self.bottom_k,
            max=nan if self.top_k else None,
            min=nan if self.bottom_k else None,
            min_abs=nan if self.min_abs else None,
            condition_number=nan if self.min_abs else None,
            converged=False,
            method=self.method,
        )

    def _log(self, trainer: pl.Trainer, stage: str, values: dict[str, float]) -> None:
        prefix = self.log_prefix if stage == "fit" else f"{self.log_prefix}{stage}/"
        metrics = {f"{prefix}{name}": value for name, value in values.items()}
        for name, value in metrics.items():
            trainer.callback_metrics[name] = torch.tensor(value)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            rank_zero_warn(message)


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
