"""Where every computation of the engine runs: state guarded, double backward on, the operator built.

:func:`hessian_operator` is the one sequence the public functions run their products in (guard,
build, release); :func:`hessian_context` and :func:`build_operator` are its two halves.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from lightning_shortcut.hessian._state import autograd_enabled, preserved_state
from lightning_shortcut.hessian.operator import (
    AllReduce,
    HessianOperator,
    Hvp,
    LossFn,
    ParamsSpec,
    cross_entropy_loss,
    normalize_batches,
    resolve_params,
)
from lightning_shortcut.hessian.sharded import FullyShardedHessianOperator, check_sharding, reshard

__all__ = ["Mode", "build_operator", "hessian_context", "hessian_operator"]

Mode = Literal["eval", "train"]


@contextmanager
def hessian_context(model: nn.Module, mode: Mode, *, clone_grads: bool = False):
    """Guard state, enable double backward and put the model in ``mode`` for a computation.

    Compiled modules (``torch.compile``, whole model or submodules) run eagerly inside: compiled
    autograd graphs have no double backward, and the eager model computes the same function.
    ``fully_shard`` (FSDP2) modules are resharded on entry (see
    :func:`~lightning_shortcut.hessian.sharded.reshard`).
    """
    if mode not in ("eval", "train"):
        raise ValueError(f"Unknown mode {mode!r}; expected 'eval' or 'train'.")
    reshard(model)  # fully_shard modules: the parameters are the sharded ones the optimizer holds
    with (
        preserved_state(model, clone_grads=clone_grads),
        autograd_enabled(),
        torch.compiler.set_stance("force_eager"),
    ):
        model.train(mode == "train")
        yield


def build_operator(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None,
    params: ParamsSpec,
    all_reduce: AllReduce | None,
    mode: Mode,
    seed: int,
    hvp: Hvp = "autograd",
) -> HessianOperator:
    """Validate the inputs and build the :class:`HessianOperator` (inside :func:`hessian_context`).

    In train mode the global RNG is reseeded before each forward so that dropout masks are the same
    in every product; :func:`hessian_context` restores the global RNG state afterwards.
    A model with ``fully_shard`` (FSDP2) modules gives a
    :class:`~lightning_shortcut.hessian.sharded.FullyShardedHessianOperator`, which holds the model
    unsharded until its ``release()``.
    """
    chosen = resolve_params(model, params)
    batches = normalize_batches(data)
    fixed_seed = seed if mode == "train" else None
    if check_sharding(model, chosen):
        if all_reduce is not None:
            raise ValueError(
                "The parameters are sharded by fully_shard: products are summed over their device "
                "mesh, so `all_reduce` must be None (each rank passes its own share of the data)."
            )
        return FullyShardedHessianOperator(
            model, batches, loss_fn or cross_entropy_loss, chosen, fixed_seed, hvp
        )
    return HessianOperator(
        model, batches, loss_fn or cross_entropy_loss, chosen, all_reduce, fixed_seed, hvp
    )


@contextmanager
def hessian_operator(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None,
    *,
    params: ParamsSpec,
    all_reduce: AllReduce | None,
    mode: Mode,
    seed: int,
    hvp: Hvp = "autograd",
    clone_grads: bool = False,
) -> Iterator[HessianOperator]:
    """The Hessian operator of a computation, inside :func:`hessian_context`, released on exit:
    the one sequence every public function of the engine runs its products in."""
    with hessian_context(model, mode, clone_grads=clone_grads):
        operator = build_operator(model, data, loss_fn, params, all_reduce, mode, seed, hvp)
        try:
            yield operator
        finally:
            operator.release()
