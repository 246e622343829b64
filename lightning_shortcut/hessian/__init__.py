"""The Hessian spectrum engine: plain PyTorch functions, no Lightning required.

The callbacks in :mod:`lightning_shortcut.callbacks` only schedule, gather data and log; everything
numerical lives here (the torchmetrics pattern of a thin class over functional code).
"""

from lightning_shortcut.hessian.density import (
    SpectralDensity,
    TraceEstimate,
    hessian_trace,
    spectral_density,
)
from lightning_shortcut.hessian.operator import HessianOperator, cross_entropy_loss
from lightning_shortcut.hessian.spectrum import METHODS, HessianSpectrum, hessian_eigenvalues

__all__ = [
    "METHODS",
    "HessianOperator",
    "HessianSpectrum",
    "SpectralDensity",
    "TraceEstimate",
    "cross_entropy_loss",
    "hessian_eigenvalues",
    "hessian_trace",
    "spectral_density",
]
