"""``HessianSpectrum``: what :func:`~lightning_shortcut.hessian.hessian_eigenvalues` and every
registered solver return."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from torch import Tensor

from lightning_shortcut.hessian.tracking import WarmStart

__all__ = ["NON_FINITE", "HessianSpectrum", "Request", "magnitude_ratio"]

#: The reason of a result whose loss or products were not finite.
NON_FINITE = "non-finite loss or Hessian-vector product"


class Request(Protocol):
    """What a result reads of its :class:`~lightning_shortcut.hessian.HessianSettings`."""

    top_k: int
    bottom_k: int
    min_abs: bool
    tol: float
    method: str
    hvp: str
    stderr: bool | str


def magnitude_ratio(largest: float, smallest: float, atol: float = 0.0) -> float:
    """``largest / smallest`` of eigenvalue magnitudes, ``nan`` if ``largest <= atol`` (a zero
    spectrum) and ``inf`` if only ``smallest <= atol`` (a singular one)."""
    if largest <= atol:
        return math.nan
    if smallest <= atol:
        return math.inf
    return largest / smallest


@dataclass
class HessianSpectrum:
    """The extreme eigenvalues of a loss Hessian (or any symmetric operator), with error bounds.

    A solver fills in the values, their errors, ``vectors``, ``scale``, ``converged`` and
    ``reason``; the caller's result is :meth:`completed` from it.

    Attributes:
        top: the ``top_k`` largest eigenvalues, descending.
        bottom: the ``bottom_k`` smallest eigenvalues, ascending.
        max: the largest algebraic eigenvalue (``None`` when ``top_k = 0``).
        min: the smallest algebraic eigenvalue (``None`` when ``bottom_k = 0``).
        min_abs: the smallest ``|eigenvalue|`` or, unresolved, an upper bound (``None`` unless asked).
        min_abs_resolved: whether ``min_abs`` is known to relative accuracy ``tol``.
        condition_number: ``max|lambda| / min_abs``; ``inf`` below resolution, ``nan`` for a zero
            Hessian (the docs' engine page, "What `tol` means").
        top_errors: for each value of ``top``, a bound on its error (see the solver).
        bottom_errors: the same for ``bottom``.
        min_abs_error: a bound on the error of ``min_abs``.
        scale: the largest ``|eigenvalue|`` seen, the scale of the tolerance.
        num_hvps: Hessian-vector products used.
        converged: whether every requested value met the tolerance.
        reason: why not, in words (empty when converged).
        seconds: wall time of the call.
        method: the solver used.
        hvp: ``"autograd"`` (exact) or ``"finite_difference"``.
        hvp_error: with finite differences, the estimated relative error of a product (in the
            error bounds as ``hvp_error * max|lambda|``).
        warm_start: whether the answer came from a run started from ``start`` vectors.
        warm_given_up: whether a warm run was given up for a cold one (with several locking runs,
            both this and :attr:`warm_start` can be true).
        max_stderr: the standard error of ``max`` over Hessian batches of its size (or ``None``).
        min_stderr: the same for ``min``.
        stderr_seconds: the part of :attr:`seconds` spent on the standard errors.
        vectors: the unit eigenvectors of ``top`` then ``bottom``, flat (under ``fully_shard``,
            this rank's rows); empty where none were asked or given.
        neighbours: the Ritz vectors next to the extremes (kept for warm starts).
        frontiers: the lowest top-side and highest bottom-side Ritz value among
            :attr:`tracking_vectors` (``None`` for an end not computed).
    """

    top: list[float] = field(default_factory=list)
    bottom: list[float] = field(default_factory=list)
    max: float | None = None
    min: float | None = None
    min_abs: float | None = None
    min_abs_resolved: bool | None = None
    condition_number: float | None = None
    top_errors: list[float] = field(default_factory=list)
    bottom_errors: list[float] = field(default_factory=list)
    min_abs_error: float | None = None
    scale: float = 0.0
    num_hvps: int = 0
    converged: bool = True
    reason: str = ""
    seconds: float = 0.0
    method: str = "lanczos"
    hvp: str = "autograd"
    hvp_error: float | None = None
    warm_start: bool = False
    warm_given_up: bool = False
    max_stderr: float | None = None
    min_stderr: float | None = None
    stderr_seconds: float = 0.0
    vectors: list[Tensor] = field(default_factory=list, repr=False, compare=False)
    neighbours: list[Tensor] = field(default_factory=list, repr=False, compare=False)
    frontiers: tuple[float | None, float | None] = field(
        default=(None, None), repr=False, compare=False
    )

    @property
    def top_vectors(self) -> list[Tensor]:
        """The eigenvectors of ``top`` (the first ``len(top)`` of :attr:`vectors`)."""
        return self.vectors[: len(self.top)]

    @property
    def bottom_vectors(self) -> list[Tensor]:
        """The eigenvectors of ``bottom`` (those of :attr:`vectors` after the top's)."""
        return self.vectors[len(self.top) :]

    @property
    def tracking_vectors(self) -> WarmStart:
        """What to pass as ``start`` to the next measurement (an end without all its vectors
        carries none)."""
        top, bottom = self.top_vectors, self.bottom_vectors
        return WarmStart(
            top if len(top) == len(self.top) else [],
            bottom if len(bottom) == len(self.bottom) else [],
            self.neighbours,
            self.top,
            self.bottom,
            *self.frontiers,
        )

    def fail(self, reason: str) -> None:
        """Mark the result as not converged, keeping the first reason given."""
        self.converged = False
        self.reason = self.reason or reason

    @classmethod
    def zeros(cls, top_k: int, bottom_k: int, min_abs: bool) -> HessianSpectrum:
        """A solver's exact answer for the zero operator."""
        return cls(
            top=[0.0] * top_k,
            bottom=[0.0] * bottom_k,
            top_errors=[0.0] * top_k,
            bottom_errors=[0.0] * bottom_k,
            min_abs=0.0 if min_abs else None,
            min_abs_error=0.0 if min_abs else None,
        )

    @classmethod
    def nan(
        cls, request: Request, reason: str, num_hvps: int = 0, *, stderr: bool | None = None
    ) -> HessianSpectrum:
        """A failed computation: NaN for each value ``request`` (or ``stderr``) asks for."""
        top_k, bottom_k, min_abs = request.top_k, request.bottom_k, request.min_abs
        stderr = bool(request.stderr) if stderr is None else stderr

        def nan(asked: bool) -> float | None:
            return math.nan if asked else None

        return cls(
            top=[math.nan] * top_k, bottom=[math.nan] * bottom_k, max=nan(top_k), min=nan(bottom_k),
            top_errors=[math.nan] * top_k, bottom_errors=[math.nan] * bottom_k,
            max_stderr=nan(stderr and top_k), min_stderr=nan(stderr and bottom_k),
            min_abs=nan(min_abs), min_abs_error=nan(min_abs), condition_number=nan(min_abs),
            min_abs_resolved=False if min_abs else None, num_hvps=num_hvps, converged=False,
            reason=reason, method=request.method, hvp=request.hvp,
        )  # fmt: skip

    def completed(self, request: Request, num_hvps: int) -> HessianSpectrum:
        """A solver's answer as the caller's result (a new one): sorted, with ``max``, ``min``, the
        condition number, the method and the products."""
        neighbours = [vector.detach() for vector in self.neighbours]
        fields: dict[str, Any] = {"vectors": [], "neighbours": neighbours, "num_hvps": num_hvps}
        fields.update(method=request.method, hvp=request.hvp)
        for end, descending in (("top", True), ("bottom", False)):
            values, errors = getattr(self, end), getattr(self, f"{end}_errors")
            vectors = getattr(self, f"{end}_vectors")
            order = sorted(range(len(values)), key=lambda i: values[i], reverse=descending)
            fields[end] = [values[i] for i in order]
            fields[f"{end}_errors"] = [errors[i] for i in order]
            fields["vectors"] += [vectors[i].detach() for i in order if i < len(vectors)]
            fields["max" if descending else "min"] = fields[end][0] if order else None
        if request.min_abs:
            tol, smallest, largest = request.tol, self.min_abs, self.scale
            resolved = smallest > tol * largest and self.min_abs_error <= tol * smallest
            fields["min_abs_resolved"] = resolved
            fields["condition_number"] = magnitude_ratio(largest, smallest, atol=tol * largest)
        else:
            fields.update(min_abs=None, min_abs_error=None)
        return replace(self, **fields)

    def as_dict(self) -> dict[str, float]:
        """Flat ``name -> float`` view for logging (``top_<i>``/``bottom_<i>`` when ``k > 1``)."""
        values: dict[str, float | None] = {
            "max_eigenvalue": self.max,
            "max_eigenvalue_stderr": self.max_stderr,
            "min_eigenvalue": self.min,
            "min_eigenvalue_stderr": self.min_stderr,
            "min_abs_eigenvalue": self.min_abs,
            "condition_number": self.condition_number,
            "min_abs_resolved": self.min_abs_resolved,
        }
        if len(self.top) > 1:
            values.update({f"top_{i}": v for i, v in enumerate(self.top, start=1)})
        if len(self.bottom) > 1:
            values.update({f"bottom_{i}": v for i, v in enumerate(self.bottom, start=1)})
        values.update(hvp_error=self.hvp_error, num_hvps=self.num_hvps, seconds=self.seconds)
        values.update(converged=self.converged, warm_start=self.warm_start)
        return {key: float(value) for key, value in values.items() if value is not None}
