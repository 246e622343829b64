"""The eigensolvers on plain symmetric matrices, against torch.linalg.eigvalsh."""

import copy
import pickle

import pytest
import torch

from lightning_shortcut.hessian import HessianSettings, LambdaOperator, MatrixOperator
from lightning_shortcut.hessian.solvers import lanczos, power_iteration


def _matrix(eigenvalues, seed=0):
    generator = torch.Generator().manual_seed(seed)
    size = len(eigenvalues)
    basis, _ = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return basis @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ basis.T


SPECTRA = {
    "symmetric_repeated": [3.0] * 4 + [-3.0] * 4 + [1.0] * 4 + [-1.0] * 4,
    "indefinite": [5.0, 2.0, 1.5, 0.3, -0.2, -1.0, -4.0] + [0.01 * i for i in range(20)],
    "semidefinite_singular": [2.0, 1.0, 0.5] + [0.0] * 10,
    "zero": [0.0] * 12,
}


def _solve(solver, matrix, **kwargs):
    options = {"top_k": 1, "bottom_k": 1, "min_abs": False, "start": None} | kwargs
    return solver(MatrixOperator(matrix), generator=torch.Generator().manual_seed(0), **options)


@pytest.mark.parametrize("solver", [lanczos, power_iteration])
@pytest.mark.parametrize("name", list(SPECTRA))
def test_extremes_with_multiplicity(solver, name):
    matrix = _matrix(SPECTRA[name])
    exact = torch.linalg.eigvalsh(matrix)
    result = _solve(solver, matrix, top_k=3, bottom_k=3, tol=1e-10, max_iter=5000)
    assert result.converged
    assert result.top == pytest.approx(exact.flip(0)[:3].tolist(), abs=1e-8)
    assert result.bottom == pytest.approx(exact[:3].tolist(), abs=1e-8)


@pytest.mark.parametrize("name", ["symmetric_repeated", "indefinite"])
def test_lanczos_min_abs(name):
    matrix = _matrix(SPECTRA[name])
    result = _solve(lanczos, matrix, min_abs=True, tol=1e-10, max_iter=500)
    assert result.min_abs == pytest.approx(
        float(torch.linalg.eigvalsh(matrix).abs().min()), abs=1e-8
    )


def test_max_iter_budget_reports_not_converged():
    matrix = _matrix([float(i) for i in range(200)])
    calls = []
    operator = LambdaOperator(
        lambda v: calls.append(1) or matrix @ v, 200, torch.zeros(200, dtype=torch.float64)
    )
    result = lanczos(
        operator, generator=torch.Generator().manual_seed(0), top_k=1, bottom_k=1, min_abs=False,
        tol=1e-12, max_iter=5, start=None,
    )  # fmt: skip
    assert len(calls) == 5
    assert not result.converged


def test_pyhessian_stopping_rule_is_fooled_at_the_zero_point():
    """Why our backend re-checks residuals: pyhessian stops at once on a +-sigma spectrum."""
    from pyhessian import hessian as PyHessian

    from lightning_shortcut import ResidualStack, ZeroInit, half_mse_loss

    torch.manual_seed(0)
    x = torch.randn(30, 3)
    y = x @ torch.tensor([[0.2, -0.9, 0.1], [0.5, 0.3, 0.0], [0.0, 0.4, -0.6]]).T
    model = ZeroInit()(ResidualStack(3, 2, 2))
    sigma_max = float(torch.linalg.svdvals(x.T @ (x - y) / 30)[0])
    raw, _ = PyHessian(model, half_mse_loss, data=(x, y), cuda=False).eigenvalues(
        maxIter=100, tol=1e-3
    )
    assert abs(raw[0]) < 0.9 * sigma_max  # a Rayleigh quotient that never moves
    for param in model.parameters():
        param.grad = None


@pytest.fixture
def scipy_solver():
    """A user's own solver (scipy's ARPACK), registered for the test and removed afterwards."""
    import numpy as np
    from scipy.sparse.linalg import LinearOperator as ScipyOperator
    from scipy.sparse.linalg import eigsh

    from lightning_shortcut.hessian import SOLVERS, EigenResult, register_solver

    @register_solver("scipy_eigsh")
    def scipy_eigsh(operator, *, generator, top_k, bottom_k, min_abs, tol, max_iter, start):
        def matvec(v):
            vector = torch.from_numpy(np.asarray(v).reshape(-1)).to(operator.like)
            return operator(vector).double().cpu().numpy()

        wrapped = ScipyOperator((operator.dim, operator.dim), matvec=matvec, dtype=np.float64)
        result = EigenResult()
        for count, which, values, errors in (
            (top_k, "LA", result.top, result.top_errors),
            (bottom_k, "SA", result.bottom, result.bottom_errors),
        ):
            if count:
                found = eigsh(
                    wrapped, k=count, which=which, tol=tol * 1e-3, return_eigenvectors=False
                )
                values.extend(sorted(found.tolist(), reverse=which == "LA"))
                errors.extend([0.0] * count)
        result.scale = max(abs(v) for v in result.top + result.bottom)
        return result

    yield "scipy_eigsh"
    SOLVERS.pop("scipy_eigsh")


def test_a_registered_solver_works_by_name(scipy_solver):
    from helpers.models import ce_loss, classification_data, mlp
    from helpers.reference import dense_eigenvalues

    from lightning_shortcut.hessian import SOLVERS, hessian_eigenvalues

    assert scipy_solver in SOLVERS
    model = mlp().double()
    x, y = classification_data((4,))
    reference = dense_eigenvalues(model, ce_loss(x, y))
    spectrum = hessian_eigenvalues(model, (x, y), method=scipy_solver, top_k=2, bottom_k=2)
    assert spectrum.method == scipy_solver and spectrum.num_hvps > 0
    assert spectrum.top == pytest.approx(reference.flip(0)[:2].tolist(), abs=1e-6)
    assert spectrum.bottom == pytest.approx(reference[:2].tolist(), abs=1e-6)
    with pytest.raises(ValueError, match=r"min_abs.*lanczos"):
        hessian_eigenvalues(model, (x, y), method=scipy_solver, min_abs=True)


def test_unknown_method_lists_the_registry():
    from helpers.models import classification_data, mlp

    from lightning_shortcut.hessian import SOLVERS, hessian_eigenvalues

    with pytest.raises(ValueError, match="expected one of") as info:
        hessian_eigenvalues(mlp(), classification_data((4,), dtype=torch.float32), method="eigsh")
    assert all(name in str(info.value) for name in SOLVERS)


def test_every_builtin_solver_reports_error_bounds():
    matrix = _matrix(SPECTRA["indefinite"])
    exact = torch.linalg.eigvalsh(matrix)
    for solver in (lanczos, power_iteration):
        result = _solve(solver, matrix, tol=1e-6, max_iter=5000)
        assert abs(result.top[0] - float(exact[-1])) <= result.top_errors[0] + 1e-12
        assert abs(result.bottom[0] - float(exact[0])) <= result.bottom_errors[0] + 1e-12


def test_more_values_than_one_end_leaves_room_for_come_from_the_other_end():
    """At ``top_k + bottom_k`` above the dimension every eigenvalue is found: the ends share them."""
    matrix = _matrix([3.0, 1.0, -2.0])
    result = HessianSettings(top_k=3, bottom_k=2, tol=1e-10).solve(MatrixOperator(matrix))
    assert result.converged
    assert result.top == pytest.approx([3.0, 1.0, -2.0], abs=1e-10)
    assert result.bottom == pytest.approx([-2.0, 1.0], abs=1e-10)
    assert len(result.vectors) == 5
    for value, vector in zip(result.top + result.bottom, result.vectors, strict=True):
        assert torch.allclose(matrix @ vector, value * vector, atol=1e-8)
    with pytest.raises(ValueError, match=r"`top_k=4` asks for more eigenvalues.*dimension is 3"):
        HessianSettings(top_k=4, bottom_k=0).solve(MatrixOperator(matrix))


def test_a_solver_returning_too_few_values_is_a_clear_error(scipy_solver):
    from lightning_shortcut.hessian import SOLVERS

    spec = SOLVERS[scipy_solver]
    solve = spec.solve
    SOLVERS[scipy_solver] = type(spec)(scipy_solver, lambda *a, **k: solve(*a, **k | {"top_k": 1}))
    settings = HessianSettings(method=scipy_solver, top_k=2, bottom_k=1)
    with pytest.raises(RuntimeError, match="returned 1 top and 1 bottom values where top_k=2"):
        settings.solve(MatrixOperator(_matrix([3.0, 1.0, -2.0, 0.5])))


def test_solver_options_are_read_only_once_validated():
    settings = HessianSettings(solver_options={"max_basis": 8})
    with pytest.raises(TypeError):
        settings.solver_options["max_basis"] = 2
    assert settings.solve(MatrixOperator(_matrix([3.0, 1.0, -2.0, 0.5]))).converged
    for copied in (copy.deepcopy(settings), pickle.loads(pickle.dumps(settings))):
        assert copied == settings and dict(copied.solver_options) == {"max_basis": 8}
