"""Where the curvature lives: the eigenvalues of the Hessian's diagonal blocks and the extreme
eigenvectors' spread over blocks (the docs' blocks page)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_shortcut.hessian.batches import LossFn
from lightning_shortcut.hessian.block_params import BlocksSpec, resolve_blocks
from lightning_shortcut.hessian.context import hessian_operator, select_parameters
from lightning_shortcut.hessian.params import ParamsSpec, check_vector_size, resolve_params
from lightning_shortcut.hessian.results import HessianSpectrum
from lightning_shortcut.hessian.settings import AllReduce, HessianSettings, Hvp, Mode
from lightning_shortcut.hessian.solvers import SOLVERS

__all__ = [
    "REST",
    "BlockProfile",
    "BlockSpectra",
    "block_eigenvalues",
    "block_profile",
    "check_block_settings",
    "compute_block_eigenvalues",
    "resolve_blocks",
]

#: The profile's entry for the parameters of the Hessian that are in no block.
REST = "(rest)"


@dataclass(frozen=True)
class BlockSpectra(Mapping[str, HessianSpectrum]):
    """The extreme eigenvalues of each diagonal block of a loss Hessian: a mapping ``name ->``
    :class:`~lightning_shortcut.hessian.HessianSpectrum`, in block order (NaN values where a block's
    run did not converge).

    Attributes:
        spectra: the blocks' spectra by name.
        sizes: the number of parameter entries of each block.
        seconds: wall time of the call.
    """

    spectra: dict[str, HessianSpectrum]
    sizes: dict[str, int]
    seconds: float = 0.0

    def __getitem__(self, name: str) -> HessianSpectrum:
        return self.spectra[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.spectra)

    def __len__(self) -> int:
        return len(self.spectra)

    @property
    def names(self) -> list[str]:
        """The blocks' names, in order."""
        return list(self.spectra)

    @property
    def max(self) -> dict[str, float | None]:
        """The largest eigenvalue of each block."""
        return {name: spectrum.max for name, spectrum in self.spectra.items()}

    @property
    def min(self) -> dict[str, float | None]:
        """The smallest eigenvalue of each block."""
        return {name: spectrum.min for name, spectrum in self.spectra.items()}

    @property
    def reasons(self) -> dict[str, str]:
        """Why each block did not converge, in words (empty where it did)."""
        return {name: spectrum.reason for name, spectrum in self.spectra.items()}

    @property
    def num_hvps(self) -> int:
        """Products of a block of the Hessian with a vector, all blocks together."""
        return sum(spectrum.num_hvps for spectrum in self.spectra.values())

    @property
    def all_converged(self) -> bool:
        """Whether every block converged."""
        return all(spectrum.converged for spectrum in self.spectra.values())

    def as_dict(self) -> dict[str, float]:
        """Flat ``name -> float`` view for logging: ``block/<name>/max_eigenvalue`` and
        ``block/<name>/min_eigenvalue`` (``top_<i>``/``bottom_<i>`` too where ``k > 1``)."""
        return {
            f"block/{name}/{key}": value
            for name, spectrum in self.spectra.items()
            for key, value in spectrum.as_dict().items()
            if key in ("max_eigenvalue", "min_eigenvalue") or key.startswith(("top_", "bottom_"))
        }


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
    products: Literal["loop", "vmap"] | None = None,
) -> BlockSpectra:
    """The extreme eigenvalues of each diagonal block of the Hessian, all blocks in one measurement.

    Each block gets the run ``hessian_eigenvalues(params=block, vectors=True)`` would make, on a
    view of one operator over all the blocks. The arguments not listed below are those of
    :func:`~lightning_shortcut.hessian.hessian_eigenvalues`; ``tol`` is relative to each block.

    Args:
        blocks: ``"residual"`` (default), ``"modules"``, a mapping ``name -> members`` or a
            callable; see :func:`resolve_blocks`.
        method: a registered solver of the operator (not ``"pyhessian"``, which runs on the model).
        hvp: ``"autograd"`` only (block products are restricted double backwards).
        products: deprecated, and ignored with a ``FutureWarning``.

    Returns:
        A :class:`BlockSpectra`; a block whose run does not converge has NaN values and
        ``converged`` ``False``.

    Raises:
        ValueError: on bad blocks, arguments refused as by ``hessian_eigenvalues`` (``top_k`` or
            ``bottom_k`` above a block's size too), a solver that runs on the model, an unknown
            ``products``, finite differences or a model sharded by ``fully_shard``.

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
    if products is not None:
        if products not in ("loop", "vmap"):
            raise ValueError(f"`products` must be one of ['loop', 'vmap'], got {products!r}.")
        warnings.warn(
            f"block_eigenvalues(products={products!r}) is deprecated and has no effect: every "
            "block product is a restricted double backward; leave `products` out.",
            FutureWarning,
            stacklevel=2,
        )
    return compute_block_eigenvalues(model, data, loss_fn, settings, blocks)


def check_block_settings(settings: HessianSettings) -> None:
    """Raise ``ValueError`` on settings :func:`block_eigenvalues` cannot measure blocks with."""
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


def compute_block_eigenvalues(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None,
    settings: HessianSettings,
    blocks: BlocksSpec = "residual",
) -> BlockSpectra:
    """:func:`block_eigenvalues` with its options as one ``HessianSettings``; raises as it does."""
    check_block_settings(settings)
    selection = select_parameters(model, settings, unsharded_only="block_eigenvalues")
    chosen = resolve_blocks(model, blocks, selection.params)
    begin = time.perf_counter()
    union = replace(selection, params=[param for block in chosen.values() for param in block])
    spectra = {}
    with hessian_operator(model, data, loss_fn, settings, union, keep_graphs=True) as operator:
        for name, block in chosen.items():
            start = time.perf_counter()
            spectrum = settings.solve(operator.view(block))
            if not spectrum.converged:
                nan = math.nan
                spectrum = replace(
                    spectrum, top=[nan] * len(spectrum.top), bottom=[nan] * len(spectrum.bottom),
                    max=None if spectrum.max is None else nan,
                    min=None if spectrum.min is None else nan,
                )  # fmt: skip
            spectra[name] = replace(spectrum, seconds=time.perf_counter() - start)
    sizes = {name: sum(param.numel() for param in block) for name, block in chosen.items()}
    return BlockSpectra(spectra, sizes, time.perf_counter() - begin)


@dataclass(frozen=True)
class BlockProfile:
    """Each block's share of the extreme eigenvectors' squared norm (the parameters in no block
    share :data:`REST`).

    Attributes:
        top: each block's share of the top eigenvector; ``None`` where the spectrum has none.
        bottom: the same for the bottom eigenvector.
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
    """Each block's share of the squared norm of ``spectrum``'s top and bottom eigenvectors (no
    product).

    Args:
        model: the model ``spectrum`` was measured on.
        spectrum: a result of :func:`~lightning_shortcut.hessian.hessian_eigenvalues` on ``model``
            with ``vectors=True`` (a values-only result has no vector to profile).
        blocks: as for :func:`resolve_blocks` (default: the residual units).
        params: the ``params`` the spectrum was measured with (default: all trainable).

    Returns:
        A :class:`BlockProfile`.

    Raises:
        ValueError: on bad blocks (see :func:`resolve_blocks`), or vectors whose size is not that
            of ``params``.

    Example:
        ```python
        spectrum = hessian_eigenvalues(model, (x, y), vectors=True)
        block_profile(model, spectrum, "modules").top  # {"0": 0.93, "2": 0.07}
        ```
    """
    chosen = resolve_params(model, params)
    resolved = resolve_blocks(model, blocks, params)
    owner = {id(param): name for name, block in resolved.items() for param in block}
    sizes = [param.numel() for param in chosen]
    check_vector_size(spectrum.vectors, sum(sizes), params, model)
    labels = [owner.get(id(param), REST) for param in chosen]
    top = bottom = None
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
