"""``edge_of_stability`` against dense Hessians and the optimizers' own state."""

import math

import pytest
import torch
from helpers.models import ce_loss, classification_data, mlp
from helpers.reference import dense_hessian

from lightning_shortcut.hessian.edge_of_stability import edge_of_stability
from lightning_shortcut.hessian.optimizers import UnsupportedOptimizerError


def _case():
    model = mlp().double()
    x, y = classification_data((4,), num_samples=48)
    return model, (x, y), dense_hessian(model, ce_loss(x, y))


def _steps(model, batch, optimizer, count=5):
    for _ in range(count):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
        optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize(
    ("momentum", "nesterov", "constant"),
    [(0.0, False, 2.0), (0.9, False, 3.8), (0.9, True, 3.8 / 2.8)],
)
def test_sgd_is_lr_times_lambda_max_over_the_constant(momentum, nesterov, constant):
    model, batch, _ = _case()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=momentum, nesterov=nesterov)
    _steps(model, batch, optimizer)
    hessian = dense_hessian(model, ce_loss(*batch))
    top = float(torch.linalg.eigvalsh(hessian).max())
    report = edge_of_stability(model, batch, optimizer, tol=1e-8)
    assert report.threshold == pytest.approx(constant)
    assert report.stability == pytest.approx(0.3 * top / constant, rel=1e-6)
    assert report.max_stable_lr == pytest.approx(0.3 / report.stability, rel=1e-9)
    free = edge_of_stability(model, batch, optimizer, hessian_max_eigenvalue=top)
    assert free.num_hvps == 0 and free.stability == pytest.approx(report.stability, rel=1e-6)
    # the measured ratio's bound is the eigenvalue's times lr / c; a given one's error is unknown
    assert report.error == pytest.approx(0.3 * report.spectrum.top_errors[0] / constant)
    assert free.spectrum is None and free.converged and math.isnan(free.error)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_sgd_at_lr_0_reports_the_largest_stable_rate_from_the_hessian(weight_decay):
    # a warm-up from 0 or a schedule ending at 0: the stable rate does not depend on the current one
    model, batch, hessian = _case()
    top = float(torch.linalg.eigvalsh(hessian).max())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=weight_decay)
    report = edge_of_stability(model, batch, optimizer, tol=1e-8)
    assert report.stability == 0.0
    assert report.max_stable_lr == pytest.approx(3.8 / (top + weight_decay), rel=1e-6)


def test_adam_uses_the_preconditioned_hessian_from_its_state():
    model, batch, _ = _case()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-8)
    before = edge_of_stability(model, batch, optimizer)
    assert math.isnan(before.stability) and "first step" in before.reason
    _steps(model, batch, optimizer, count=7)
    pieces = []
    for param in model.parameters():
        state = optimizer.state[param]
        step = float(state["step"])
        v_hat = state["exp_avg_sq"] / (1 - 0.99**step)
        pieces.append((0.01 / ((1 - 0.9**step) * (v_hat.sqrt() + 1e-8))).reshape(-1))
    step_sizes = torch.cat(pieces)
    hessian = dense_hessian(model, ce_loss(*batch))
    root = step_sizes.sqrt()
    preconditioned = root[:, None] * hessian * root[None, :]
    top = float(torch.linalg.eigvalsh((preconditioned + preconditioned.T) / 2).max())
    constant = 2 * 1.9 / 0.1
    report = edge_of_stability(model, batch, optimizer, tol=1e-8)
    assert report.optimizer == "Adam" and report.threshold == pytest.approx(constant)
    assert report.stability == pytest.approx(top / constant, rel=1e-6)
    assert report.num_hvps > 0 and report.converged
    assert report.max_stable_lr == pytest.approx(0.01 / report.stability, rel=1e-9)


def test_unknown_optimizers_and_several_optimizers():
    model, batch, _ = _case()
    with pytest.raises(UnsupportedOptimizerError):
        edge_of_stability(model, batch, torch.optim.LBFGS(model.parameters()))
    first, second = model[0], model[2]
    sgd = torch.optim.SGD(first.parameters(), lr=0.1)
    other = torch.optim.SGD(second.parameters(), lr=0.1)
    chosen = list(first.parameters())
    report = edge_of_stability(model, batch, [other, sgd], params=chosen, tol=1e-8)
    # the Hessian over exactly the first layer's weight and bias, not over the whole model
    only_first = float(torch.linalg.eigvalsh(dense_hessian(model, ce_loss(*batch), chosen)).max())
    whole = float(torch.linalg.eigvalsh(dense_hessian(model, ce_loss(*batch))).max())
    assert abs(whole - only_first) > 0.1 * whole
    assert report.optimizer == "SGD"
    assert report.stability == pytest.approx(0.1 * only_first / 2, rel=1e-6)
    with pytest.raises(ValueError, match="several"):
        edge_of_stability(model, batch, [sgd, other])


def test_transform_is_checked_where_it_enters():
    from lightning_shortcut.hessian import hessian_eigenvalues
    from lightning_shortcut.hessian.linear_operator import MatrixOperator, ScaledOperator

    model, batch = mlp().double(), classification_data((4,))
    with pytest.raises(ValueError, match="LinearOperator of size"):
        hessian_eigenvalues(model, batch, transform=lambda h: MatrixOperator(torch.eye(3)))
    with pytest.raises(ValueError, match="method='pyhessian'"):
        hessian_eigenvalues(model, batch, method="pyhessian", transform=lambda h: h)
    with pytest.raises(ValueError, match="transform='scaled'"):
        hessian_eigenvalues(model, batch, transform="scaled")
    assert all(p.grad is None for p in model.parameters())  # nothing left behind

    def doubled(h):  # sqrt(2) H sqrt(2)
        return ScaledOperator(h, h.like.new_full((h.dim,), 2**0.5), h.like.new_zeros(h.dim))

    plain = hessian_eigenvalues(model, batch, tol=1e-8)
    scaled = hessian_eigenvalues(model, batch, tol=1e-8, transform=doubled)
    assert scaled.max == pytest.approx(2 * plain.max, rel=1e-6)
    assert scaled.min == pytest.approx(2 * plain.min, rel=1e-6)
