"""The values-only Lanczos pass: three vectors, no reorthogonalization, the same bounds.

References: dense eigenvalues of ``torch.func.hessian`` on a small network, and operators built from
a known spectrum (``Q diag(lambda) Q^T``), checked with scipy's ``eigsh``.
"""

import pytest
import torch
from helpers.models import ce_loss, classification_data
from helpers.reference import dense_eigenvalues
from scipy.sparse.linalg import eigsh
from test_hessian_memory import LiveStorages

from lightning_shortcut.hessian import LambdaOperator, MatrixOperator, hessian_eigenvalues
from lightning_shortcut.hessian.solvers import lanczos, lanczos_values
from lightning_shortcut.hessian.solvers.lanczos_values import _recurrence, extreme_vectors


def _basis(size, seed=0):
    """An orthogonal matrix known in closed form: a Householder reflection ``I - 2 w w^T``."""
    generator = torch.Generator().manual_seed(seed)
    normal = torch.randn(size, generator=generator, dtype=torch.float64)
    normal /= normal.norm()
    return torch.eye(size, dtype=torch.float64) - 2 * torch.outer(normal, normal)


def _operator(eigenvalues, seed=0, dtype=torch.float64):
    """``Q diag(eigenvalues) Q^T`` with ``Q`` from :func:`_basis` (its columns the eigenvectors)."""
    values = torch.as_tensor(eigenvalues, dtype=torch.float64)
    basis = _basis(len(values), seed)
    return MatrixOperator(((basis * values) @ basis.T).to(dtype))


def _solve(solver, operator, **kwargs):
    options = dict(top_k=1, bottom_k=1, min_abs=False, tol=1e-3, max_iter=300) | kwargs
    return solver(operator, generator=torch.Generator().manual_seed(0), **options)


# a spectrum with separated ends, a far bottom and a dense bulk
SPECTRUM = [3.0, 2.9, *torch.linspace(-1.0, 1.0, 397).tolist(), -2.0]


def _tanh_mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3)
    ).double()
    return model, classification_data((5,), num_samples=64)


@pytest.fixture(scope="module")
def network():
    """The model, its batch and the dense Hessian's eigenvalues (ascending)."""
    model, (x, y) = _tanh_mlp()
    return model, (x, y), dense_eigenvalues(model, ce_loss(x, y))


@pytest.mark.parametrize("tol", [1e-2, 1e-3, 1e-6])
def test_values_of_a_network_are_within_their_bounds_of_the_dense_hessian(tol, network):
    model, data, reference = network
    spectrum = hessian_eigenvalues(model, data, tol=tol)
    assert spectrum.method == "lanczos_values" and spectrum.converged and not spectrum.vectors
    scale = float(reference.abs().max())
    for value, error, truth in (
        (spectrum.max, spectrum.top_errors[0], reference[-1]),
        (spectrum.min, spectrum.bottom_errors[0], reference[0]),
    ):
        assert abs(value - float(truth)) <= error + 1e-12 * scale
        assert error <= tol * scale


def test_extremes_stay_true_after_ghosts_appear():
    """Long past convergence the tridiagonal holds copies of the ends (ghosts: without them the
    test would show nothing); the extreme values and their bounds are still right (scipy's
    ``eigsh`` on the same matrix as the reference)."""
    operator = _operator(SPECTRUM)
    steps = _recurrence(operator, torch.ones(len(SPECTRUM), dtype=torch.float64) / 20)
    alphas, betas = torch.tensor(
        [step for step, _ in zip(steps, range(150), strict=False)], dtype=torch.float64
    ).T
    off = betas[:-1]
    ritz = torch.linalg.eigvalsh(alphas.diag() + off.diag(1) + off.diag(-1))
    assert int((ritz - 3.0).abs().lt(1e-8).sum()) >= 2  # the top is there twice (or more)
    matrix = operator.matrix.numpy()
    top = eigsh(matrix, k=1, which="LA", tol=1e-12)[0][0]
    bottom = eigsh(matrix, k=1, which="SA", tol=1e-12)[0][0]
    result = _solve(lanczos_values, operator, tol=1e-12, max_iter=150)
    assert abs(result.top[0] - top) <= result.top_errors[0] + 1e-12
    assert abs(result.bottom[0] - bottom) <= result.bottom_errors[0] + 1e-12


def test_more_than_one_value_per_end_runs_the_basis_without_ghosts(network):
    """top_k = bottom_k = 2 goes to the basis solver: the second values are the second
    eigenvalues, not ghost copies of the first; the values-only pass refuses the counts."""
    model, data, reference = network
    spectrum = hessian_eigenvalues(model, data, top_k=2, bottom_k=2, tol=1e-4)
    assert spectrum.method == "lanczos"
    truths = [*reference.flip(0)[:2].tolist(), *reference[:2].tolist()]
    found = zip(
        spectrum.top + spectrum.bottom,
        spectrum.top_errors + spectrum.bottom_errors,
        truths,
        strict=True,
    )
    assert all(abs(value - truth) <= error + 1e-9 for value, error, truth in found)
    with pytest.raises(ValueError, match="top_k=2.*method='lanczos'"):
        hessian_eigenvalues(model, data, method="lanczos_values", top_k=2)


def test_a_tight_top_cluster_pays_the_floor_and_is_within_tol():
    cluster = [10.0, 9.98, 9.96, 9.95, 9.93, *torch.linspace(-0.3, 0.3, 300).tolist()]
    for seed in range(3):
        result = _solve(lanczos_values, _operator(cluster, seed), bottom_k=0, tol=1e-3)
        assert result.converged and abs(result.top[0] - 10.0) <= 1e-3 * 10.0
        assert abs(result.top[0] - 10.0) <= result.top_errors[0] + 1e-12


def test_an_invariant_subspace_found_early_ends_the_run_exactly():
    """A rank-3 operator: the Krylov space is invariant after 4 products (beta = 0 up to rounding),
    and its Ritz values are eigenvalues."""
    factor = _basis(300)[:, :3]  # orthonormal columns: eigenvalues 4, 1, -2 and zeros
    operator = MatrixOperator(
        factor @ torch.diag(torch.tensor([4.0, 1.0, -2.0]).double()) @ factor.T
    )
    result = _solve(lanczos_values, operator, tol=1e-6)
    assert result.converged and operator.num_products <= 4
    assert result.top[0] == pytest.approx(4.0, rel=1e-10)
    assert result.bottom[0] == pytest.approx(-2.0, rel=1e-10)


@pytest.mark.parametrize("solver", [lanczos_values, lanczos])
@pytest.mark.parametrize("bottom_k", [0, 1])
def test_a_looser_tol_never_costs_more_products(solver, bottom_k):
    """On one operator, products never rise as ``tol`` loosens. The top stands 10% above the next:
    separated at every tol (the separated floor was 10 tolerances, which a tol of 0.1 never saw,
    so the top alone cost 20 products there and 18 at 1e-3)."""
    spectrum = [1.0, 0.9, *torch.linspace(-0.5, 0.5, 400).tolist(), -0.8]
    products = []
    for tol in (1e-4, 1e-3, 1e-2, 0.1, 0.5):
        operator = _operator(spectrum, dtype=torch.float32)
        result = _solve(solver, operator, bottom_k=bottom_k, tol=tol)
        assert result.converged and abs(result.top[0] - 1.0) <= max(tol, 1e-5)
        products.append(operator.num_products)
    assert products == sorted(products, reverse=True), products


def test_the_second_pass_forms_the_extreme_eigenvectors():
    operator = _operator(SPECTRUM)
    vectors = _basis(len(SPECTRUM))  # columns: the eigenvectors of SPECTRUM's entries
    first = _solve(lanczos_values, _operator(SPECTRUM), tol=1e-6)
    result = _solve(extreme_vectors, operator, tol=1e-6)
    assert result.top == first.top and result.bottom == first.bottom  # the same recurrence
    top, bottom = result.vectors
    assert abs(float(top @ vectors[:, 0])) == pytest.approx(1.0, abs=1e-6)  # 3.0
    assert abs(float(bottom @ vectors[:, -1])) == pytest.approx(1.0, abs=1e-6)  # -2.0


def test_stderr_runs_the_pass_twice_and_keeps_the_two_vectors():
    model, data = _tanh_mlp()
    values = hessian_eigenvalues(model, data, tol=1e-2)
    spectrum = hessian_eigenvalues(model, data, tol=1e-2, stderr=True)
    assert spectrum.method == "lanczos_values" and len(spectrum.vectors) == 2
    assert spectrum.num_hvps == 2 * values.num_hvps + 2  # the pass twice, a product per vector
    assert spectrum.max == values.max and spectrum.max_stderr > 0


def test_refusals_name_the_option_that_gives_vectors():
    model, data = _tanh_mlp()
    values = hessian_eigenvalues(model, data)
    with pytest.raises(ValueError, match="vectors=True"):
        hessian_eigenvalues(model, data, start=values)
    with pytest.raises(ValueError, match="eigenvectors.*vectors=True"):
        hessian_eigenvalues(model, data, method="lanczos_values", vectors=True)
    with pytest.raises(ValueError, match="min_abs=True"):
        hessian_eigenvalues(model, data, method="lanczos_values", min_abs=True)
    with_vectors = hessian_eigenvalues(model, data, vectors=True)
    with pytest.raises(ValueError, match="warm start.*vectors=True"):
        hessian_eigenvalues(model, data, method="lanczos_values", start=with_vectors)
    warm = hessian_eigenvalues(model, data, start=with_vectors)  # the basis solver takes it
    assert warm.method == "lanczos" and warm.warm_start


def test_the_pass_holds_three_vectors_and_the_second_pass_five():
    """Live parameter-sized storages at the peak of a call (a diagonal operator allocates only its
    product): three for the pass, five for the pass run again with two sums, the basis' 16 and
    more for the basis solver."""
    dim = 50_000
    diagonal = torch.linspace(-1.0, 2.0, dim)
    diagonal[-1] = 3.0
    vector = dim * 4
    peaks = {}
    for name, solver, options in (
        ("values", lanczos_values, {}),
        ("second pass", extreme_vectors, {}),
        ("basis", lanczos, {"max_basis": 16}),
    ):
        operator = LambdaOperator(lambda v: diagonal * v, dim, diagonal.new_zeros(0))
        with LiveStorages() as storages:
            result = _solve(solver, operator, tol=1e-2, **options)
        assert result.top[0] == pytest.approx(3.0, abs=3e-3)
        peaks[name] = storages.peak / vector
    assert peaks["values"] <= 3.05
    assert peaks["second pass"] <= 5.05
    assert peaks["basis"] >= 16
