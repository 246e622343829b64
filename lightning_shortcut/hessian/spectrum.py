"""``hessian_eigenvalues``: the extreme eigenvalues of a model's loss Hessian, without side effects."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Literal

from torch import Tensor, nn

from lightning_shortcut.hessian.batches import LossFn
from lightning_shortcut.hessian.context import (
    ParameterSelection,
    hessian_operator,
    select_parameters,
)
from lightning_shortcut.hessian.linear_operator import LinearOperator
from lightning_shortcut.hessian.operator import HessianOperator
from lightning_shortcut.hessian.params import ParamsSpec
from lightning_shortcut.hessian.results import HessianSpectrum
from lightning_shortcut.hessian.sampling import rayleigh_stderr
from lightning_shortcut.hessian.settings import AllReduce, HessianSettings, Hvp, Mode
from lightning_shortcut.hessian.sharded import ShardingError
from lightning_shortcut.hessian.tracking import WarmStart, answered_cold

__all__ = ["compute_spectrum", "hessian_eigenvalues"]


def hessian_eigenvalues(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None = None,
    *,
    method: str = "lanczos",
    top_k: int = 1,
    bottom_k: int = 1,
    min_abs: bool = False,
    params: ParamsSpec = None,
    tol: float = 1e-3,
    max_iter: int | None = None,
    seed: int = 0,
    mode: Mode = "eval",
    all_reduce: AllReduce | None = None,
    start: HessianSpectrum | WarmStart | None = None,
    stderr: bool | Literal["cold"] = False,
    solver_options: Mapping[str, Any] | None = None,
    transform: Callable[[HessianOperator], LinearOperator] | None = None,
    hvp: Hvp = "autograd",
    vectors: bool = False,
) -> HessianSpectrum:
    """Top and bottom eigenvalues of the Hessian of ``model``'s mean loss on ``data``.

    Nothing about the model or the run changes: every ``.grad``, buffer, train/eval mode and global
    RNG state is as it was, and no tensor keeps a graph. Random start vectors come from a private
    generator seeded with ``seed``. A compiled model is differentiated eagerly; half-precision
    parameters give products in their precision (about 2-3 correct digits in bfloat16).

    Args:
        model: the model.
        data: one batch ``(inputs, targets)`` or an iterable of batches; the Hessian is that of the
            mean loss over all samples (batches weighted by size).
        loss_fn: ``loss_fn(model, batch) -> scalar`` mean loss of a batch; default: cross-entropy of
            ``model(inputs)`` (logits) against ``targets`` (class indices or probabilities).
        method: a solver of :data:`~lightning_shortcut.hessian.SOLVERS`: ``"lanczos"`` (the
            default and the fastest), ``"power"``, ``"pyhessian"`` or your own.
        top_k: number of largest eigenvalues.
        bottom_k: number of smallest eigenvalues.
        min_abs: also the smallest ``|eigenvalue|`` and the condition number (``"lanczos"``).
        params: ``None``/``"all"`` (all that require grad), ``"residual"`` (the ResidualStack
            branches, the paper's Hessian), a callable ``model -> parameters`` or the parameters.
        tol: every returned eigenvalue is within ``tol * max|lambda|`` of the true one by the
            solver's bound (``top_errors``/``bottom_errors``; the engine page, "What `tol`
            means"); ``min_abs`` to relative accuracy ``tol`` or reported below resolution.
        max_iter: products per eigenvalue run (default 300, 1000 with ``min_abs``).
        seed: seed of the private generator for start vectors.
        mode: ``"eval"`` (default; dropout off, BatchNorm on running statistics) or ``"train"``
            (buffers are restored afterwards, dropout masks are fixed for the call).
        all_reduce: sum across processes for distributed data (see :class:`HessianOperator`).
        start: a previous result at nearby weights (a :class:`HessianSpectrum`, an
            :class:`~lightning_shortcut.hessian.EdgeOfStability`, or their ``tracking_vectors``)
            to start Lanczos from ([warm starts][warm-rule]; audit with a cold run now and then,
            as :class:`~lightning_shortcut.hessian.SpectrumTracker` does).
        stderr: also the sampling error of ``max`` and ``min`` over Hessian batches of the same
            size (``max_stderr``, ``min_stderr``); needs ``mode="eval"`` and no ``transform``.
            ``"cold"``: only where the answer comes (in part) from a cold run.
        solver_options: the solver's own options, e.g. ``{"max_basis": 10}`` or
            ``{"host_basis": True}`` for ``"lanczos"`` (the engine page, "Memory").
        transform: solve for ``transform(H)``, a :class:`LinearOperator` of the same size, instead
            of ``H`` (not with ``"pyhessian"``).
        hvp: ``"autograd"`` (default: double backward, exact) or ``"finite_difference"`` (central
            differences of gradients; its error in ``hvp_error`` and the bounds; not with
            ``"pyhessian"``).
        vectors: also return the eigenvectors and the Ritz vectors a warm start reads; without
            them ``"lanczos"`` runs ``"lanczos_values"`` where it can (the engine page, "Values
            alone").

    Returns:
        A :class:`HessianSpectrum`. A non-finite loss gives NaN values with ``converged=False``.

    Raises:
        ValueError: on a bad option (checked by
            :class:`~lightning_shortcut.hessian.HessianSettings` before anything is computed),
            empty data, a batch the default loss cannot read, parameters not in the model, a
            non-scalar loss, no trainable parameters, a bad ``start`` or ``transform``, or
            ``top_k`` or ``bottom_k`` above the number of parameters.
        TypeError: on an option of the wrong type.
        RuntimeError: where a registered solver returns another number of values than asked.

    Example:
        ```python
        spectrum = hessian_eigenvalues(model, (x, y), top_k=2, params="residual")
        spectrum.max, spectrum.min, spectrum.top_errors
        ```
    """
    settings = HessianSettings(
        params=params, mode=mode, hvp=hvp, seed=seed, all_reduce=all_reduce, method=method,
        top_k=top_k, bottom_k=bottom_k, min_abs=min_abs, tol=tol, max_iter=max_iter,
        solver_options=solver_options, stderr=stderr, vectors=vectors,
    )  # fmt: skip
    return compute_spectrum(model, data, loss_fn, settings, start=start, transform=transform)


def compute_spectrum(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None,
    settings: HessianSettings,
    *,
    start: HessianSpectrum | WarmStart | None = None,
    transform: Callable[[HessianOperator], LinearOperator] | None = None,
    selection: ParameterSelection | None = None,
) -> HessianSpectrum:
    """:func:`hessian_eigenvalues` with its options as one ``HessianSettings`` (and the parameters
    where ``select_parameters`` already chose them: ``selection``); raises as it does."""
    spec = settings.solver
    if transform is not None and (not callable(transform) or spec.touches_grads):
        raise ValueError(
            f"`transform` must be a callable and `method` a solver of the operator; got "
            f"transform={transform!r} with method={settings.method!r}."
        )
    if settings.stderr and transform is not None:
        raise ValueError(
            f"`stderr={settings.stderr!r}` needs no transform (the standard error is of the "
            f"Hessian itself), got transform={transform!r}."
        )
    if selection is None:
        selection = select_parameters(model, settings)
    if settings.stderr and selection.sharded:
        raise ShardingError(
            f"`stderr={settings.stderr!r}` is not available on a model sharded by fully_shard (the "
            "chunks' products would need whole vectors on every rank); pass stderr=False."
        )
    begin = time.perf_counter()
    with hessian_operator(
        model, data, loss_fn, settings, selection, clone_grads=spec.touches_grads
    ) as operator:
        solved = operator if transform is None else transform(operator)
        if not isinstance(solved, LinearOperator) or solved.dim != operator.dim:
            raise ValueError(
                f"`transform` must return a LinearOperator of size {operator.dim} (the Hessian's), "
                f"got {solved!r}."
            )
        result = settings.solve(solved, start=_start_vectors(start, operator.local_dim))
        # "cold": wanted unless every answer came from a warm run
        stderr = settings.stderr is True or (settings.stderr == "cold" and answered_cold(result))
        products, stderrs = operator.num_products, {}
        if result.vectors and stderr:
            # the extreme vectors' quotients over the batch's chunks: one product's samples each
            ends = [vectors[:1] for vectors in (result.top_vectors, result.bottom_vectors)]
            stderr_begin = time.perf_counter()
            errors = iter(rayleigh_stderr(operator, [v for end in ends for v in end]))
            for key, end in zip(("max_stderr", "min_stderr"), ends, strict=True):
                stderrs[key] = next(errors) if end else None
            stderrs["stderr_seconds"] = time.perf_counter() - stderr_begin
            products += sum(map(len, ends))
    result = replace(result, num_hvps=products, seconds=time.perf_counter() - begin, **stderrs)
    return _with_product_error(result, operator.hvp_error, settings.tol)


def _with_product_error(
    spectrum: HessianSpectrum, error: float | None, tol: float
) -> HessianSpectrum:
    """Fold the finite-difference products' estimated error into the spectrum's error bounds."""
    if error is None:
        return spectrum
    extra = error * spectrum.scale
    changes: dict[str, Any] = {
        "hvp_error": error,
        "top_errors": [value + extra for value in spectrum.top_errors],
        "bottom_errors": [value + extra for value in spectrum.bottom_errors],
    }
    unresolved = False
    if spectrum.min_abs_error is not None and spectrum.min_abs is not None:
        min_abs_error = spectrum.min_abs_error + extra
        unresolved = bool(spectrum.min_abs_resolved) and min_abs_error > tol * abs(spectrum.min_abs)
        changes["min_abs_error"] = min_abs_error
        changes["min_abs_resolved"] = spectrum.min_abs_resolved and not unresolved
    if error > tol or unresolved:
        changes["converged"] = False
        # the coarse products first: they are why a solver that ran out of products did
        coarse = (
            f"finite-difference products are accurate to about {error:.1e} of max|lambda|, "
            f"not enough for tol={tol}"
        )
        changes["reason"] = "; ".join(filter(None, (coarse, spectrum.reason)))
    return replace(spectrum, **changes)


def _start_vectors(start: Any, dim: int) -> WarmStart | None:
    """The start with flat, detached vectors (``None`` for none)."""
    if start is None:
        return None
    start = getattr(start, "tracking_vectors", start)  # a previous result itself
    if isinstance(start, WarmStart):
        vectors = list(start.vectors)
    else:
        vectors = [start] if isinstance(start, Tensor) else list(start)
    for index, vector in enumerate(vectors):
        if not isinstance(vector, Tensor) or vector.numel() != dim:
            shape = tuple(getattr(vector, "shape", ()))
            raise ValueError(
                f"`start[{index}]` must be a flat vector of {dim} entries (the parameters; this "
                f"rank's part of them under fully_shard), got shape {shape}."
            )
    if not vectors:
        if isinstance(start, WarmStart) and (start.top or start.bottom):
            raise ValueError(
                "`start` holds values but no eigenvectors (a call that did not ask for them): pass "
                "vectors=True to the call whose result starts this one."
            )
        return None
    if not isinstance(start, WarmStart):
        raise ValueError(
            "`start` must be a previous result (a HessianSpectrum or an EdgeOfStability) or its "
            "`tracking_vectors`, which carry the values the warm rule checks; got bare vectors "
            f"({type(start).__name__} of {len(vectors)})."
        )
    return start.map(lambda vector: vector.reshape(-1).detach())
