"""What the monitor warns about, once per kind: NaN, unresolved or non-converged measurements."""

from __future__ import annotations

import math

from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lightning_shortcut.hessian.results import HessianSpectrum

# values of a measurement that are not eigenvalues: NaN there is no reason to warn
_BOOKKEEPING = ("seconds", "num_hvps", "converged", "warm_start")
_STDERR = ("max_eigenvalue_stderr", "min_eigenvalue_stderr")


class MeasurementWarnings:
    """The monitor's warnings, each said once (rank zero), naming the step and the setting.

    Args:
        num_samples, tol, max_iter: the monitor's settings, named in the messages.
    """

    def __init__(self, num_samples: int, tol: float, max_iter: int | None) -> None:
        self.num_samples, self.tol, self.max_iter = num_samples, tol, max_iter
        self._warned: set[str] = set()

    def about(self, spectrum: HessianSpectrum, metrics: dict[str, float], step: int) -> None:
        """Warn, once per kind, about a measurement that is not a plain success."""
        values = {k: v for k, v in metrics.items() if k not in _BOOKKEEPING and k not in _STDERR}
        if any(math.isnan(v) for v in values.values()):
            self.once(
                "nan",
                f"HessianEigenvalueMonitor: non-finite loss or spectrum at step {step}; logged as NaN.",
            )
        elif any(math.isnan(metrics.get(key, 0.0)) for key in _STDERR):
            self.once(
                "stderr",
                f"HessianEigenvalueMonitor: at step {step} the standard error of the eigenvalues is "
                f"NaN: it needs a Hessian batch of at least 2 samples (num_samples="
                f"{self.num_samples}) and finite products on each chunk of it.",
            )
        elif spectrum.min_abs_resolved is False and spectrum.converged:
            self.once(
                "unresolved",
                f"HessianEigenvalueMonitor: at step {step} the smallest |eigenvalue| is below what "
                f"tol={self.tol} resolves (<= tol * max|eigenvalue|): the Hessian is singular to "
                "within tol, so condition_number is logged as inf. A network's full Hessian usually "
                "is; params='residual' gives the paper's well-conditioned one.",
            )
        elif not spectrum.converged:
            self.once(
                "not_converged",
                f"HessianEigenvalueMonitor: the solver did not reach tol={self.tol} within "
                f"max_iter={self.max_iter} at step {step}; the logged values are its best estimates.",
            )

    def once(self, kind: str, message: str) -> None:
        """Warn (rank zero) the first time a kind of problem is seen."""
        if kind not in self._warned:
            self._warned.add(kind)
            rank_zero_warn(message)
