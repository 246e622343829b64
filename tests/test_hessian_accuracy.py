"""``tol`` bounds the error of every returned eigenvalue; condition numbers are never ``1 / tol``."""

import importlib
import math

import pytest
import torch
from helpers.models import TinyCNN, ce_loss, classification_data, mlp
from helpers.reference import dense_eigenvalues

from lightning_shortcut import ResidualStack, ZeroInit, half_mse_loss, residual_parameters
from lightning_shortcut.hessian import hessian_eigenvalues
from lightning_shortcut.hessian.solvers._stopping import MIN_PRODUCTS, SEPARATED_MIN_PRODUCTS
from lightning_shortcut.hessian.solvers.lanczos import LanczosProcess


class Quadratic(torch.nn.Module):
    """``0.5 w^T A w`` for a symmetric ``A``: a model whose Hessian is ``A`` exactly."""

    def __init__(self, matrix):
        super().__init__()
        self.matrix = matrix
        generator = torch.Generator().manual_seed(5)
        self.weight = torch.nn.Parameter(torch.randn(matrix.shape[0], generator=generator).double())

    def forward(self, _):
        return 0.5 * self.weight @ self.matrix @ self.weight


def _quadratic_loss(model, batch):
    return model(batch)


def _matrix(eigenvalues, seed=0):
    generator = torch.Generator().manual_seed(seed)
    size = len(eigenvalues)
    basis, _ = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return basis @ torch.diag(torch.as_tensor(eigenvalues, dtype=torch.float64)) @ basis.T


def _mlp():
    model = mlp().double()
    x, y = classification_data((4,), num_samples=64)
    return model, (x, y), None, None, dense_eigenvalues(model, ce_loss(x, y))


def _cnn():
    model = TinyCNN().double()
    x, y = classification_data((1, 6, 6), num_samples=16)
    model.train()
    model(x)
    model.eval()
    return model, (x, y), None, None, dense_eigenvalues(model, ce_loss(x, y))


def _zero_point(shortcut_depth, num_units=3):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, 4, generator=generator, dtype=torch.float64)
    y = torch.randn(40, 4, generator=generator, dtype=torch.float64)
    model = ZeroInit()(ResidualStack(4, num_units, shortcut_depth).double())
    params = residual_parameters(model)
    reference = dense_eigenvalues(model, lambda m: half_mse_loss(m(x), y), params)
    loss_fn = lambda m, b: half_mse_loss(m(b[0]), b[1])  # noqa: E731
    return model, (x, y), loss_fn, params, reference


def _quadratic():
    eigenvalues = torch.cat(
        [torch.linspace(-2.0, 3.0, 150), torch.tensor([3.3, 3.15, -2.3, -2.15])]
    )
    model = Quadratic(_matrix(eigenvalues.tolist()))
    return model, (torch.zeros(1, 1),), _quadratic_loss, None, torch.sort(eigenvalues.double())[0]


CASES = {
    "mlp": _mlp,
    "cnn_batchnorm": _cnn,
    "zero_point_n1": lambda: _zero_point(1),
    "zero_point_n2": lambda: _zero_point(2),
    "clustered_quadratic_restarts": _quadratic,
}


@pytest.mark.parametrize("tol", [1e-2, 1e-3, 1e-4])
@pytest.mark.parametrize("case", list(CASES))
def test_returned_values_are_within_tol_of_dense_eigenvalues(case, tol):
    model, data, loss_fn, params, reference = CASES[case]()
    spectrum = hessian_eigenvalues(
        model, data, loss_fn, params=params, top_k=2, bottom_k=2, tol=tol,
        solver_options={"max_basis": 8},
    )  # fmt: skip
    scale = float(reference.abs().max())
    assert spectrum.converged, spectrum.reason
    exact_top, exact_bottom = reference.flip(0)[:2].tolist(), reference[:2].tolist()
    for values, errors, exact in (
        (spectrum.top, spectrum.top_errors, exact_top),
        (spectrum.bottom, spectrum.bottom_errors, exact_bottom),
    ):
        for value, error, truth in zip(values, errors, exact, strict=True):
            assert abs(value - truth) <= tol * scale
            assert error <= tol * scale * (1 + 1e-9)


@pytest.mark.parametrize("case", ["mlp", "zero_point_n2", "clustered_quadratic_restarts"])
def test_error_bounds_hold(case):
    """The reported bound is at least the true error of the first (unlocked) run's values."""
    model, data, loss_fn, params, reference = CASES[case]()
    for tol in (1e-2, 1e-3):
        spectrum = hessian_eigenvalues(model, data, loss_fn, params=params, tol=tol)
        assert abs(spectrum.max - float(reference[-1])) <= spectrum.top_errors[0] + 1e-12
        assert abs(spectrum.min - float(reference[0])) <= spectrum.bottom_errors[0] + 1e-12


@pytest.mark.parametrize("tol", [1e-2, 1e-3, 1e-4])
def test_condition_number_of_a_singular_hessian_is_inf_not_one_over_tol(tol):
    """The bug this guards against: min_abs ~ tol * max|lambda|, condition number ~ 1 / tol."""
    model, data, _, _, reference = _cnn()
    assert float(reference.abs().min()) < 1e-10  # cross-entropy: the Hessian is singular
    spectrum = hessian_eigenvalues(model, data, min_abs=True, tol=tol)
    assert spectrum.converged
    assert spectrum.min_abs_resolved is False
    assert spectrum.condition_number == math.inf
    assert spectrum.min_abs <= tol * float(reference.abs().max())
    assert spectrum.as_dict()["min_abs_resolved"] == 0.0


@pytest.mark.parametrize("tol", [1e-6, 1e-8])
def test_condition_number_is_right_where_resolvable(tol):
    magnitudes = torch.logspace(-3, 0, 60, dtype=torch.float64)
    signs = torch.where(torch.arange(60) % 3 == 0, -1.0, 1.0).double()
    model = Quadratic(_matrix((signs * magnitudes).tolist(), seed=3))
    spectrum = hessian_eigenvalues(
        model, (torch.zeros(1, 1),), _quadratic_loss, min_abs=True, tol=tol
    )
    assert spectrum.converged and spectrum.min_abs_resolved
    assert spectrum.condition_number == pytest.approx(1000.0, rel=1e-2)
    assert spectrum.min_abs == pytest.approx(1e-3, rel=1e-2)


@pytest.mark.parametrize("num_units", [1, 4])
def test_zero_point_condition_number_resolves_at_the_monitors_tol(num_units):
    """The paper's n = 2 Hessian is well conditioned: resolved even at tol = 1e-2."""
    from lightning_shortcut import zero_point_hessian

    model, (x, y), loss_fn, params, _ = _zero_point(2, num_units)
    spectrum = hessian_eigenvalues(model, (x, y), loss_fn, params=params, min_abs=True, tol=1e-2)
    theory = zero_point_hessian(x, y, shortcut_depth=2, num_units=num_units)
    assert spectrum.min_abs_resolved
    assert spectrum.condition_number == pytest.approx(theory.condition_number, rel=2e-2)


def test_restarted_process_keeps_the_lanczos_relation():
    """``A V = V T + r e_m^T`` and ``V V^T = I`` after thick restarts, with a fixed-size basis."""
    matrix = _matrix(torch.linspace(-1, 4, 80).tolist())
    from lightning_shortcut.hessian import MatrixOperator

    operator = MatrixOperator(matrix)
    start = torch.randn(80, dtype=torch.float64)
    buffer = torch.empty(10, 80, dtype=torch.float64)
    process = LanczosProcess(operator, start / start.norm(), buffer, torch.zeros(0, 80).double())
    for _ in range(3):
        while process.size < process.capacity:
            process.step()
        values, vectors, _ = process.ritz()
        keep = torch.cat([torch.arange(3), torch.arange(7, 10)])
        process.restart(vectors[:, keep], values[keep])
    for _ in range(2):
        process.step()
    basis = process.basis
    assert process.buffer.shape == (10, 80)
    torch.testing.assert_close(
        basis @ basis.T, torch.eye(basis.shape[0]).double(), atol=1e-10, rtol=0
    )
    last = torch.zeros(basis.shape[0], dtype=torch.float64)
    last[-1] = 1.0
    relation = matrix @ basis.T - basis.T @ process.projected - torch.outer(process.residual, last)
    assert float(relation.abs().max()) < 1e-10


def test_basis_never_exceeds_max_basis(monkeypatch):
    sizes = []

    class Recording(LanczosProcess):
        def step(self):
            super().step()
            sizes.append(self.buffer.shape[0])

    module = importlib.import_module("lightning_shortcut.hessian.solvers.lanczos")
    monkeypatch.setattr(module, "LanczosProcess", Recording)
    model, data, loss_fn, _, reference = _quadratic()
    spectrum = hessian_eigenvalues(
        model, data, loss_fn, tol=1e-6, solver_options={"max_basis": 6}, max_iter=2000, vectors=True
    )
    assert spectrum.num_hvps > 6 and max(sizes) == 6
    assert spectrum.max == pytest.approx(float(reference[-1]), abs=1e-5)


def test_warm_start_saves_products():
    model, data, _, _, _ = _mlp()
    cold = hessian_eigenvalues(model, data, tol=1e-6, vectors=True)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1e-3 * torch.randn_like(param))
    again_cold = hessian_eigenvalues(model, data, tol=1e-6, vectors=True)
    warm = hessian_eigenvalues(model, data, tol=1e-6, start=cold)
    assert warm.max == pytest.approx(again_cold.max, abs=1e-5)
    assert warm.min == pytest.approx(again_cold.min, abs=1e-5)
    assert warm.num_hvps < again_cold.num_hvps
    with pytest.raises(ValueError, match="start"):
        hessian_eigenvalues(model, data, start=[torch.zeros(3)])
    with pytest.raises(ValueError, match="bare vectors"):  # no values for the warm rule
        hessian_eigenvalues(model, data, start=cold.vectors)


@pytest.mark.parametrize("seed", range(5))
def test_far_end_is_not_mistaken_for_the_bulk_at_a_loose_tol(seed):
    """A trained network's spectrum: one large outlier, a dense bulk near zero and a negative
    outlier 13 times smaller than the top. At tol = 1e-2 a Ritz value in the bulk has a residual
    below ``tol * max|lambda|`` after a few products, long before the Krylov space reaches -12
    (seen on a BatchNorm CNN: -0.055 returned for -12.4). The returned bottom must be the
    spectrum's."""
    bulk = torch.linspace(-0.5, 0.5, 400, dtype=torch.float64).tolist()
    model = Quadratic(_matrix([160.0, 40.0, *bulk, -12.0], seed=seed))
    spectrum = hessian_eigenvalues(
        model, (torch.zeros(1, 1),), _quadratic_loss, tol=1e-2, seed=seed
    )
    assert spectrum.max == pytest.approx(160.0, abs=1.6)
    assert spectrum.min == pytest.approx(-12.0, abs=1.6)


def _cold(eigenvalues, bottom_k, tol, seed):
    model = Quadratic(_matrix(eigenvalues, seed=seed))
    return hessian_eigenvalues(
        model, (torch.zeros(1, 1),), _quadratic_loss, bottom_k=bottom_k, tol=tol, seed=seed
    )


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("tol", [1e-2, 1e-3])
def test_a_separated_top_alone_is_certified_before_the_full_floor(seed, tol):
    """The top alone, standing far above the rest: the separated floor (10 products, as
    hessian-eigenthings certifies lambda_max) instead of the full one, and the value within tol."""
    bulk = torch.linspace(-1.0, 1.0, 300).tolist()
    spectrum = _cold([30.0, 12.0, *bulk, -6.0], 0, tol, seed)
    assert SEPARATED_MIN_PRODUCTS <= spectrum.num_hvps < MIN_PRODUCTS
    assert spectrum.max == pytest.approx(30.0, abs=tol * 30.0)


@pytest.mark.parametrize("seed", range(3))
def test_a_top_cluster_and_both_ends_keep_the_full_floor(seed):
    """A top cluster closer than SEPARATION tolerances shows as Ritz values close together: its
    hidden member may lie above the returned one, so the run pays the full floor; so does a run for
    both ends (a far end at a bulk's edge looks separated while the bulk is unresolved)."""
    bulk = torch.linspace(-0.3, 0.3, 300).tolist()
    cluster = _cold([10.0, 9.98, 9.96, 9.95, 9.93, *bulk], 0, 1e-3, seed)
    assert cluster.num_hvps >= MIN_PRODUCTS
    assert cluster.max == pytest.approx(10.0, abs=1e-3 * 10.0)
    both = _cold([30.0, 12.0, *torch.linspace(-1.0, 1.0, 300).tolist(), -6.0], 1, 1e-2, seed)
    assert both.num_hvps >= MIN_PRODUCTS
