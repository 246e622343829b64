"""Which distributed strategies the monitor runs under, and the refusals of those it would get wrong."""

from __future__ import annotations

from dataclasses import replace

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

from lightning_shortcut.hessian.context import select_parameters
from lightning_shortcut.hessian.settings import HessianSettings
from lightning_shortcut.hessian.sharded import ShardingError


def refuse_strategies_without_double_backward(trainer: pl.Trainer) -> None:
    """Refuse, at setup, the strategies whose models have no double backward."""
    if isinstance(trainer.strategy, FSDPStrategy | DeepSpeedStrategy):
        raise MisconfigurationException(
            f"HessianEigenvalueMonitor needs double backward, which "
            f"{type(trainer.strategy).__name__} does not support. For a sharded model use "
            "ModelParallelStrategy with fully_shard (FSDP2), where the products are exact; "
            "otherwise DDP or a single device. hvp='finite_difference' needs only first "
            f"derivatives, but it has not been verified under {type(trainer.strategy).__name__}, "
            "which stays refused."
        )


def check_sharded_model(
    trainer: pl.Trainer, pl_module: pl.LightningModule, settings: HessianSettings
) -> bool:
    """Whether the model is sharded by ``fully_shard`` (decided here once per stage); refuse, at
    the start of a stage, a sharded model the engine would get wrong."""
    try:
        selection = select_parameters(pl_module, settings)
    except ShardingError as error:
        raise MisconfigurationException(f"HessianEigenvalueMonitor: {error}") from error
    if not selection.sharded:
        return False
    mesh_size = selection.params[0].device_mesh.size()
    if mesh_size != trainer.world_size:
        raise MisconfigurationException(
            f"HessianEigenvalueMonitor: the parameters are sharded over {mesh_size} of the "
            f"{trainer.world_size} ranks, which hold different Hessian samples; shard them "
            "over all ranks (fully_shard over the whole world, or data_parallel_size equal "
            "to the number of processes)."
        )
    return True


def run_settings(trainer: pl.Trainer, settings: HessianSettings, sharded: bool) -> HessianSettings:
    """``settings`` with the run's ``all_reduce`` (the strategy's sum over the ranks). Parameters
    sharded by ``fully_shard`` need none (the engine sums over their device mesh itself) and get
    no standard errors (the chunks' products would need whole vectors)."""
    all_reduce = None
    if trainer.world_size > 1 and not sharded:
        all_reduce = lambda t: trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
    return replace(settings, all_reduce=all_reduce, stderr=False if sharded else settings.stderr)
