"""Shifted power iteration with deflation: the baseline the Lanczos solver is measured against."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_shortcut.hessian.linear_operator import LinearOperator, check_finite
from lightning_shortcut.hessian.results import HessianSpectrum
from lightning_shortcut.hessian.solvers._vectors import (
    orthogonalize,
    owned_product,
    random_unit_vector,
    stack_rows,
)
from lightning_shortcut.hessian.solvers.base import register_solver
from lightning_shortcut.hessian.tracking import WarmStart

__all__ = ["power_iteration"]


def _spectral_radius(
    operator: LinearOperator, generator: torch.Generator, tol: float, max_iter: int
) -> float:
    """``max|lambda|`` from ``||A v||`` along a power iteration from a random start."""
    vector = random_unit_vector(operator, generator)
    rho = 0.0
    for _ in range(max_iter):
        product = owned_product(check_finite(operator(vector)), vector)
        estimate = float(operator.norm(product))
        if estimate == 0.0:
            break
        vector = product.div_(estimate)
        settled = abs(estimate - rho) <= tol * estimate
        rho = estimate
        if settled:
            break
    return rho


def _shifted_power_iteration(
    operator: LinearOperator,
    generator: torch.Generator,
    shift: float,
    locked: Tensor,
    threshold: float,
    max_iter: int,
) -> tuple[float, Tensor, float, bool]:
    """Power iteration on ``A + shift I`` off ``locked``: ``(theta, vector, residual, converged)``."""
    vector = random_unit_vector(operator, generator, locked)
    theta, residual = math.nan, math.inf
    for _ in range(max_iter):
        product = owned_product(check_finite(operator(vector)), vector, locked)
        theta = float(operator.reduce(vector @ product))
        remainder = product.sub_(vector, alpha=theta)  # A v - theta v, in the product's place
        residual = float(operator.norm(remainder))
        if residual <= threshold:
            return theta, vector, residual, True
        # (A + shift I) v = remainder + (theta + shift) v
        shifted = remainder.add_(vector, alpha=theta + shift)
        vector = orthogonalize(operator, shifted, locked, inplace=True)
        norm = operator.norm(vector)
        vector = vector.div_(norm) if float(norm) > 0 else vector
    return theta, vector, residual, False


@register_solver("power")
def power_iteration(
    operator: LinearOperator,
    *,
    generator: torch.Generator,
    top_k: int,
    bottom_k: int,
    min_abs: bool = False,
    tol: float,
    max_iter: int,
    start: WarmStart | None = None,
) -> HessianSpectrum:
    """Top-k and bottom-k eigenvalues by power iteration on ``A +- 1.1 rho I`` with deflation,
    ``rho = max|lambda|`` from ``||A v||`` (the Rayleigh quotient does not converge on a symmetric
    spectrum); the errors are the residuals and ``start`` is not used."""
    rho = _spectral_radius(operator, generator, max(tol, 1e-3), max_iter)
    if rho == 0.0:  # A v = 0 for a random v: the operator is (numerically) zero
        return HessianSpectrum.zeros(top_k, bottom_k, min_abs=False)
    result = HessianSpectrum(scale=rho)
    shift = 1.1 * rho
    for count, sign, values, errors in (
        (top_k, 1.0, result.top, result.top_errors),
        (bottom_k, -1.0, result.bottom, result.bottom_errors),
    ):
        vectors: list[Tensor] = []  # this end's, top then bottom in result.vectors
        for _ in range(count):
            against = stack_rows(vectors, operator)
            theta, found, residual, converged = _shifted_power_iteration(
                operator, generator, sign * shift, against, tol * rho, max_iter
            )
            if not converged:
                result.fail(f"not converged to tol={tol} within max_iter={max_iter} products")
            values.append(theta)
            vectors.append(found)
            errors.append(residual)
        result.vectors += vectors
    return result
