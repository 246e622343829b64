"""What the monitor warns about, once per kind: NaN, zero, unresolved or non-converged measurements,
and a Hessian batch smaller than asked."""

from __future__ import annotations

import math

from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lightning_shortcut.hessian.results import HessianSpectrum
from lightning_shortcut.hessian.settings import HessianSettings

# values of a measurement that are not eigenvalues: NaN there is no reason to warn
_BOOKKEEPING = ("seconds", "num_hvps", "converged", "warm_start", "warm_given_up")
_STDERR = ("max_eigenvalue_stderr", "min_eigenvalue_stderr")


class MeasurementWarnings:
    """The monitor's warnings, each said once (rank zero), naming the step and the setting
    (``num_samples``, and ``settings``' ``tol``, ``max_iter`` and ``params``)."""

    def __init__(self, num_samples: int, settings: HessianSettings) -> None:
        self.num_samples, self.settings = num_samples, settings
        self.samples = num_samples  # in the Hessian batch gathered (fewer where the data is small)
        self._warned: set[str] = set()

    def about(self, spectrum: HessianSpectrum, metrics: dict[str, float], step: int) -> None:
        """Warn, once per kind, about a measurement that is not a plain success."""
        values = {k: v for k, v in metrics.items() if k not in _BOOKKEEPING and k not in _STDERR}
        tol = self.settings.tol
        undefined = sorted(key for key, value in values.items() if math.isnan(value))
        if undefined == ["condition_number"]:
            # every eigenvalue came out finite: only max|lambda| / min|lambda| = 0 / 0 is undefined
            self.once(
                "zero",
                f"HessianEigenvalueMonitor: the Hessian is exactly zero at step {step} (every "
                "eigenvalue 0: e.g. a ResidualStack of shortcut depth >= 3 at the zero point, "
                "depth 2 with ReLU there, or branches that are exactly zero): condition_number is "
                "0/0, logged as NaN; the eigenvalues are logged as 0.",
            )
        elif undefined:
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
                f"tol={tol} resolves (<= tol * max|eigenvalue|): the Hessian is singular to "
                f"within tol, so condition_number is logged as inf. {self._why_singular()}",
            )
        elif not spectrum.converged:
            self.once(
                "not_converged",
                f"HessianEigenvalueMonitor: the solver did not reach tol={tol} within "
                f"max_iter={self.settings.max_iter} at step {step}; the logged values are its best "
                "estimates.",
            )

    def about_samples(self, samples: int, stage: str) -> None:
        """Warn once where the data gave fewer samples than ``num_samples`` asked."""
        self.samples = samples
        if samples < self.num_samples:
            self.once(
                "few_samples",
                f"HessianEigenvalueMonitor: num_samples={self.num_samples} asked, but the {stage} "
                f"data holds only {samples}: the Hessian batch is those {samples} samples (the "
                "standard errors and the cost are for them).",
            )

    def _why_singular(self) -> str:
        """Why a Hessian over the ``params`` in use can be singular, and what to do, if anything."""
        if self.settings.params == "residual":
            return (
                "params='residual' is in use: at the zero point (shortcut depth 2) its eigenvalues "
                "are +-sigma_i(E[x g^T]), x the stack's input and g the loss's gradient at its "
                "output, so it is singular where g spans fewer directions than the stack's width: "
                "a head of c outputs gives at most c (c - 1 under a softmax: a 3-class head leaves "
                f"a stack wider than 2 singular) and a Hessian batch of {self.samples} samples at "
                f"most {self.samples}. Away from the zero point it need not be well conditioned."
            )
        if callable(self.settings.params):
            return (
                "The Hessian over the parameters `params` selects is singular where they are more "
                f"than the outputs times the samples constrain ({self.samples} samples) or where "
                "the loss does not depend on some of them."
            )
        return (
            "A network's full Hessian usually is; on a model with a ResidualStack, "
            "params='residual' gives the paper's quantity, well conditioned at the zero point."
        )

    def once(self, kind: str, message: str) -> None:
        """Warn (rank zero) the first time a kind of problem is seen."""
        if kind not in self._warned:
            self._warned.add(kind)
            rank_zero_warn(message)
