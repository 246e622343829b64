import math

import pytest
import torch
from helpers.models import ce_loss, classification_data, mlp
from helpers.reference import dense_hessian

from lightning_shortcut.hessian import hessian_trace, spectral_density


def _case():
    torch.manual_seed(0)
    model = mlp().double()
    x, y = classification_data((4,))
    return model, (x, y), dense_hessian(model, ce_loss(x, y))


def test_hutchinson_trace_is_unbiased_within_its_standard_error():
    model, data, hessian = _case()
    estimate = hessian_trace(model, data, num_probes=400)
    assert estimate.num_probes == 400 and estimate.num_hvps == 400
    assert abs(estimate.trace - float(hessian.trace())) < 4 * estimate.standard_error
    assert estimate.standard_error < 0.1 * abs(estimate.trace)


def test_trace_early_stop():
    model, data, _ = _case()
    estimate = hessian_trace(model, data, num_probes=1000, rtol=0.05)
    assert 2 <= estimate.num_probes < 1000
    assert estimate.standard_error <= 0.05 * abs(estimate.trace)


def test_rademacher_probes_are_exact_on_a_diagonal_hessian():
    # loss = 0.5 * sum_i a_i w_i^2 has H = diag(a): v^T H v = tr(H) for every +-1 probe
    weights = torch.nn.Linear(5, 1, bias=False).double()
    scales = torch.arange(1.0, 6.0, dtype=torch.float64)
    estimate = hessian_trace(
        weights,
        (torch.zeros(1, 5),),
        lambda m, b: 0.5 * (scales * m.weight[0] ** 2).sum(),
        num_probes=5,
    )
    assert estimate.trace == pytest.approx(15.0)
    assert estimate.standard_error == pytest.approx(0.0, abs=1e-12)


def test_slq_with_full_steps_recovers_the_spectrum():
    model, data, hessian = _case()
    eigenvalues = torch.linalg.eigvalsh(hessian)
    density = spectral_density(model, data, num_probes=2, num_steps=hessian.shape[0])
    assert torch.allclose(density.weights.sum(dim=1), torch.ones(2, dtype=torch.float64))
    # every node with weight is an eigenvalue; the extremes are found
    used = density.nodes[density.weights > 1e-12]
    distance = (used[:, None] - eigenvalues[None]).abs().min(dim=1).values
    assert float(distance.max()) < 1e-6
    assert float(density.nodes.max()) == pytest.approx(float(eigenvalues[-1]), abs=1e-8)


def test_slq_first_moment_is_the_trace_over_the_dimension():
    # Per probe v the quadrature's first moment sum_j w_j theta_j is v^T H v exactly (Gauss
    # quadrature with k >= 1 nodes integrates degree-1 polynomials exactly), and for v uniform on the
    # unit sphere in R^d: E[v^T H v] = tr(H) / d, Var[v^T H v] = 2 (d tr(H^2) - tr(H)^2) / (d^2 (d+2)).
    model, data, hessian = _case()
    dim = hessian.shape[0]
    trace, trace_of_square = float(hessian.trace()), float((hessian @ hessian).trace())
    variance = 2 * (dim * trace_of_square - trace**2) / (dim**2 * (dim + 2))
    num_probes = 300
    density = spectral_density(model, data, num_probes=num_probes, num_steps=4, seed=3)
    moments = (density.nodes * density.weights).sum(dim=1)
    assert abs(float(moments.mean()) - trace / dim) < 4 * math.sqrt(variance / num_probes)
    # the probes are independent draws: their spread is the sphere's, not zero and not larger
    assert float(moments.std()) == pytest.approx(math.sqrt(variance), rel=0.25)


def test_smoothed_density_integrates_to_one():
    model, data, _ = _case()
    density = spectral_density(model, data, num_probes=3, num_steps=20)
    grid = torch.linspace(-3, 3, 6001)
    curve = density.density(grid, sigma=0.05)
    integral = float(torch.trapezoid(curve, grid))
    assert integral == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="sigma"):
        density.density(grid, sigma=0.0)


def test_reported_wall_times_are_seconds():
    """A loss that sleeps 20 ms whenever it is evaluated (at least once a call): each call reports
    at least that, and no more than the wall time around it (milliseconds or minutes would miss by
    a factor of 60-1000)."""
    import time

    model, data, _ = _case()

    def slow_loss(module, batch):
        time.sleep(0.02)
        return torch.nn.functional.cross_entropy(module(batch[0]), batch[1])

    for call in (
        lambda: spectral_density(model, data, slow_loss, num_probes=2, num_steps=5),
        lambda: hessian_trace(model, data, slow_loss, num_probes=3),
    ):
        before = time.perf_counter()
        result = call()
        elapsed = time.perf_counter() - before
        assert type(result.seconds) is float
        assert 0.02 <= result.seconds <= elapsed
