"""What one measurement of the monitor is over, and what it logs when the solver fails."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

from torch import Tensor, nn

from lightning_shortcut.hessian.spectrum import HessianSpectrum
from lightning_shortcut.residual import residual_parameters

__all__ = ["PARAMS_CHOICES", "ParamsSpec", "check_params", "nan_spectrum", "resolve_params"]

ParamsSpec = Literal["all", "residual"] | Callable[[nn.Module], Iterable[Tensor]] | None
PARAMS_CHOICES = ("all", "residual")


def check_params(params: object) -> None:
    """Raise a ``ValueError`` unless ``params`` is a :data:`ParamsSpec`."""
    if not (params is None or params in PARAMS_CHOICES or callable(params)):
        raise ValueError(f"`params` must be None, 'all', 'residual' or a callable, got {params!r}.")


def resolve_params(params: ParamsSpec, module: nn.Module) -> list[Tensor] | None:
    """The parameters ``params`` names in ``module`` (``None``: every trainable parameter).

    Raises:
        ValueError: for ``"residual"`` on a module without a ResidualStack.
    """
    if params is None or params == "all":
        return None
    if params == "residual":
        found = residual_parameters(module)
        if not found:
            raise ValueError(
                f"params='residual' but {type(module).__name__} contains no ResidualStack."
            )
        return found
    return list(params(module))


def nan_spectrum(top_k: int, bottom_k: int, min_abs: bool, method: str) -> HessianSpectrum:
    """The spectrum logged when the solver fails: NaN wherever a value was asked for."""
    nan = math.nan
    return HessianSpectrum(
        top=[nan] * top_k,
        bottom=[nan] * bottom_k,
        max=nan if top_k else None,
        min=nan if bottom_k else None,
        min_abs=nan if min_abs else None,
        condition_number=nan if min_abs else None,
        converged=False,
        method=method,
    )
