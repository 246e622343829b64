"""Several eigensolver runs side by side, the products of each step computed in one call.

A measurement of many operators at once (the diagonal blocks of a Hessian:
:func:`~lightning_shortcut.hessian.block_eigenvalues`) wants, at every step, the products of all
runs together: one pass over the data for all of them, or one vmapped product. The runs are the
registered solvers themselves, unchanged (their error bounds, stopping rules and locking), so that
a run on a block is the run a whole-model measurement of that block makes.

A solver is a plain function that calls its operator when it needs a product, so each run gets a
thread of its own and the threads take turns: a run goes on until it asks for a product (or
finishes) and then hands over; once every unfinished run has asked, the caller's thread computes
all the products in one call of ``products`` and hands each run its own. One thread runs at any
moment, the others wait on a semaphore: the runs are as deterministic as sequential ones, the
products run where the caller set up autograd (grad mode is per thread), and the global state the
solvers touch (torch's thread count, set around their dense algebra) is never touched by two at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_shortcut.hessian.linear_operator import LinearOperator, NonFiniteProductError
from lightning_shortcut.hessian.results import HessianSpectrum
from lightning_shortcut.hessian.solvers.base import Solver

__all__ = ["LockstepResult", "Products", "solve_in_lockstep"]

#: ``products(requests) -> products``: for each ``(run index, vector)`` asked at a step, the product
#: of that run's operator with the vector, in the order asked.
Products = Callable[[Sequence[tuple[int, Tensor]]], Sequence[Tensor]]


@dataclass(frozen=True)
class LockstepResult:
    """What :func:`solve_in_lockstep` returns.

    Attributes:
        results: each run's result, ``None`` where a product was not finite.
        products: the products each run used.
        steps: the calls of ``products`` (the products of the longest run).
    """

    results: list[HessianSpectrum | None]
    products: list[int]
    steps: int


class _Cancelled(BaseException):
    """Raised in a run's thread when the caller's thread gives the runs up (its own error)."""


class _Turn:
    """One run's side of the hand-over: its thread waits on ``resume``, the caller's on ``asked``."""

    def __init__(self) -> None:
        self.resume = threading.Semaphore(0)
        self.asked = threading.Semaphore(0)
        self.vector: Tensor | None = None
        self.product: Tensor | None = None
        self.finished = False
        self.cancelled = False
        self.result: HessianSpectrum | None = None
        self.error: BaseException | None = None

    def ask(self, vector: Tensor) -> Tensor:
        """On the run's thread: post ``vector`` and wait for its product."""
        self.vector = vector
        self.asked.release()
        self.resume.acquire()
        if self.cancelled:
            raise _Cancelled
        product, self.product, self.vector = self.product, None, None
        return product

    def hand_over(self) -> None:
        """On the caller's thread: let the run go on until it asks for a product or finishes."""
        self.resume.release()
        self.asked.acquire()


class _TurnOperator(LinearOperator):
    """A run's operator: a product is asked of the caller's thread."""

    def __init__(self, dim: int, like: Tensor, turn: _Turn) -> None:
        super().__init__(dim, like)
        self.turn = turn

    def _matvec(self, vector: Tensor) -> Tensor:
        return self.turn.ask(vector)


def _run(
    solve: Solver,
    operator: _TurnOperator,
    seed: int,
    stream: Any,
    options: dict[str, Any],
) -> None:
    turn = operator.turn
    turn.resume.acquire()
    try:
        if turn.cancelled:
            return
        # the current CUDA stream is per thread: the run's algebra goes on the caller's
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            generator = torch.Generator().manual_seed(seed)
            turn.result = solve(operator, generator=generator, start=None, **options)
    except _Cancelled:
        pass
    except BaseException as error:  # handed to the caller's thread, raised there
        turn.error = error
    finally:
        turn.finished = True
        turn.asked.release()


def solve_in_lockstep(
    solve: Solver,
    dims: Sequence[int],
    like: Tensor,
    products: Products,
    *,
    seed: int,
    **options: Any,
) -> LockstepResult:
    """Run ``solve`` on ``len(dims)`` operators at once, their products asked together.

    Args:
        solve: a registered solver (:class:`~lightning_shortcut.hessian.solvers.Solver`).
        dims: each operator's size.
        like: an empty tensor of the dtype and device of the runs' vectors.
        products: computes a step's products (:data:`Products`); it runs on the caller's thread.
        seed: every run draws its start vectors from a generator of its own seeded with ``seed``
            (the start a single run with this seed has).
        **options: the solver's other keyword arguments (``top_k``, ``bottom_k``, ``min_abs``,
            ``tol``, ``max_iter``, solver options); every run gets them.

    Returns:
        A :class:`LockstepResult`. A run whose product is not finite gives ``None``.

    Raises:
        Exception: whatever ``products`` or a run raises (but for a non-finite product), after the
            other runs are given up and their threads ended.
    """
    stream = torch.cuda.current_stream(like.device) if like.is_cuda else None
    operators = [_TurnOperator(dim, like, _Turn()) for dim in dims]
    turns = [operator.turn for operator in operators]
    threads = [
        threading.Thread(
            target=_run,
            args=(solve, operator, seed, stream, options),
            name=f"lockstep-run-{index}",
            daemon=True,
        )
        for index, operator in enumerate(operators)
    ]
    for thread in threads:
        thread.start()
    steps = 0
    try:
        for turn in turns:
            turn.hand_over()
        while waiting := [index for index, turn in enumerate(turns) if not turn.finished]:
            _raise_failure(turns)
            computed = products([(index, turns[index].vector) for index in waiting])
            steps += 1
            for index, product in zip(waiting, computed, strict=True):
                turns[index].product = product
                turns[index].hand_over()
        _raise_failure(turns)
    finally:
        for turn in turns:
            if not turn.finished:
                turn.cancelled = True
                turn.hand_over()
        for thread in threads:
            thread.join()
    return LockstepResult(
        results=[turn.result for turn in turns],
        products=[operator.num_products for operator in operators],
        steps=steps,
    )


def _raise_failure(turns: Sequence[_Turn]) -> None:
    """Raise the first error of a run, but for a non-finite product (that run's answer is NaN)."""
    for turn in turns:
        if turn.error is not None and not isinstance(turn.error, NonFiniteProductError):
            raise turn.error
