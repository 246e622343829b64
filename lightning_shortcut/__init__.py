"""lightning-shortcut: Hessian diagnostics of residual shortcuts for PyTorch Lightning.

A reproduction of Li, Jiao, Han and Weissman, "Demystifying ResNet" (arXiv 1611.01186).
"""

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
