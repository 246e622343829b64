"""Thick-restart Lanczos (Wu and Simon, SIAM J. Matrix Anal. Appl. 22, 2000) with full
reorthogonalization and locking; runs end by :mod:`~lightning_shortcut.hessian.solvers._stopping`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_shortcut.hessian.linear_operator import LinearOperator, check_finite
from lightning_shortcut.hessian.results import HessianSpectrum
from lightning_shortcut.hessian.solvers._stopping import (
    INVARIANT,
    MIN_PRODUCTS,
    Assessment,
    Check,
    Decision,
    Ends,
    StoppingRule,
    WarmEvidence,
    check_due,
)
from lightning_shortcut.hessian.solvers._vectors import (
    HostMemorySpace,
    orthonormal_rows,
    owned_product,
    single_thread,
    start_vector,
)
from lightning_shortcut.hessian.solvers.base import register_solver
from lightning_shortcut.hessian.tracking import WarmStart, carried_forward, run_start

__all__ = ["DEFAULT_MAX_BASIS", "MIN_PRODUCTS", "LanczosProcess", "lanczos", "vector_space"]

#: Basis vectors kept by default: the extra memory of a call is about this many parameter vectors.
DEFAULT_MAX_BASIS = 16
# A restart rotates the basis in column blocks of at most this many columns (an eighth of a vector
# where that is above the least): no second basis-sized buffer.
_ROTATE_BLOCK = 1 << 16
_ROTATE_BLOCK_LEAST = 1 << 12


class LanczosProcess:
    """The Lanczos process with full reorthogonalization on a preallocated basis (``buffer``, rows),
    orthogonal to the rows of ``locked``, from the unit vector ``start``.

    After each :meth:`step`, ``A V = V T + r e_m^T`` holds with ``V`` = :attr:`basis`, ``T`` =
    :attr:`projected` and ``r`` = :attr:`residual` (``||r||`` = :attr:`beta`)."""

    def __init__(
        self, operator: LinearOperator, start: Tensor, buffer: Tensor, locked: Tensor
    ) -> None:
        self.operator = operator
        self.buffer = buffer
        self.locked = locked
        self.capacity = buffer.shape[0]
        self.size = 0
        self.residual = start
        self.beta = 1.0
        self._projected = torch.zeros(self.capacity, self.capacity, dtype=torch.float64)

    @property
    def basis(self) -> Tensor:
        return self.buffer[: self.size]

    @property
    def projected(self) -> Tensor:
        """``T = V^T A V`` (float64)."""
        return self._projected[: self.size, : self.size]

    def step(self) -> None:
        """Add the normalized residual to the basis and take its product (checked finite)."""
        vector = torch.div(self.residual, self.beta, out=self.buffer[self.size])
        self.residual = None  # now a row of the basis: not held a second time through the product
        self.size += 1
        product = owned_product(check_finite(self.operator(vector)), self.buffer, self.locked)
        basis = self.basis
        coefficients = torch.zeros(self.size, dtype=torch.float64)
        reduce = self.operator.reduce  # inner products of sharded vectors are summed over ranks
        for _ in range(2):  # twice is enough; in place: no second vector beside the product
            projection = reduce(basis @ product)
            product.addmv_(basis.T, projection, alpha=-1)
            coefficients += projection.double().cpu()
            if self.locked.shape[0]:
                locked = reduce(self.locked @ product)
                product.addmv_(self.locked.T, locked, alpha=-1)
        last = self.size - 1
        self._projected[: self.size, last] = coefficients
        self._projected[last, : self.size] = coefficients
        self.residual = product
        self.beta = float(self.operator.norm(product))

    def ritz(self) -> tuple[Tensor, Tensor, Tensor]:
        """Ritz values (ascending), their coordinate vectors (columns) and residual norms."""
        with single_thread():
            values, vectors = torch.linalg.eigh(self.projected)
        return values, vectors, self.beta * vectors[-1].abs()

    def ritz_vector(self, coordinates: Tensor, out: Tensor | None = None) -> Tensor:
        """The unit Ritz vector ``V^T coordinates``, written into ``out`` where given."""
        coordinates = coordinates.to(self.buffer)
        if out is None:
            vector = coordinates @ self.basis
        else:
            vector = torch.mv(self.basis.T, coordinates, out=out)
        return vector.div_(self.operator.norm(vector))

    def grow(self, capacity: int) -> None:
        """Enlarge the basis storage to ``capacity`` vectors (a copy; only ``min_abs`` runs grow)."""
        buffer = self.buffer.new_empty(capacity, self.buffer.shape[1])
        buffer[: self.size] = self.basis
        projected = torch.zeros(capacity, capacity, dtype=torch.float64)
        projected[: self.size, : self.size] = self.projected
        self.buffer, self._projected, self.capacity = buffer, projected, capacity

    def restart(self, coordinates: Tensor, values: Tensor) -> None:
        """Keep the Ritz vectors ``V coordinates`` (columns) with Ritz values ``values``."""
        keep = coordinates.shape[1]
        rotation = coordinates.T.to(self.buffer)
        width = self.buffer.shape[1]
        columns = min(_ROTATE_BLOCK, max(width // (8 * keep), _ROTATE_BLOCK_LEAST))
        for begin in range(0, width, columns):
            block = self.buffer[: self.size, begin : begin + columns]
            self.buffer[:keep, begin : begin + columns] = rotation @ block
        self._projected.zero_()
        self._projected[:keep, :keep] = torch.diag(values)
        self.size = keep  # A Y = Y diag(values) + r s^T: the next step adds r / beta


def _restart_coordinates(
    values: Tensor, vectors: Tensor, ends: Ends, count: int
) -> tuple[Tensor, Tensor]:
    """The Ritz coordinates to keep: ``count`` of them, taken in turn from each wanted end."""
    orders = [
        order
        for wanted, order in (
            (ends.top, torch.argsort(values, descending=True)),
            (ends.bottom, torch.argsort(values)),
            (ends.min_abs, torch.argsort(values.abs())),
        )
        if wanted
    ]
    chosen: list[int] = []
    position = 0
    while len(chosen) < count:
        for order in orders:
            index = int(order[position])
            if index not in chosen and len(chosen) < count:
                chosen.append(index)
        position += 1
    chosen.sort()
    return vectors[:, chosen], values[chosen]


@dataclass
class _Run:
    """A run's end: its process, last Ritz values (ascending) and coordinates, and assessment."""

    process: LanczosProcess
    values: Tensor
    coordinates: Tensor
    assessment: Assessment


def _run(
    operator: LinearOperator, start: Tensor, buffer: Tensor, locked: Tensor, rule: StoppingRule
) -> _Run:
    """One restarted Lanczos run on the complement of ``locked``, until ``rule`` ends it."""
    room = operator.dim - locked.shape[0]
    process = LanczosProcess(operator, start, buffer[: min(buffer.shape[0], room)], locked)
    keep = max(1, process.capacity // 2)
    ends = rule.ends
    for products in range(1, rule.max_iter + 1):
        process.step()
        full = process.size == process.capacity or process.size == room
        invariant = process.beta <= INVARIANT * float(process.projected.abs().max())
        if not (full or invariant or products == rule.max_iter or check_due(process.size)):
            continue
        values, vectors, residuals = process.ritz()
        assessment = rule.assess(
            Check(
                products,
                values,
                residuals,
                beta=process.beta,
                whole_space=process.size == room,
                projected=process.projected,
                ritz_vector=lambda end, ritz=vectors: process.ritz_vector(
                    ritz[:, -1 if end == "top" else 0]
                ),
            )
        )
        if assessment.decision is not Decision.CONTINUE:
            break
        if process.size < process.capacity:
            continue
        if ends.min_abs:  # an interior problem: restarts lose it, so the basis grows
            process.grow(min(2 * process.capacity, room, rule.max_iter + 1))
        else:
            process.restart(*_restart_coordinates(values, vectors, ends, keep))
    process.residual = None  # not needed once the run has ended
    return _Run(process, values, vectors, assessment)


def check_options(max_basis: int = DEFAULT_MAX_BASIS, host_basis: bool = False) -> None:
    """Raise a ``ValueError`` on a bad option of :func:`lanczos` (``solver_options``)."""
    if isinstance(max_basis, bool) or not isinstance(max_basis, int) or max_basis < 3:
        raise ValueError(f"`max_basis` must be an int >= 3, got {max_basis!r}.")
    if not isinstance(host_basis, bool):
        raise ValueError(f"`host_basis` must be True or False, got {host_basis!r}.")


def _host_like(like: Tensor) -> Tensor:
    return torch.empty(0, dtype=like.dtype)


def vector_space(operator: LinearOperator, host_basis: bool) -> LinearOperator:
    """The space the solver's vectors live in: the operator's, or host memory where asked."""
    home = _host_like(operator.like)
    if not host_basis or (home.device, home.dtype) == (operator.like.device, operator.like.dtype):
        return operator
    return HostMemorySpace(operator, home)


@register_solver("lanczos", supports_min_abs=True, validate_options=check_options)
def lanczos(
    operator: LinearOperator,
    *,
    generator: torch.Generator,
    top_k: int,
    bottom_k: int,
    min_abs: bool,
    tol: float,
    max_iter: int,
    start: WarmStart | None = None,
    max_basis: int = DEFAULT_MAX_BASIS,
    host_basis: bool = False,
) -> HessianSpectrum:
    """Top-k and bottom-k eigenvalues by restarted Lanczos runs, each locking one pair per end (a
    Krylov space holds one copy of a repeated eigenvalue: locking finds multiplicities).

    ``start`` makes warm runs (a warm run given up is run again cold); ``max_iter`` bounds each
    run's products, ``max_basis`` the vectors held (``>= 3``; a ``min_abs`` run grows to
    ``max_iter``); ``host_basis=True`` keeps the solver's vectors in host memory."""
    check_options(max_basis, host_basis)
    given, operator = operator, vector_space(operator, host_basis)
    buffer = operator.empty(min(max_basis, operator.dim, max_iter + 1))
    found = operator.empty(0)  # the eigenvectors, each in its row; the locked rows are a view
    result = HessianSpectrum()
    top_vectors: list[Tensor] = []
    bottom_vectors: list[Tensor] = []
    locked, first = 0, True
    every: list[tuple[float, float, Tensor]] = []  # the locked eigenpairs (value, error, vector)
    while first or len(result.top) < top_k or len(result.bottom) < bottom_k:
        want_top, want_bottom = len(result.top) < top_k, len(result.bottom) < bottom_k
        if operator.dim - locked <= 0:  # every eigenpair is locked: each end takes from them all
            ordered = sorted(every, key=lambda pair: pair[0])
            tops, bottoms = ordered[::-1][:top_k], ordered[:bottom_k]
            result.top, result.top_errors, top_vectors = (
                list(part) for part in zip(*tops, strict=True)
            )
            result.bottom, result.bottom_errors, bottom_vectors = (
                list(part) for part in zip(*bottoms, strict=True)
            )
            break
        ends = Ends(
            top=want_top or (first and min_abs),
            bottom=want_bottom or (first and min_abs),
            min_abs=first and min_abs,
        )
        against = found[:locked]
        plan = None
        if start is not None and not ends.min_abs:  # a min_abs run is always cold
            plan = run_start(
                start, len(result.top), len(result.bottom), top=ends.top, bottom=ends.bottom
            )
        inherited = orthonormal_rows(operator, plan.vectors) if plan else None
        evidence = None if inherited is None else WarmEvidence(inherited, plan.frontiers)
        warm = () if inherited is None else (plan.vectors, plan.weights, plan.noise)
        rule = StoppingRule(ends, tol, max_iter, operator, evidence)
        begin = buffer[0].copy_(start_vector(operator, generator, against, *warm))
        run = _run(operator, begin, buffer, against, rule)
        given_up = run.assessment.decision is Decision.GIVE_UP
        if given_up:  # the warm rule gave the run up: a cold run from a random start decides
            begin = buffer[0].copy_(start_vector(operator, generator, against))
            run = _run(
                operator, begin, buffer, against, StoppingRule(ends, tol, max_iter, operator)
            )
        result.warm_start = result.warm_start or (inherited is not None and not given_up)
        result.warm_given_up = result.warm_given_up or given_up
        assessment = run.assessment
        if not assessment.converged:
            result.fail(f"not converged to tol={tol} within max_iter={max_iter} products")
        result.scale = max(result.scale, assessment.scale)
        if first and min_abs:
            result.min_abs, result.min_abs_error = assessment.min_abs, assessment.min_abs_error
        # a one-vector basis has one Ritz vector: locked once
        lock_bottom = want_bottom and (not want_top or run.process.size > 1)
        if first and top_k + bottom_k:
            found = operator.empty(top_k + bottom_k)
        if len(result.top) + want_top >= top_k and len(result.bottom) + want_bottom >= bottom_k:
            operator.free_graph()  # the last run: no more products; its vectors are formed below
        if want_top:
            result.top.append(float(run.values[-1]))
            result.top_errors.append(assessment.top_error)
            top_vectors.append(run.process.ritz_vector(run.coordinates[:, -1], found[locked]))
            every.append((result.top[-1], assessment.top_error, top_vectors[-1]))
            locked += 1
        if want_bottom:
            result.bottom.append(float(run.values[0]))
            result.bottom_errors.append(assessment.bottom_error)
            into = found[locked] if lock_bottom else None
            bottom_vectors.append(run.process.ritz_vector(run.coordinates[:, 0], into))
            locked += lock_bottom
            if lock_bottom:
                every.append((result.bottom[-1], assessment.bottom_error, bottom_vectors[-1]))
        if first:  # the neighbours of the extremes, carried forward for the next warm start
            columns, result.frontiers = carried_forward(
                run.values, top=ends.top, bottom=ends.bottom
            )
            result.neighbours = [run.process.ritz_vector(run.coordinates[:, i]) for i in columns]
        first = False
    result.vectors = [vector.to(given.like) for vector in top_vectors + bottom_vectors]
    result.neighbours = [vector.to(given.like) for vector in result.neighbours]
    return result
