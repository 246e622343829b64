import math

import pytest
import torch
import torch.nn.functional as F
from helpers.models import TinyCNN, TinyTransformer, ce_loss, classification_data, mlp
from helpers.reference import dense_eigenvalues, finite_difference_eigenvalues

from lightning_shortcut import (
    ResidualStack,
    ZeroInit,
    half_mse_loss,
    residual_parameters,
    zero_point_hessian,
)
from lightning_shortcut.hessian import hessian_eigenvalues

METHODS = ["lanczos", "power", "pyhessian"]
K = 2


def _mlp_case():
    torch.manual_seed(0)
    model = mlp().double()
    x, y = classification_data((4,))
    return model, (x, y), None, None, dense_eigenvalues(model, ce_loss(x, y))


def _cnn_case():
    torch.manual_seed(0)
    model = TinyCNN().double()
    x, y = classification_data((1, 6, 6), num_samples=16)
    model.train()
    model(x)  # non-trivial running statistics
    model.eval()
    return model, (x, y), None, None, dense_eigenvalues(model, ce_loss(x, y))


def _transformer_case():
    torch.manual_seed(0)
    model = TinyTransformer().double()
    x, y = classification_data((4, 4), num_samples=12)
    # torch.func.hessian is wrong on LayerNorm in torch 2.14.1 (see helpers); central differences
    return model, (x, y), None, None, finite_difference_eigenvalues(model, ce_loss(x, y))


def _zero_point_case(shortcut_depth):
    def build():
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(30, 3, generator=generator, dtype=torch.float64)
        y = (
            x
            @ torch.tensor(
                [[0.2, -0.9, 0.1], [0.5, 0.3, 0.0], [0.0, 0.4, -0.6]], dtype=torch.float64
            ).T
        )
        model = ZeroInit()(ResidualStack(3, 2, shortcut_depth).double())
        loss_fn = lambda m, batch: half_mse_loss(m(batch[0]), batch[1])  # noqa: E731
        params = residual_parameters(model)
        reference = dense_eigenvalues(model, lambda m: half_mse_loss(m(x), y), params)
        return model, (x, y), loss_fn, params, reference

    return build


CASES = {
    "mlp": _mlp_case,
    "cnn_batchnorm_dropout": _cnn_case,
    "transformer": _transformer_case,
    "zero_point_n1": _zero_point_case(1),
    "zero_point_n2": _zero_point_case(2),
    "zero_point_n3": _zero_point_case(3),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", list(CASES))
def test_top_and_bottom_k_match_dense_hessian(case, method):
    model, data, loss_fn, params, reference = CASES[case]()
    spectrum = hessian_eigenvalues(
        model,
        data,
        loss_fn,
        method=method,
        top_k=K,
        bottom_k=K,
        params=params,
        tol=1e-9,
        max_iter=20000,
    )
    expected_top = reference.flip(0)[:K]
    expected_bottom = reference[:K]
    torch.testing.assert_close(
        torch.tensor(spectrum.top, dtype=torch.float64), expected_top, atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        torch.tensor(spectrum.bottom, dtype=torch.float64), expected_bottom, atol=1e-6, rtol=0
    )
    assert spectrum.max == spectrum.top[0] and spectrum.min == spectrum.bottom[0]
    assert spectrum.num_hvps > 0
    assert spectrum.method == method


@pytest.mark.parametrize("case", list(CASES))
def test_lanczos_min_abs_and_condition_number(case):
    model, data, loss_fn, params, reference = CASES[case]()
    spectrum = hessian_eigenvalues(model, data, loss_fn, min_abs=True, params=params, tol=1e-10)
    largest = float(reference.abs().max())
    smallest = float(reference.abs().min())
    assert spectrum.converged
    assert spectrum.min_abs == pytest.approx(smallest, abs=1e-6)
    if largest == 0:
        assert math.isnan(spectrum.condition_number)
    elif smallest > 1e-6:
        assert spectrum.condition_number == pytest.approx(largest / smallest, rel=1e-5)


@pytest.mark.parametrize("num_units", [1, 3, 6])
def test_zero_point_condition_number_matches_theory(num_units):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(40, 4, generator=generator, dtype=torch.float64)
    y = torch.randn(40, 4, generator=generator, dtype=torch.float64)
    model = ZeroInit()(ResidualStack(4, num_units, 2).double())
    spectrum = hessian_eigenvalues(
        model, (x, y), lambda m, b: half_mse_loss(m(b[0]), b[1]),
        params=residual_parameters(model), min_abs=True, top_k=3, bottom_k=3, tol=1e-10,
    )  # fmt: skip
    theory = zero_point_hessian(x, y, shortcut_depth=2, num_units=num_units)
    assert spectrum.condition_number == pytest.approx(theory.condition_number, rel=1e-6)
    # the spectrum is exactly symmetric and every value repeated: top-3 is the same number thrice
    assert spectrum.top == pytest.approx([theory.max_eigenvalue] * 3, rel=1e-8)
    assert spectrum.bottom == pytest.approx([theory.min_eigenvalue] * 3, rel=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_zero_hessian_returns_zeros(method):
    x = torch.randn(10, 3, dtype=torch.float64)
    model = ZeroInit()(ResidualStack(3, 2, 3).double())
    spectrum = hessian_eigenvalues(
        model, (x, x + 1), lambda m, b: half_mse_loss(m(b[0]), b[1]), method=method,
        params=residual_parameters(model), top_k=2, bottom_k=2, min_abs=method == "lanczos",
    )  # fmt: skip
    assert spectrum.top == [0.0, 0.0] and spectrum.bottom == [0.0, 0.0]
    assert spectrum.converged
    if method == "lanczos":
        assert spectrum.min_abs == 0.0 and math.isnan(spectrum.condition_number)


def test_power_iteration_is_not_fooled_by_a_symmetric_spectrum():
    # At the zero point the Rayleigh quotient of plain power iteration does not move; ours shifts.
    model, data, loss_fn, params, reference = CASES["zero_point_n2"]()
    spectrum = hessian_eigenvalues(
        model, data, loss_fn, method="power", params=params, tol=1e-8, max_iter=5000
    )
    assert spectrum.max == pytest.approx(float(reference[-1]), abs=1e-6)
    assert spectrum.min == pytest.approx(float(reference[0]), abs=1e-6)


def test_unequal_batches_are_weighted_by_size():
    model, (x, y), _, _, reference = _mlp_case()
    batches = [(x[:3], y[:3]), (x[3:10], y[3:10]), (x[10:], y[10:])]
    spectrum = hessian_eigenvalues(model, batches, top_k=2, bottom_k=2, tol=1e-10)
    assert spectrum.top == pytest.approx(reference.flip(0)[:2].tolist(), abs=1e-8)
    assert spectrum.bottom == pytest.approx(reference[:2].tolist(), abs=1e-8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    from_loader = hessian_eigenvalues(model, loader, top_k=2, bottom_k=2, tol=1e-10)
    assert from_loader.top == pytest.approx(spectrum.top, abs=1e-8)


def test_train_mode_uses_batch_statistics():
    torch.manual_seed(0)
    model = TinyCNN(dropout=0.0).double()
    x, y = classification_data((1, 6, 6), num_samples=16)
    model.train()  # torch.func cannot run BatchNorm's in-place buffer updates: central differences
    reference = finite_difference_eigenvalues(model, ce_loss(x, y))
    spectrum = hessian_eigenvalues(model, (x, y), mode="train", tol=1e-10)
    assert spectrum.max == pytest.approx(float(reference[-1]), abs=1e-6)
    assert spectrum.min == pytest.approx(float(reference[0]), abs=1e-6)


def test_train_mode_with_dropout_is_deterministic():
    torch.manual_seed(0)
    model = TinyCNN(dropout=0.5).double()
    data = classification_data((1, 6, 6), num_samples=16)
    first = hessian_eigenvalues(model, [data, data], mode="train", tol=1e-8, seed=3)
    second = hessian_eigenvalues(model, [data, data], mode="train", tol=1e-8, seed=3)
    assert first.top == second.top and first.converged


def test_float32_model():
    torch.manual_seed(0)
    model = mlp()
    x, y = classification_data((4,), dtype=torch.float32)
    reference = dense_eigenvalues(model.double(), ce_loss(x.double(), y))
    spectrum = hessian_eigenvalues(model.float(), (x, y), tol=1e-4)
    assert spectrum.max == pytest.approx(float(reference[-1]), rel=1e-3)


def test_nan_loss_gives_nan_not_an_error():
    model, (x, y), _, _, _ = _mlp_case()
    x = x.clone()
    x[0, 0] = float("nan")
    for method in METHODS:
        spectrum = hessian_eigenvalues(model, (x, y), method=method, min_abs=method == "lanczos")
        assert math.isnan(spectrum.max) and math.isnan(spectrum.min)
        assert not spectrum.converged


def test_custom_loss_and_dict_batches():
    model, (x, y), _, _, reference = _mlp_case()
    batch = {"image": x, "label": y}
    spectrum = hessian_eigenvalues(
        model, batch, lambda m, b: F.cross_entropy(m(b["image"]), b["label"]), tol=1e-10
    )
    assert spectrum.max == pytest.approx(float(reference[-1]), abs=1e-8)


def test_as_dict_names():
    model, data, *_ = _mlp_case()
    values = hessian_eigenvalues(model, data, top_k=2, min_abs=True).as_dict()
    assert {
        "max_eigenvalue",
        "min_eigenvalue",
        "min_abs_eigenvalue",
        "condition_number",
        "top_2",
        "num_hvps",
        "seconds",
    } <= set(values)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "arnoldi"}, "arnoldi"),
        ({"top_k": -1}, "top_k.*-1"),
        ({"bottom_k": -2}, "bottom_k.*-2"),
        ({"top_k": 0, "bottom_k": 0}, "Nothing to compute"),
        ({"tol": 0.0}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"min_abs": True, "method": "power"}, "min_abs.*lanczos"),
        ({"mode": "predict"}, "predict"),
    ],
)
def test_bad_arguments(kwargs, match):
    model, data, *_ = _mlp_case()
    with pytest.raises(ValueError, match=match):
        hessian_eigenvalues(model, data, **kwargs)


def test_bad_data_and_params():
    model, (x, y), *_ = _mlp_case()
    with pytest.raises(ValueError, match="no batch"):
        hessian_eigenvalues(model, [])
    with pytest.raises(ValueError, match="loss_fn"):
        hessian_eigenvalues(model, {"image": x, "label": y})
    with pytest.raises(ValueError, match="bare tensor"):
        hessian_eigenvalues(model, x)
    with pytest.raises(ValueError, match="not a parameter"):
        hessian_eigenvalues(model, (x, y), params=[torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="scalar"):
        hessian_eigenvalues(
            model, (x, y), lambda m, b: F.cross_entropy(m(b[0]), b[1], reduction="none")
        )
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter that requires grad"):
        hessian_eigenvalues(frozen, (x.float(), y))
