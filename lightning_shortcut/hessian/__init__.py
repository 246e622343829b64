"""The Hessian spectrum engine: plain PyTorch functions, no Lightning required (the callbacks only
schedule, gather data and log)."""

from lightning_shortcut.hessian.batches import cross_entropy_loss
from lightning_shortcut.hessian.block_params import resolve_blocks
from lightning_shortcut.hessian.blocks import (
    BlockProfile,
    BlockSpectra,
    block_eigenvalues,
    block_profile,
)
from lightning_shortcut.hessian.density import (
    SpectralDensity,
    TraceEstimate,
    hessian_trace,
    spectral_density,
)
from lightning_shortcut.hessian.edge_of_stability import EdgeOfStability, edge_of_stability
from lightning_shortcut.hessian.linear_operator import (
    LambdaOperator,
    LinearOperator,
    MatrixOperator,
    ScaledOperator,
)
from lightning_shortcut.hessian.operator import HessianOperator, HessianView
from lightning_shortcut.hessian.optimizers import UnsupportedOptimizerError
from lightning_shortcut.hessian.overlap import GradientOverlap, gradient_overlap
from lightning_shortcut.hessian.settings import HessianSettings
from lightning_shortcut.hessian.solvers import SOLVERS, EigenResult, register_solver
from lightning_shortcut.hessian.spectrum import HessianSpectrum, hessian_eigenvalues
from lightning_shortcut.hessian.tracking import SpectrumTracker, WarmStart

__all__ = [
    "SOLVERS",
    "BlockProfile",
    "BlockSpectra",
    "EdgeOfStability",
    "EigenResult",
    "GradientOverlap",
    "HessianOperator",
    "HessianSettings",
    "HessianSpectrum",
    "HessianView",
    "LambdaOperator",
    "LinearOperator",
    "MatrixOperator",
    "ScaledOperator",
    "SpectralDensity",
    "SpectrumTracker",
    "TraceEstimate",
    "UnsupportedOptimizerError",
    "WarmStart",
    "block_eigenvalues",
    "block_profile",
    "cross_entropy_loss",
    "edge_of_stability",
    "gradient_overlap",
    "hessian_eigenvalues",
    "hessian_trace",
    "register_solver",
    "resolve_blocks",
    "spectral_density",
]
