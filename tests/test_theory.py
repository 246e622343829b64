import itertools
import math

import pytest
import torch
from helpers.reference import dense_eigenvalues, dense_hessian

from lightning_shortcut import (
    ResidualStack,
    ZeroInit,
    half_mse_loss,
    residual_parameters,
    zero_point_hessian,
)
from lightning_shortcut.theory import activation_slope_at_zero

WIDTH = 3


def _teacher_data(num_samples=24, width=WIDTH, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, width, generator=generator, dtype=torch.float64)
    teacher = torch.randn(width, width, generator=generator, dtype=torch.float64) * 0.5
    return x, x @ teacher.T


def _measured(x, y, shortcut_depth, num_units, activation=None):
    stack = ResidualStack(x.shape[1], num_units, shortcut_depth, activation=activation).double()
    ZeroInit()(stack)
    return dense_eigenvalues(stack, lambda m: half_mse_loss(m(x), y), residual_parameters(stack))


@pytest.mark.parametrize("shortcut_depth", [1, 2, 3])
@pytest.mark.parametrize("num_units", [1, 2, 4])
@pytest.mark.parametrize("activation", [None, "tanh"])
def test_dense_hessian_matches_closed_form(shortcut_depth, num_units, activation):
    x, y = _teacher_data()
    measured = _measured(x, y, shortcut_depth, num_units, activation)
    predicted = zero_point_hessian(
        x, y, shortcut_depth=shortcut_depth, num_units=num_units, activation=activation
    )
    assert predicted.eigenvalues.shape == measured.shape
    torch.testing.assert_close(predicted.eigenvalues, measured, atol=1e-10, rtol=1e-10)


def test_depth_two_spectrum_is_plus_minus_singular_values_of_c():
    x, y = _teacher_data()
    predicted = zero_point_hessian(x, y, shortcut_depth=2, num_units=3)
    c = x.T @ (x - y) / x.shape[0]
    sigma = torch.linalg.svdvals(c)
    expected = torch.sort(torch.cat([sigma, -sigma]).repeat_interleave(3 * WIDTH)).values
    torch.testing.assert_close(predicted.eigenvalues, expected)
    assert predicted.condition_number == pytest.approx(float(sigma[0] / sigma[-1]))


def test_depth_two_condition_number_does_not_depend_on_depth():
    x, y = _teacher_data()
    measured = []
    for num_units in (1, 3, 6):
        eigenvalues = _measured(x, y, 2, num_units)
        measured.append(float(eigenvalues.abs().max() / eigenvalues.abs().min()))
    assert max(measured) == pytest.approx(min(measured), rel=1e-9)
    assert math.isfinite(measured[0])


def test_depth_one_condition_number_grows_with_depth():
    x, y = _teacher_data()
    kappas = [
        zero_point_hessian(x, y, shortcut_depth=1, num_units=k).condition_number
        for k in (1, 2, 4, 8, 16)
    ]
    assert all(b > a for a, b in itertools.pairwise(kappas)), kappas
    assert kappas[-1] > 10 * kappas[0]


def test_depth_three_and_more_vanish():
    x, y = _teacher_data()
    for shortcut_depth in (3, 4):
        measured = _measured(x, y, shortcut_depth, 2)
        assert torch.count_nonzero(measured) == 0
        predicted = zero_point_hessian(x, y, shortcut_depth=shortcut_depth, num_units=2)
        assert math.isnan(predicted.condition_number)


def test_relu_hessian_vanishes_at_the_exact_zero_point():
    x, y = _teacher_data()
    assert activation_slope_at_zero("relu") == 0.0
    measured = _measured(x, y, 2, 2, "relu")
    predicted = zero_point_hessian(x, y, shortcut_depth=2, num_units=2, activation="relu")
    assert torch.count_nonzero(measured) == 0
    assert torch.count_nonzero(predicted.eigenvalues) == 0


def test_activation_with_nonzero_value_at_zero_is_rejected():
    x, y = _teacher_data()
    with pytest.raises(ValueError, match="sigmoid"):
        zero_point_hessian(x, y, shortcut_depth=2, num_units=1, activation="sigmoid")


@pytest.mark.parametrize(
    ("inputs", "targets", "kwargs", "match"),
    [
        (torch.randn(4, 3), torch.randn(4, 2), {}, r"\(4, 3\) and \(4, 2\)"),
        (torch.randn(4), torch.randn(4), {}, r"\(4,\)"),
        (torch.randn(4, 3), torch.randn(4, 3), {"num_units": 0}, "num_units"),
        (torch.randn(4, 3), torch.randn(4, 3), {"shortcut_depth": 1.5}, "shortcut_depth"),
    ],
)
def test_bad_inputs(inputs, targets, kwargs, match):
    arguments = {"shortcut_depth": 2, "num_units": 1} | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        zero_point_hessian(inputs, targets, **arguments)


@pytest.mark.parametrize("num_units", [1, 3, 5])
def test_depth_one_matvec_matches_the_dense_hessian(num_units):
    from lightning_shortcut.theory import depth_one_matvec

    x, y = _teacher_data()
    stack = ZeroInit()(ResidualStack(x.shape[1], num_units, 1).double())
    params = residual_parameters(stack)
    matrix = dense_hessian(stack, lambda m: half_mse_loss(m(x), y), params)
    vector = torch.randn(matrix.shape[0], dtype=torch.float64)
    torch.testing.assert_close(depth_one_matvec(x, y, num_units)(vector), matrix @ vector)
