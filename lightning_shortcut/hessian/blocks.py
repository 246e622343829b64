"""Where the curvature lives: the Hessian's diagonal blocks and the extreme eigenvectors' profile.

A *block* is a named group of parameters: a residual unit, a top-level module, or any group a
callable returns. :func:`block_eigenvalues` finds the extreme eigenvalues of each diagonal block
``H_bb`` of the loss Hessian (the curvature of the loss when only block ``b`` moves), all blocks in
one measurement; :func:`block_profile` says how the extreme eigenvectors of the whole Hessian (a
:class:`~lightning_shortcut.hessian.HessianSpectrum`'s) are spread over the blocks.

One measurement runs a solver per block, side by side
(:func:`~lightning_shortcut.hessian.solvers.lockstep.solve_in_lockstep`), each run the registered
solver itself with its own error bounds and stopping rule, and computes each step's products of all
runs in one pass: ``H_bb v_b`` for every block's vector ``v_b``, either as one restricted double
backward per block on the first-order graph they share (``products="loop"``, the default: on the
CPU 2.7-5 times faster than the alternative, see the docs' blocks page) or as one vmapped double
backward of the whole batch of vectors (``products="vmap"``: ``torch.autograd.grad`` with
``is_grads_batched``), which computes the full ``H v`` of every vector and keeps its block.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_shortcut.hessian.context import hessian_context, select_parameters
from lightning_shortcut.hessian.operator import (
    HessianOperator,
    LossFn,
    ParamsSpec,
    cross_entropy_loss,
    normalize_batches,
    resolve_params,
)
from lightning_shortcut.hessian.results import HessianSpectrum
from lightning_shortcut.hessian.settings import AllReduce, HessianSettings, Hvp, Mode
from lightning_shortcut.hessian.solvers import SOLVERS, EigenResult
from lightning_shortcut.hessian.solvers.lockstep import solve_in_lockstep

__all__ = [
    "BLOCK_PRODUCTS",
    "REST",
    "BlockDiagonalHessian",
    "BlockProfile",
    "BlockSpectra",
    "BlocksSpec",
    "block_eigenvalues",
    "block_profile",
    "check_block_settings",
    "compute_block_eigenvalues",
    "resolve_blocks",
]

#: What a block is made of: a parameter's or a module's name in the model (a module's name stands
#: for all its parameters), a parameter, a module, or an iterable of these.
BlockMembers = str | Tensor | nn.Module | Iterable[str | Tensor | nn.Module]
#: How the parameters are cut into blocks: ``"residual"`` (one block per module that declares its
#: residual branch with a ``branch_parameters()`` method, such as every unit of a
#: :class:`~lightning_shortcut.ResidualStack`), ``"modules"`` (the model's top-level modules, and
#: each parameter of its own), a mapping ``name -> members`` or a callable ``model -> mapping``.
BlocksSpec = (
    Literal["residual", "modules"]
    | Mapping[str, BlockMembers]
    | Callable[[nn.Module], Mapping[str, BlockMembers]]
)
#: The ways a step's block products are computed (see the module docstring).
BLOCK_PRODUCTS = ("loop", "vmap")
#: The profile's entry for the parameters of the Hessian that are in no block.
REST = "(rest)"


def _declared_blocks(model: nn.Module, blocks: BlocksSpec) -> Mapping[Any, Any]:
    """The blocks as named members, before they are checked against the model."""
    if blocks == "residual":
        declared = {
            name or type(model).__name__: list(module.branch_parameters())
            for name, module in model.named_modules()
            if callable(getattr(module, "branch_parameters", None))
        }
        if not declared:
            raise ValueError(
                f"blocks='residual' but {type(model).__name__} contains no ResidualStack (no "
                "module with a branch_parameters() method); pass blocks='modules', a mapping "
                "name -> parameters or a callable returning one."
            )
        return declared
    if blocks == "modules":
        declared = {name: child for name, child in model.named_children()}
        declared.update(model.named_parameters(recurse=False))
        return declared
    if isinstance(blocks, str):
        raise ValueError(
            f"`blocks` must be 'residual', 'modules', a mapping or a callable, got {blocks!r}."
        )
    if callable(blocks) and not isinstance(blocks, Mapping):
        blocks = blocks(model)
    if not isinstance(blocks, Mapping):
        raise TypeError(
            "`blocks` must be 'residual', 'modules', a mapping name -> parameters or a callable "
            f"model -> such a mapping; got (or the callable returned) {type(blocks).__name__}."
        )
    return blocks


def _members(model: nn.Module, block: str, members: Any, names: Mapping[int, str]) -> list[Tensor]:
    """The parameters ``members`` name, each checked to be one of ``model``'s."""
    if isinstance(members, str | Tensor | nn.Module):
        members = [members]
    elif not isinstance(members, Iterable):
        raise TypeError(
            f"Block {block!r}: members must be parameter or module names, parameters, modules or "
            f"an iterable of these, got {type(members).__name__}."
        )
    found: list[Tensor] = []
    for index, member in enumerate(members):
        if isinstance(member, str):
            matched = [
                param
                for name, param in model.named_parameters()
                if name == member or name.startswith(member + ".")
            ]
            if not matched:
                example = next(iter(names.values()), None)
                raise ValueError(
                    f"Block {block!r}: {member!r} matches no parameter of {type(model).__name__} "
                    f"(give a parameter's name such as {example!r} or a module's)."
                )
            found += matched
            continue
        if isinstance(member, nn.Module):
            owned = list(member.parameters())
        elif isinstance(member, Tensor):
            owned = [member]
        else:
            raise TypeError(
                f"Block {block!r}: member {index} must be a name, a parameter or a module, got "
                f"{type(member).__name__}."
            )
        for param in owned:
            if id(param) not in names:
                raise ValueError(
                    f"Block {block!r}: member {index} (a tensor of shape {tuple(param.shape)}) is "
                    f"not a parameter of {type(model).__name__}."
                )
        found += owned
    return found


def resolve_blocks(
    model: nn.Module, blocks: BlocksSpec, params: ParamsSpec = None
) -> dict[str, list[Tensor]]:
    """The blocks as ``name -> parameters``, checked against ``model``, in the order given.

    Only parameters of the Hessian (``params``, resolved as
    :func:`~lightning_shortcut.hessian.hessian_eigenvalues` does: by default every parameter that
    requires grad) are kept. A residual unit or a top-level module left with none of them is left
    out; a block you named yourself is refused.

    Args:
        model: the model.
        blocks: ``"residual"``, ``"modules"``, a mapping ``name -> members`` or a callable
            ``model -> mapping`` (:data:`BlocksSpec`); members are parameter or module names,
            parameters, modules or iterables of these.
        params: the parameters the Hessian is taken over (as in ``hessian_eigenvalues``).

    Returns:
        ``name -> parameters``, each parameter once.

    Raises:
        ValueError: naming the blocks, where two blocks share a parameter, a name matches no
            parameter, a member is not one of the model's parameters, a block you named has no
            parameter of the Hessian, a block's name is not a non-empty string, ``"residual"``
            finds no module that declares its residual branch, or no block is left.
        TypeError: if ``blocks`` or a block's members are of none of the accepted kinds.

    Example:
        ```python
        blocks = resolve_blocks(model, {"encoder": "encoder", "head": [model.head.weight]})
        ```
    """
    chosen = {id(param) for param in resolve_params(model, params)}
    names = {id(param): name for name, param in model.named_parameters()}
    named_by_user = blocks not in ("residual", "modules")
    owners: dict[int, str] = {}
    resolved: dict[str, list[Tensor]] = {}
    for block, members in _declared_blocks(model, blocks).items():
        if not isinstance(block, str) or not block:
            raise ValueError(f"A block's name must be a non-empty string, got {block!r}.")
        kept: list[Tensor] = []
        for param in _members(model, block, members, names):
            if id(param) not in chosen or any(param is other for other in kept):
                continue
            if id(param) in owners:
                raise ValueError(
                    f"Blocks {owners[id(param)]!r} and {block!r} overlap: both hold parameter "
                    f"{names[id(param)]!r}; a parameter may be in one block only."
                )
            owners[id(param)] = block
            kept.append(param)
        if kept:
            resolved[block] = kept
        elif named_by_user:
            raise ValueError(
                f"Block {block!r} is empty: it holds no parameter of the Hessian (none that "
                f"requires grad among params={params!r})."
            )
    if not resolved:
        raise ValueError(
            f"No block of blocks={blocks!r} holds a parameter of the Hessian (params={params!r})."
        )
    return resolved


class BlockDiagonalHessian(HessianOperator):
    """Products of the diagonal blocks ``H_bb`` of the Hessian with vectors of their blocks.

    The Hessian is that of :class:`~lightning_shortcut.hessian.HessianOperator` over the blocks'
    parameters (in block order); :meth:`block_products` computes ``H_bb v_b`` for a batch of
    ``(b, v_b)`` in one pass over the data: per batch, the first-order graph is built once (for a
    single batch, once for the operator's life) and serves every vector.

    Args:
        model: the model.
        batches: the batches.
        loss_fn: ``loss_fn(model, batch) -> scalar`` mean loss of a batch.
        blocks: the blocks' parameters, disjoint.
        settings: as in :class:`~lightning_shortcut.hessian.HessianOperator` (its ``all_reduce``
            sums one packed tensor per step).
        products: ``"loop"`` (a restricted double backward per vector) or ``"vmap"`` (one vmapped
            double backward of all the step's vectors).
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Any],
        loss_fn: LossFn,
        blocks: Sequence[Sequence[Tensor]],
        settings: HessianSettings | None = None,
        products: Literal["loop", "vmap"] = "loop",
    ) -> None:
        _check_products(products)
        params = [param for block in blocks for param in block]
        super().__init__(model, batches, loss_fn, params, settings)
        self.products = products
        self.block_indices: list[list[int]] = []
        for block in blocks:
            begin = sum(map(len, self.block_indices))
            self.block_indices.append(list(range(begin, begin + len(block))))
        self.block_dims = [sum(self.numels[i] for i in block) for block in self.block_indices]

    def block_products(self, requests: Sequence[tuple[int, Tensor]]) -> list[Tensor]:
        """``H_bb v`` for each ``(b, v)`` of ``requests`` (``v`` flat over block ``b``), in order.

        A non-finite loss gives NaN products.
        """
        totals = [torch.zeros_like(vector) for _, vector in requests]
        for index, size in enumerate(self.sizes):
            if len(self.batches) > 1:
                grads = self._gradients(index)
            else:
                if self._cached is None:
                    self._cached = self._gradients(0)
                grads = self._cached
            compute = self._vmapped if self.products == "vmap" else self._looped
            for total, product in zip(totals, compute(grads, requests), strict=True):
                total.add_(product.to(total), alpha=size)
        self.num_products += len(requests)
        count = float(sum(self.sizes))
        all_reduce = self.settings.all_reduce
        if all_reduce is not None:
            flags = totals[0].new_tensor([count, float(self.nonfinite)])
            packed = all_reduce(torch.cat([*totals, flags]))
            count, self.nonfinite = float(packed[-2]), bool(packed[-1] > 0)
            totals = list(torch.split(packed[:-2], [total.numel() for total in totals]))
        if self.nonfinite:
            return [torch.full_like(total, math.nan) for total in totals]
        return [total.div_(count) for total in totals]

    def _pieces(self, block: int, vector: Tensor, grads: list[Tensor | None]):
        """``(parameter index, piece of vector shaped like it)`` of block ``block``'s parameters
        whose gradient depends on the parameters (the others' products are zero)."""
        indices = self.block_indices[block]
        chunks = torch.split(vector, [self.numels[i] for i in indices])
        return [
            (i, chunk.view(self.shapes[i]).to(grads[i]))
            for i, chunk in zip(indices, chunks, strict=True)
            if grads[i] is not None
        ]

    def _flat(self, block: int, pieces: Mapping[int, Tensor | None], like: Tensor) -> Tensor:
        """Block ``block``'s products, by parameter index, as one flat vector (zeros where none)."""
        flat = torch.zeros_like(like)
        indices = self.block_indices[block]
        chunks = torch.split(flat, [self.numels[i] for i in indices])
        for i, chunk in zip(indices, chunks, strict=True):
            if pieces.get(i) is not None:
                chunk.copy_(pieces[i].reshape(-1))
        return flat

    def _looped(
        self, grads: list[Tensor | None], requests: Sequence[tuple[int, Tensor]]
    ) -> list[Tensor]:
        # a double backward from block b's gradient to block b's parameters: autograd visits only
        # the part of the graph between them (1.8 ms where a whole product takes 6.7 ms on digits)
        results = []
        for block, vector in requests:
            pieces = self._pieces(block, vector, grads)
            products: Sequence[Tensor | None] = []
            if pieces:
                products = torch.autograd.grad(
                    [grads[i] for i, _ in pieces],
                    [self.params[i] for i, _ in pieces],
                    grad_outputs=[piece for _, piece in pieces],
                    retain_graph=True,
                    allow_unused=True,
                )
            by_index = {i: product for (i, _), product in zip(pieces, products, strict=True)}
            results.append(self._flat(block, by_index, vector))
        return results

    def _vmapped(
        self, grads: list[Tensor | None], requests: Sequence[tuple[int, Tensor]]
    ) -> list[Tensor]:
        # every vector padded with zeros to the requested blocks' parameters, one batched backward
        pieces = [self._pieces(block, vector, grads) for block, vector in requests]
        used = sorted({i for block_pieces in pieces for i, _ in block_pieces})
        if not used:
            return [torch.zeros_like(vector) for _, vector in requests]
        rows = {i: grads[i].new_zeros(len(requests), *self.shapes[i]) for i in used}
        for row, block_pieces in enumerate(pieces):
            for i, piece in block_pieces:
                rows[i][row] = piece
        products = torch.autograd.grad(
            [grads[i] for i in used],
            [self.params[i] for i in used],
            grad_outputs=[rows[i] for i in used],
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
        )
        by_index = dict(zip(used, products, strict=True))
        return [
            self._flat(
                block,
                {i: None if by_index[i] is None else by_index[i][row] for i, _ in pieces[row]},
                vector,
            )
            for row, (block, vector) in enumerate(requests)
        ]


@dataclass(frozen=True)
class BlockSpectra:
    """The extreme eigenvalues of each diagonal block of a loss Hessian, with bounds on their errors.

    Every mapping is keyed by block name, in block order. A block whose run did not converge (or
    met a non-finite product) has NaN values, ``converged`` ``False`` and its reason; its error
    bounds are those its run reached (NaN for a non-finite product).

    Attributes:
        sizes: the number of parameter entries of each block.
        max: the largest eigenvalue of each block.
        min: the smallest eigenvalue of each block.
        top: the ``top_k`` largest eigenvalues of each block, descending.
        bottom: the ``bottom_k`` smallest, ascending.
        top_errors: for each value of ``top``, a bound on its error (as
            :attr:`HessianSpectrum.top_errors`, relative to the block's own largest magnitude).
        bottom_errors: the same for ``bottom``.
        converged: whether each block's values met the tolerance.
        reasons: why not, in words (empty when converged).
        num_hvps: products of a block of the Hessian with a vector, all blocks together.
        num_steps: the steps the blocks' runs took together (the products of the longest run):
            each step's products are computed in one pass.
        seconds: wall time of the call.
        method: the solver each block ran.
        products: how a step's products were computed (``"loop"`` or ``"vmap"``).
    """

    sizes: dict[str, int]
    max: dict[str, float | None]
    min: dict[str, float | None]
    top: dict[str, list[float]]
    bottom: dict[str, list[float]]
    top_errors: dict[str, list[float]]
    bottom_errors: dict[str, list[float]]
    converged: dict[str, bool]
    reasons: dict[str, str]
    num_hvps: int
    num_steps: int
    seconds: float
    method: str = "lanczos"
    products: str = "loop"

    @property
    def names(self) -> list[str]:
        """The blocks' names, in order."""
        return list(self.sizes)

    @property
    def all_converged(self) -> bool:
        """Whether every block converged."""
        return all(self.converged.values())

    def as_dict(self) -> dict[str, float]:
        """Flat ``name -> float`` view for logging: ``block/<name>/max_eigenvalue`` and
        ``block/<name>/min_eigenvalue`` (``top_<i>``/``bottom_<i>`` too where ``k > 1``)."""
        values: dict[str, float] = {}
        for name in self.sizes:
            prefix = f"block/{name}/"
            if self.max[name] is not None:
                values[prefix + "max_eigenvalue"] = float(self.max[name])
            if self.min[name] is not None:
                values[prefix + "min_eigenvalue"] = float(self.min[name])
            if len(self.top[name]) > 1:
                values.update({f"{prefix}top_{i}": v for i, v in enumerate(self.top[name], 1)})
            if len(self.bottom[name]) > 1:
                values.update(
                    {f"{prefix}bottom_{i}": v for i, v in enumerate(self.bottom[name], 1)}
                )
        return values


def block_eigenvalues(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None = None,
    *,
    blocks: BlocksSpec = "residual",
    params: ParamsSpec = None,
    method: str = "lanczos",
    top_k: int = 1,
    bottom_k: int = 1,
    tol: float = 1e-3,
    max_iter: int | None = None,
    seed: int = 0,
    mode: Mode = "eval",
    all_reduce: AllReduce | None = None,
    solver_options: Mapping[str, Any] | None = None,
    hvp: Hvp = "autograd",
    products: Literal["loop", "vmap"] = "loop",
) -> BlockSpectra:
    """The extreme eigenvalues of each diagonal block of the Hessian, all blocks in one measurement.

    Block ``b``'s diagonal block ``H_bb`` is the Hessian of the loss over block ``b``'s parameters
    with the others held fixed: its eigenvalues say how sharp the loss is where only that block
    moves. Each block gets the solver run a whole-model measurement over its parameters would make
    (``hessian_eigenvalues(params=block, seed=seed)``: the same start vector, error bounds and
    stopping rule, so the same values to rounding), with the runs side by side and each step's
    products of all blocks computed in one pass over the data (see the module docstring for the
    two ways, ``products=``). Side effects: none, as for
    :func:`~lightning_shortcut.hessian.hessian_eigenvalues`.

    The arguments it shares with ``hessian_eigenvalues`` (``data``, ``loss_fn``, ``params``,
    ``method``, ``tol``, ``max_iter``, ``seed``, ``mode``, ``all_reduce``, ``solver_options``,
    ``hvp``) mean what they mean there, so a caller passes the same ones.

    Args:
        model: the model.
        data: one batch ``(inputs, targets)`` or an iterable of batches (the mean loss over all).
        loss_fn: ``loss_fn(model, batch) -> scalar`` mean loss of a batch; default: cross-entropy.
        blocks: ``"residual"`` (default: one block per residual unit, that is per module with a
            ``branch_parameters()`` method), ``"modules"`` (the top-level modules), a mapping
            ``name -> members`` or a callable ``model -> mapping``; see :func:`resolve_blocks`.
        params: the parameters of the Hessian; blocks keep only these (see :func:`resolve_blocks`).
        method: a registered solver of the operator (not ``"pyhessian"``, which runs on the model).
        top_k: largest eigenvalues per block.
        bottom_k: smallest eigenvalues per block.
        tol: each block's values are within ``tol`` times the block's largest ``|eigenvalue|``.
        max_iter: products per eigenvalue run of a block (default 300).
        seed: seed of every block's private generator for start vectors.
        mode: ``"eval"`` or ``"train"``.
        all_reduce: sum across processes for distributed data (one packed tensor per step).
        solver_options: extra keyword arguments for the solver (e.g. ``{"max_basis": 10}``); the
            call's extra memory is about ``max_basis`` vectors of the blocks' parameters together.
        hvp: ``"autograd"`` only (block products are restricted double backwards; finite
            differences of gradients would cost two gradients per block and step).
        products: ``"loop"`` (default, a restricted double backward per block, the faster on the
            CPU) or ``"vmap"`` (one vmapped double backward per step; try it on a GPU).

    Returns:
        A :class:`BlockSpectra`. A block whose run does not converge has NaN values and
        ``converged`` ``False`` (a caller that logs them should warn).

    Raises:
        ValueError: on bad blocks (see :func:`resolve_blocks`), bad solver arguments or options
            (as ``hessian_eigenvalues``), a solver that runs on the model, an unknown ``products``,
            ``hvp="finite_difference"`` or a model sharded by ``fully_shard``.

    Example:
        ```python
        spectra = block_eigenvalues(model, (x, y), blocks="residual", loss_fn=loss_fn)
        spectra.max  # {"stack.units.0": 0.41, "stack.units.1": 0.39, ...}
        ```
    """
    settings = HessianSettings(
        params=params, mode=mode, hvp=hvp, seed=seed, all_reduce=all_reduce, method=method,
        top_k=top_k, bottom_k=bottom_k, tol=tol, max_iter=max_iter, solver_options=solver_options,
    )  # fmt: skip
    return compute_block_eigenvalues(model, data, loss_fn, settings, blocks, products=products)


def check_block_settings(settings: HessianSettings) -> None:
    """Raise ``ValueError`` on settings :func:`block_eigenvalues` cannot measure blocks with: a
    solver that runs on the model, products other than double backward, or ``min_abs``."""
    if settings.solver.touches_grads:
        raise ValueError(
            f"method={settings.method!r} runs on the model's gradients; block eigenvalues need a "
            f"solver of the operator, one of {[n for n, s in SOLVERS.items() if not s.touches_grads]}."
        )
    if settings.hvp != "autograd":
        raise ValueError(
            f"block_eigenvalues takes its products by double backward only (hvp='autograd'), got "
            f"hvp={settings.hvp!r}."
        )
    if settings.min_abs or settings.stderr:
        raise ValueError(
            "block_eigenvalues computes neither min_abs nor standard errors; got "
            f"min_abs={settings.min_abs!r}, stderr={settings.stderr!r}."
        )


def _check_products(products: str) -> None:
    if products not in BLOCK_PRODUCTS:
        raise ValueError(f"`products` must be one of {list(BLOCK_PRODUCTS)}, got {products!r}.")


def compute_block_eigenvalues(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None,
    settings: HessianSettings,
    blocks: BlocksSpec = "residual",
    *,
    products: Literal["loop", "vmap"] = "loop",
) -> BlockSpectra:
    """:func:`block_eigenvalues` with its solver's and operator's options as one
    :class:`~lightning_shortcut.hessian.HessianSettings` (checked by :func:`check_block_settings`),
    as the monitor passes its own.

    Raises:
        ValueError: as :func:`block_eigenvalues`.
    """
    check_block_settings(settings)
    _check_products(products)
    selection = select_parameters(model, settings, unsharded_only="block_eigenvalues")
    chosen = resolve_blocks(model, blocks, selection.params)
    begin = time.perf_counter()
    with hessian_context(model, settings):
        operator = BlockDiagonalHessian(
            model,
            normalize_batches(data),
            loss_fn or cross_entropy_loss,
            list(chosen.values()),
            settings,
            products,
        )
        try:
            runs = solve_in_lockstep(
                settings.solver.solve,
                operator.block_dims,
                operator.like,
                operator.block_products,
                seed=settings.seed,
                top_k=settings.top_k,
                bottom_k=settings.bottom_k,
                min_abs=False,
                tol=settings.tol,
                max_iter=settings.products_per_run,
                **settings.solver_options,
            )
        finally:
            operator.release()
    seconds = time.perf_counter() - begin
    return _assemble(list(chosen), operator.block_dims, runs, settings.top_k, settings.bottom_k,
                     settings.method, products, seconds)  # fmt: skip


def _assemble(names, dims, runs, top_k, bottom_k, method, products, seconds) -> BlockSpectra:
    fields: dict[str, dict] = {key: {} for key in ("top", "bottom", "top_errors", "bottom_errors")}
    converged, reasons = {}, {}
    for name, result in zip(names, runs.results, strict=True):
        if result is None:
            result = EigenResult(
                top=[math.nan] * top_k, bottom=[math.nan] * bottom_k,
                top_errors=[math.nan] * top_k, bottom_errors=[math.nan] * bottom_k,
            )  # fmt: skip
            result.fail("non-finite loss or Hessian-vector product")
        top = sorted(zip(result.top, result.top_errors, strict=True), key=lambda p: -p[0])
        bottom = sorted(zip(result.bottom, result.bottom_errors, strict=True), key=lambda p: p[0])
        for key, pairs in (("top", top), ("bottom", bottom)):
            values = [math.nan if not result.converged else value for value, _ in pairs]
            fields[key][name] = values
            fields[f"{key}_errors"][name] = [error for _, error in pairs]
        converged[name], reasons[name] = result.converged, result.reason
    return BlockSpectra(
        sizes=dict(zip(names, dims, strict=True)),
        max={name: values[0] if values else None for name, values in fields["top"].items()},
        min={name: values[0] if values else None for name, values in fields["bottom"].items()},
        converged=converged,
        reasons=reasons,
        num_hvps=sum(runs.products),
        num_steps=runs.steps,
        seconds=seconds,
        method=method,
        products=products,
        **fields,
    )


@dataclass(frozen=True)
class BlockProfile:
    """How the extreme eigenvectors of the Hessian are spread over blocks.

    Each share is the block's part of the eigenvector's squared norm, so the shares of a vector sum
    to one; the parameters of the Hessian that are in no block share :data:`REST` (present only
    where the blocks leave some out).

    Attributes:
        top: each block's share of the top eigenvector (of the largest eigenvalue); ``None``
            where the spectrum has none (``top_k = 0`` or a failed measurement).
        bottom: the same for the bottom eigenvector (of the smallest eigenvalue).
    """

    top: dict[str, float] | None
    bottom: dict[str, float] | None

    def as_dict(self) -> dict[str, float]:
        """Flat ``name -> float`` view for logging: ``block/<name>/max_eigenvector_share`` and
        ``block/<name>/min_eigenvector_share``."""
        values = {}
        for end, shares in (("max", self.top), ("min", self.bottom)):
            for name, share in (shares or {}).items():
                values[f"block/{name}/{end}_eigenvector_share"] = share
        return values


def block_profile(
    model: nn.Module,
    spectrum: HessianSpectrum,
    blocks: BlocksSpec = "residual",
    *,
    params: ParamsSpec = None,
) -> BlockProfile:
    """Each block's share of the squared norm of ``spectrum``'s top and bottom eigenvectors.

    Cheap (no product): the vectors a measurement returns, summed by block. A top eigenvector that
    lives in a few blocks says the sharpest direction is there.

    Args:
        model: the model ``spectrum`` was measured on.
        spectrum: a result of :func:`~lightning_shortcut.hessian.hessian_eigenvalues` on ``model``.
        blocks: how to cut the parameters into blocks (as :func:`resolve_blocks`; default: the
            residual units, as :func:`block_eigenvalues`).
        params: the ``params`` the spectrum was measured with (default: all trainable).

    Returns:
        A :class:`BlockProfile`.

    Raises:
        ValueError: on bad blocks (see :func:`resolve_blocks`), or vectors whose size is not that
            of ``params`` (a spectrum of other parameters, or one rank's rows under
            ``fully_shard``).

    Example:
        ```python
        spectrum = hessian_eigenvalues(model, (x, y), vectors=True)
        block_profile(model, spectrum, "modules").top  # {"0": 0.93, "2": 0.07}
        ```
    """
    chosen = resolve_params(model, params)
    resolved = resolve_blocks(model, blocks, params)
    owner = {id(param): name for name, block in resolved.items() for param in block}
    dim = sum(param.numel() for param in chosen)
    for vector in spectrum.vectors:
        if vector.numel() != dim:
            raise ValueError(
                f"The spectrum's vectors have {vector.numel()} entries but params={params!r} of "
                f"{type(model).__name__} has {dim}: pass the params the spectrum was measured with "
                "(under fully_shard, profiles are not available)."
            )
    labels = [owner.get(id(param), REST) for param in chosen]
    sizes = [param.numel() for param in chosen]
    top = bottom = None
    # the vectors are the top ones, then the bottom ones (none where the measurement failed)
    if len(spectrum.vectors) == len(spectrum.top) + len(spectrum.bottom):
        if spectrum.top:
            top = _shares(spectrum.vectors[0], labels, sizes, list(resolved))
        if spectrum.bottom:
            bottom = _shares(spectrum.vectors[len(spectrum.top)], labels, sizes, list(resolved))
    return BlockProfile(top=top, bottom=bottom)


def _shares(
    vector: Tensor, labels: list[str], sizes: list[int], names: list[str]
) -> dict[str, float]:
    squares = torch.split(vector.detach().double().square(), sizes)
    totals = dict.fromkeys(names, 0.0)
    for label, square in zip(labels, squares, strict=True):
        totals[label] = totals.get(label, 0.0) + float(square.sum())
    whole = sum(totals.values())
    return {name: total / whole if whole > 0 else math.nan for name, total in totals.items()}
