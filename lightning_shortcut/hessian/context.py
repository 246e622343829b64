"""Where every computation of the engine runs: :func:`hessian_operator` chooses the parameters
(:func:`select_parameters`), guards the state (:func:`hessian_context`), builds the operator and
frees it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_shortcut.hessian._state import autograd_enabled, preserved_state
from lightning_shortcut.hessian.batches import LossFn, cross_entropy_loss, normalize_batches
from lightning_shortcut.hessian.operator import HessianOperator
from lightning_shortcut.hessian.params import resolve_params
from lightning_shortcut.hessian.settings import HessianSettings
from lightning_shortcut.hessian.sharded import (
    FullyShardedHessianOperator,
    ShardingError,
    ShardLayout,
    check_sharding,
    fsdp_modules,
    reshard,
    unsharded_parameters,
)

__all__ = ["ParameterSelection", "hessian_context", "hessian_operator", "select_parameters"]


@dataclass(frozen=True)
class ParameterSelection:
    """The parameters a computation differentiates (``DTensor`` shards under ``fully_shard``) and
    the model's ``fully_shard`` modules, outermost first (none: not sharded)."""

    params: list[Tensor]
    fsdp_modules: list[nn.Module]

    @property
    def sharded(self) -> bool:
        """Whether the parameters are sharded by ``fully_shard``."""
        return bool(self.fsdp_modules)


def select_parameters(
    model: nn.Module, settings: HessianSettings, *, unsharded_only: str | None = None
) -> ParameterSelection:
    """Resolve ``settings.params`` on ``model`` (resharded first) and decide once whether it is
    sharded; a ``ShardingError`` on a sharding the engine, the caller ``unsharded_only``, the solver
    or ``all_reduce`` does not support."""
    modules = fsdp_modules(model)
    if modules and unsharded_only is not None:
        raise ShardingError(
            f"{unsharded_only} does not support models sharded by fully_shard (FSDP2); "
            "hessian_eigenvalues does."
        )
    reshard(modules)
    params = resolve_params(model, settings.params)
    if not check_sharding(model, params, modules):
        return ParameterSelection(params, [])
    if settings.solver.touches_grads:
        raise ShardingError(
            f"method={settings.method!r} runs on the model's gradients, which fully_shard reduces "
            "and shards; use a solver of the operator such as 'lanczos'."
        )
    if settings.all_reduce is not None:
        raise ShardingError(
            "The parameters are sharded by fully_shard: products are summed over their device "
            "mesh, so `all_reduce` must be None (each rank passes its own share of the data)."
        )
    return ParameterSelection(params, modules)


@contextmanager
def hessian_context(model: nn.Module, settings: HessianSettings, *, clone_grads: bool = False):
    """Guard state, allow double backward (compiled modules run eagerly), set ``settings.mode``."""
    with (
        preserved_state(model, clone_grads=clone_grads),
        autograd_enabled(),
        torch.compiler.set_stance("force_eager"),
    ):
        model.train(settings.mode == "train")
        yield


@contextmanager
def hessian_operator(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None,
    settings: HessianSettings,
    selection: ParameterSelection | None = None,
    *,
    clone_grads: bool = False,
    keep_graphs: bool = False,
) -> Iterator[HessianOperator]:
    """The Hessian operator of ``model``'s loss on ``data`` inside :func:`hessian_context`, its
    graphs freed on exit (a sharded ``selection``: the model held unsharded until then);
    ``clone_grads`` for a solver that calls ``.backward``."""
    if selection is None:
        selection = select_parameters(model, settings)
    batches, loss_fn = normalize_batches(data), loss_fn or cross_entropy_loss
    with hessian_context(model, settings, clone_grads=clone_grads), ExitStack() as stack:
        if selection.sharded:
            params, modules = selection.params, selection.fsdp_modules
            unsharded = stack.enter_context(unsharded_parameters(model, params, modules))
            layout = ShardLayout(params)
            operator = FullyShardedHessianOperator(
                model, batches, loss_fn, unsharded, layout, settings
            )
        else:
            operator = HessianOperator(
                model, batches, loss_fn, selection.params, settings, keep_graphs=keep_graphs
            )
        try:
            yield operator
        finally:
            operator.free_graph()
