"""Lightning callbacks: the paper's diagnostics and initialization in any Trainer."""

from lightning_shortcut.callbacks.hessian_monitor import HessianEigenvalueMonitor
from lightning_shortcut.callbacks.residual_init import ResidualInit

__all__ = ["HessianEigenvalueMonitor", "ResidualInit"]
