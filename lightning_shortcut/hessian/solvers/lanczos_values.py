"""Lanczos for the values alone: two vectors and the tridiagonal of the three-term recurrence, no
reorthogonalization. The extreme Ritz values converge as with orthogonal vectors and lie within
``|beta_j s_j|`` of an eigenvalue (Paige 1976, 1980), so the basis solver's bounds and stopping
rule apply unchanged; one value per end. The docs' engine page, "Values alone", says why and what
each costs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from lightning_shortcut.hessian.linear_operator import LinearOperator, check_finite
from lightning_shortcut.hessian.results import HessianSpectrum
from lightning_shortcut.hessian.solvers._stopping import (
    Check,
    Decision,
    Ends,
    StoppingRule,
    check_due,
)
from lightning_shortcut.hessian.solvers._vectors import (
    owned_product,
    random_unit_vector,
    single_thread,
)
from lightning_shortcut.hessian.solvers.base import register_solver
from lightning_shortcut.hessian.solvers.lanczos import (
    DEFAULT_MAX_BASIS,
    check_options,
    vector_space,
)
from lightning_shortcut.hessian.tracking import WarmStart

__all__ = ["VALUES_ONLY", "extreme_vectors", "lanczos_values", "refuse"]

#: The registry name of the values-only pass.
VALUES_ONLY = "lanczos_values"


def refuse(top_k: int, bottom_k: int, min_abs: bool, vectors: bool, start: bool) -> str:
    """Why the values-only pass cannot answer this call, naming the option that can; or ``""``."""
    asked = [
        name
        for name, wanted in (
            (f"top_k={top_k}", top_k > 1),
            (f"bottom_k={bottom_k}", bottom_k > 1),
            ("min_abs=True", min_abs),
            ("eigenvectors", vectors),
            ("a warm start (`start`)", start),
        )
        if wanted
    ]
    if not asked:
        return ""
    return (
        f"method={VALUES_ONLY!r} finds one eigenvalue per end and holds no eigenvectors: it "
        f"cannot give {', '.join(asked)}. Pass method='lanczos' (vectors=True where the "
        "eigenvectors or a warm start from the result are wanted)."
    )


def _recurrence(
    space: LinearOperator, start: Tensor, visit: Callable[[Tensor], None] | None = None
) -> Iterator[tuple[float, float]]:
    """``(alpha_j, beta_j)`` for ``j = 1, 2, ...`` (after ``visit(q_j)``) until ``beta_j = 0``."""
    previous, current, beta = None, start, 0.0
    del start  # held as current only
    while True:
        if previous is None:
            product = owned_product(check_finite(space(current)), current)
        else:  # formed in q_{j-1}'s memory: the operator's floor, no vector more
            product = check_finite(space.add_product(current, previous.mul_(-beta)))
        previous, alpha = None, 0.0
        for _ in range(2):  # against q_j alone, twice: alpha to working accuracy, no vector more
            coefficient = float(space.reduce(torch.dot(current, product).reshape(1)))
            product.sub_(current, alpha=coefficient)
            alpha += coefficient
        beta = float(space.norm(product))
        if visit is not None:
            visit(current)  # q_j, before it is dropped
        yield alpha, beta
        if beta == 0.0:
            return
        previous, current = current, product.div_(beta)


def ritz(alphas: list[float], betas: list[float]) -> tuple[Tensor, Tensor]:
    """The eigenvalues (ascending) and eigenvectors of the tridiagonal ``T_j`` of the recurrence."""
    off = torch.tensor(betas[:-1], dtype=torch.float64)
    tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64)) + torch.diag(off, 1)
    with single_thread():
        return torch.linalg.eigh(tridiagonal + torch.diag(off, -1))


@register_solver(VALUES_ONLY, validate_options=check_options)
def lanczos_values(
    operator: LinearOperator,
    *,
    generator: torch.Generator,
    top_k: int,
    bottom_k: int,
    min_abs: bool = False,
    tol: float,
    max_iter: int,
    start: WarmStart | None = None,
    max_basis: int = DEFAULT_MAX_BASIS,
    host_basis: bool = False,
) -> HessianSpectrum:
    """The largest (``top_k = 1``) and smallest (``bottom_k = 1``) eigenvalue, holding two vectors
    and returning none; ``max_basis`` is accepted, ``host_basis`` keeps the vectors in host memory.

    Raises:
        ValueError: on ``start``, ``min_abs`` or a count above 1, naming the option that gives it.
    """
    return extreme_vectors(
        operator, generator=generator, top_k=top_k, bottom_k=bottom_k, min_abs=min_abs, tol=tol,
        max_iter=max_iter, start=start, max_basis=max_basis, host_basis=host_basis, vectors=False,
    )  # fmt: skip


def extreme_vectors(
    operator: LinearOperator,
    *,
    generator: torch.Generator,
    top_k: int,
    bottom_k: int,
    min_abs: bool = False,
    tol: float,
    max_iter: int,
    start: WarmStart | None = None,
    max_basis: int = DEFAULT_MAX_BASIS,
    host_basis: bool = False,
    vectors: bool = True,
) -> HessianSpectrum:
    """:func:`lanczos_values`, then (``vectors``) the same recurrence again from the same start,
    summing the extreme Ritz vectors ``sum_j s_j q_j`` as it goes: the eigenvectors of the values
    found (``vectors``: top, bottom), holding two more, for the products a second time."""
    check_options(max_basis, host_basis)
    refusal = refuse(top_k, bottom_k, min_abs, vectors=False, start=start is not None)
    if refusal:
        raise ValueError(refusal)
    space = vector_space(operator, host_basis)
    rule = StoppingRule(Ends(top=top_k > 0, bottom=bottom_k > 0), tol, max_iter, space)
    alphas: list[float] = []
    betas: list[float] = []
    state = generator.get_state()  # the second pass draws the same start
    steps = _recurrence(space, random_unit_vector(space, generator))
    for products, (alpha, beta) in enumerate(steps, start=1):
        alphas.append(alpha)
        betas.append(beta)
        last = products >= max_iter or beta == 0.0
        if last or check_due(products):
            decision, result, coordinates = _assess(rule, alphas, betas, top_k, bottom_k)
            if decision is not Decision.CONTINUE or last:
                break
    steps.close()  # its vectors are freed
    if decision is not Decision.STOP:
        result.fail(f"not converged to tol={tol} within max_iter={max_iter} products")
    if vectors:
        generator.set_state(state)
        wanted = [column for column, count in enumerate((top_k, bottom_k)) if count]
        coordinates = coordinates[:, wanted].to(space.like)
        sums = space.like.new_zeros(len(wanted), space.local_dim)
        rows = iter(coordinates)
        again = _recurrence(
            space,
            random_unit_vector(space, generator),
            visit=lambda vector: sums.addr_(next(rows), vector),
        )
        for _ in zip(range(len(coordinates)), again, strict=False):
            pass
        again.close()
        result.vectors = [row.div_(space.norm(row)).to(operator.like) for row in sums]
    space.free_graph()  # no more products (the standard errors build their chunks' own graphs)
    return result


def _assess(
    rule: StoppingRule, alphas: list[float], betas: list[float], top_k: int, bottom_k: int
) -> tuple[Decision, HessianSpectrum, Tensor]:
    """The rule's decision, the values with their bounds, and ``T_j``'s extreme eigenvectors."""
    values, vectors = ritz(alphas, betas)
    assessment = rule.assess(
        Check(len(alphas), values, betas[-1] * vectors[-1].abs(), beta=betas[-1])
    )
    result = HessianSpectrum(scale=assessment.scale)
    if top_k:
        result.top, result.top_errors = [float(values[-1])], [assessment.top_error]
    if bottom_k:
        result.bottom, result.bottom_errors = [float(values[0])], [assessment.bottom_error]
    return assessment.decision, result, vectors[:, [-1, 0]]
