"""Hessian-vector products of a model sharded by FSDP2 (``fully_shard``), on vectors sharded like
the parameters (:class:`ShardLayout`); plain FSDP2 only (the docs' strategies page)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_shortcut.hessian.batches import LossFn
from lightning_shortcut.hessian.operator import HessianOperator
from lightning_shortcut.hessian.settings import HessianSettings

__all__ = [
    "FullyShardedHessianOperator",
    "ShardLayout",
    "ShardingError",
    "check_sharding",
    "fsdp_modules",
    "reshard",
    "unsharded_parameters",
]


class ShardingError(ValueError):
    """A sharded model the engine cannot measure as asked; a ``ValueError``."""


def _dtensor_type() -> type | None:
    if not dist.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def check_sharding(
    model: nn.Module, params: Sequence[Tensor], modules: Sequence[nn.Module]
) -> bool:
    """Whether the Hessian over ``params`` is taken the ``fully_shard`` way; a
    :class:`ShardingError` for any sharding other than plain FSDP2."""
    names = {id(param): name for name, param in model.named_parameters()}
    dtensor = _dtensor_type()
    if not modules:
        for param in params:
            if dtensor is not None and isinstance(param, dtensor):
                raise ShardingError(
                    f"Parameter {names.get(id(param))!r} is a DTensor but the model has no "
                    "fully_shard module (tensor parallelism?); the Hessian supports FSDP2 "
                    "sharding (fully_shard) only."
                )
        return False
    from torch.distributed.tensor import Shard

    mesh = None
    for param in params:
        name = names.get(id(param))
        if not isinstance(param, dtensor):
            raise ShardingError(
                f"Parameter {name!r} is a plain tensor in a model sharded by fully_shard; the "
                "Hessian of a partly sharded model is not supported: apply fully_shard to the "
                "whole model (the root module too) or pass `params` that are all sharded."
            )
        placements = tuple(param.placements)
        if param.device_mesh.ndim != 1 or placements != (Shard(0),):
            raise ShardingError(
                f"Parameter {name!r} is a DTensor with placements {placements} on a "
                f"{param.device_mesh.ndim}-D mesh; the Hessian supports plain FSDP2 (Shard(0) on "
                "a 1-D mesh), not tensor parallelism or HSDP."
            )
        if mesh is None:
            mesh = param.device_mesh
        elif param.device_mesh != mesh:
            raise ShardingError(
                f"Parameter {name!r} is sharded over another device mesh than the first "
                "parameter's; the Hessian supports one mesh."
            )
    return True


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    """The ``fully_shard`` modules of ``model`` (FSDP2), outermost first."""
    if not dist.is_available():
        return []
    from torch.distributed.fsdp import FSDPModule

    return [module for module in model.modules() if isinstance(module, FSDPModule)]


def reshard(modules: Sequence[nn.Module]) -> None:
    """Reshard ``fully_shard`` modules, which a forward without backward can leave unsharded."""
    for module in modules:
        module.reshard()


# FSDP2 has setters but no getters for these: read from its private state (a test checks)
_GROUP_SETTINGS = (
    "post_forward_mesh_info",
    "reshard_after_backward",
    "reduce_grads",
    "all_reduce_grads",
)


def _param_groups(module: nn.Module) -> list[Any]:
    return list(module._get_fsdp_state()._fsdp_param_groups)


@contextmanager
def unsharded_parameters(
    model: nn.Module, params: Sequence[Tensor], modules: Sequence[nn.Module]
) -> Iterator[list[Tensor]]:
    """Yield the unsharded tensor of each of ``params`` (every module all-gathered and kept; on exit
    resharded, its settings restored); a :class:`ShardingError` where no module manages one."""
    names = {id(param): name for name, param in model.named_parameters()}
    chosen = [names[id(param)] for param in params]
    roots = []
    for module in modules:  # outermost first: an initialized root marks the modules inside it
        state = module._get_fsdp_state()
        if state._is_root is None:  # set up as training does: the settings saved are its
            state._lazy_init()
        if state._is_root:
            roots.append(module)
    saved = []
    for module in modules:
        groups = [
            (group, {name: getattr(group, name) for name in _GROUP_SETTINGS})
            for group in _param_groups(module)
        ]
        saved.append((module, module._get_fsdp_state()._auto_reshard_after_forward, groups))
    try:
        for module in modules:
            module.set_reshard_after_forward(False, recurse=False)
            module.set_reshard_after_backward(False, recurse=False)
            module.set_requires_gradient_sync(False, recurse=False)
        for module in modules:
            module.unshard()
        unsharded = dict(model.named_parameters())
        dtensor = _dtensor_type()
        for name in chosen:
            if isinstance(unsharded[name], dtensor):
                raise ShardingError(
                    f"Parameter {name!r} is a DTensor that no fully_shard module manages; the "
                    "Hessian supports parameters sharded by fully_shard."
                )
        yield [unsharded[name] for name in chosen]
    finally:
        for root in roots:  # what a forward or backward aborted mid-flight leaves behind
            reset = getattr(root, "reset_iter_state", None)
            if callable(reset):
                reset()
        for module, auto, groups in saved:
            module.reshard()
            module._get_fsdp_state()._auto_reshard_after_forward = auto
            for group, settings in groups:
                for name, value in settings.items():
                    setattr(group, name, value)


class ShardLayout:
    """This rank's part of a flat vector over sharded ``params``: its rows of each parameter, in
    order; the whole vector is, parameter by parameter, the ranks' rows in mesh order."""

    def __init__(self, params: Sequence[Tensor]) -> None:
        mesh = params[0].device_mesh
        self.group = mesh.get_group()
        self.world_size = mesh.size()
        self.rank = mesh.get_local_rank()
        local = torch.tensor(  # on the parameters' device: NCCL moves device tensors only
            [param.to_local().numel() for param in params],
            dtype=torch.int64,
            device=params[0].to_local().device,
        )
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local, group=self.group)
        #: ``numels[r][i]``: the entries of parameter ``i`` that rank ``r`` holds
        self.numels = [counts.tolist() for counts in gathered]
        self.full_numels = [param.numel() for param in params]
        self.local_dim = sum(self.numels[self.rank])
        self.padded = max(sum(counts) for counts in self.numels)

    def _full_order(self) -> list[tuple[int, int]]:
        return [(i, r) for i in range(len(self.full_numels)) for r in range(self.world_size)]

    def gather(self, local: Tensor) -> Tensor:
        """The whole vector (each parameter as its unsharded flat tensor) on every rank."""
        padded = local.new_zeros(self.padded)
        padded[: local.numel()] = local
        rows = local.new_empty(self.world_size, self.padded)
        dist.all_gather_single(rows.view(-1), padded, group=self.group)
        by_rank = [
            torch.split(rows[rank, : sum(counts)], counts)
            for rank, counts in enumerate(self.numels)
        ]
        return torch.cat([by_rank[rank][index] for index, rank in self._full_order()])

    def reduce_scatter(self, full: Tensor) -> Tensor:
        """This rank's part of the sum over ranks of ``full`` (a whole vector on each rank)."""
        pieces = torch.split(full, [self.numels[r][i] for i, r in self._full_order()])
        rows = full.new_zeros(self.world_size, self.padded)
        count = len(self.full_numels)
        for rank in range(self.world_size):
            mine = [pieces[index * self.world_size + rank] for index in range(count)]
            torch.cat(mine, out=rows[rank, : sum(self.numels[rank])])
        local = full.new_empty(self.padded)
        dist.reduce_scatter_single(local, rows.view(-1), group=self.group)
        return local[: self.local_dim]

    def all_reduce(self, tensor: Tensor) -> Tensor:
        """The sum of ``tensor`` over the ranks (a new tensor)."""
        summed = tensor.clone()
        dist.all_reduce(summed, group=self.group)
        return summed

    def random_vector(self, generator: torch.Generator, like: Tensor) -> Tensor:
        """This rank's part of a Gaussian vector that is the same for any number of ranks."""
        parts = []
        for index, numel in enumerate(self.full_numels):
            draw = torch.randn(numel, generator=generator, dtype=torch.float64)
            begin = sum(self.numels[rank][index] for rank in range(self.rank))
            parts.append(draw[begin : begin + self.numels[self.rank][index]].to(like))
        return torch.cat(parts) if parts else like.new_zeros(0)


class FullyShardedHessianOperator(HessianOperator):
    """:class:`HessianOperator` of a model sharded by ``fully_shard``: every rank calls it with its
    own batches, its part of the vector and the unsharded ``params``; products are summed over the
    mesh (no ``all_reduce``)."""

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Any],
        loss_fn: LossFn,
        params: Sequence[Tensor],
        layout: ShardLayout,
        settings: HessianSettings,
    ) -> None:
        super().__init__(model, batches, loss_fn, params, settings)
        self.layout = layout
        self.local_dim = layout.local_dim

    @property
    def sharded(self) -> bool:
        return True

    def _gather(self, vector: Tensor) -> Tensor:
        return self.layout.gather(vector)

    def _sum_over_processes(
        self, total: Tensor, count: float, nonfinite: bool
    ) -> tuple[Tensor, float, bool]:
        flags = self.layout.all_reduce(total.new_tensor([count, float(nonfinite)]))
        return self.layout.reduce_scatter(total), float(flags[0]), bool(flags[1] > 0)

    def reduce(self, partial: Tensor) -> Tensor:
        return self.layout.all_reduce(partial)

    def norm(self, vector: Tensor) -> Tensor:
        return self.layout.all_reduce(vector.norm().square()).sqrt()

    def random_vector(self, generator: torch.Generator) -> Tensor:
        return self.layout.random_vector(generator, self.like)
