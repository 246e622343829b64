"""lightning-shortcut: Hessian diagnostics of residual shortcuts for PyTorch Lightning.

A reproduction of Li, Jiao, Han and Weissman, "Demystifying ResNet" (arXiv 1611.01186).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what static tools (and the API docs) read; at run time see `__getattr__`
    from lightning_shortcut.init import InitStrategy, OrthogonalInit, XavierInit, ZeroInit
    from lightning_shortcut.residual import (
        ResidualStack,
        ResidualUnit,
        residual_parameters,
        residual_weight_layers,
    )
    from lightning_shortcut.theory import ZeroPointSpectrum, half_mse_loss, zero_point_hessian

__version__ = "0.1.0"

__all__ = [
    "InitStrategy",
    "OrthogonalInit",
    "ResidualStack",
    "ResidualUnit",
    "XavierInit",
    "ZeroInit",
    "ZeroPointSpectrum",
    "__version__",
    "half_mse_loss",
    "residual_parameters",
    "residual_weight_layers",
    "zero_point_hessian",
]

# imported on first use (PEP 562): the command line's `recipes` and `plot` need no torch
_MODULES = {
    "init": ("InitStrategy", "OrthogonalInit", "XavierInit", "ZeroInit"),
    "residual": ("ResidualStack", "ResidualUnit", "residual_parameters", "residual_weight_layers"),
    "theory": ("ZeroPointSpectrum", "half_mse_loss", "zero_point_hessian"),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
