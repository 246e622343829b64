"""Where every computation of the engine runs: parameters chosen, state guarded, the operator built.

:func:`hessian_operator` is the one sequence the public functions run their products in (choose the
parameters, guard, build, free); :func:`select_parameters` and :func:`hessian_context` are its
steps. Whether a model is sharded by ``fully_shard`` is decided once,
in :func:`select_parameters`, and carried by its :class:`ParameterSelection`.
"""

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
    """The parameters a computation differentiates, and how the model holds them.

    Attributes:
        params: the parameters (``DTensor`` shards under ``fully_shard``), resolved and checked.
        fsdp_modules: the model's ``fully_shard`` modules (FSDP2), outermost first; empty when the
            model is not sharded.
    """

    params: list[Tensor]
    fsdp_modules: list[nn.Module]

    @property
    def sharded(self) -> bool:
        """Whether the parameters are sharded by ``fully_shard`` (products on sharded vectors)."""
        return bool(self.fsdp_modules)


def select_parameters(
    model: nn.Module, settings: HessianSettings, *, unsharded_only: str | None = None
) -> ParameterSelection:
    """Resolve ``settings.params`` on ``model`` and decide, once, whether it is sharded.

    ``fully_shard`` modules are resharded first, so that the parameters are the sharded ones the
    optimizer holds (see :func:`~lightning_shortcut.hessian.sharded.reshard`).

    Args:
        model: the model.
        settings: the measurement's settings.
        unsharded_only: the name of a caller that does not support models sharded by
            ``fully_shard``, refused here with it.

    Raises:
        ValueError: on ``params`` that are not the model's (see
            :func:`~lightning_shortcut.hessian.params.resolve_params`).
        ShardingError: (a ``ValueError``) on a sharding the engine does not support
            (:func:`~lightning_shortcut.hessian.sharded.check_sharding`) and, on a sharded model,
            a caller named by ``unsharded_only``, a solver that runs on the model's gradients or
            an ``all_reduce``.
    """
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
    """Guard state, enable double backward and put the model in ``settings.mode`` for a computation.

    Compiled modules (``torch.compile``, whole model or submodules) run eagerly inside: compiled
    autograd graphs have no double backward, and the eager model computes the same function.
    """
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
    """The Hessian operator of ``model``'s loss on ``data`` over the selected parameters, inside
    :func:`hessian_context`, its graphs freed on exit: the one sequence every public function of
    the engine runs its products in.

    In train mode the global RNG is reseeded before each forward so that dropout masks are the same
    in every product; :func:`hessian_context` restores the global RNG state afterwards. A sharded
    selection gives a :class:`~lightning_shortcut.hessian.sharded.FullyShardedHessianOperator`, the
    model held unsharded until exit.

    Args:
        selection: the parameters, where the caller has selected them already (default:
            :func:`select_parameters` here).
        clone_grads: snapshot gradient values (a solver that calls ``.backward``).
        keep_graphs: keep every batch's first-order graph (see
            :class:`~lightning_shortcut.hessian.HessianOperator`).
    """
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
