"""hvp="finite_difference": central differences of gradients against exact products."""

import pytest
import torch
import torch.nn.functional as F
from helpers.models import TinyCNN, ce_loss, classification_data
from helpers.reference import dense_eigenvalues
from torch import nn

from lightning_shortcut.hessian import HessianSettings, hessian_eigenvalues
from lightning_shortcut.hessian.context import hessian_operator

torch.manual_seed(0)


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    )


CASES = {"mlp": (_mlp, (4,)), "cnn": (TinyCNN, (1, 6, 6))}


def _case(name, dtype):
    make, shape = CASES[name]
    torch.manual_seed(0)
    model = make().to(dtype)
    x, y = classification_data(shape, num_samples=64, dtype=dtype)
    return model, (x, y)


def _products(model, batch, hvp, vectors):
    with hessian_operator(model, batch, None, HessianSettings(hvp=hvp)) as operator:
        products = [operator(v.to(operator.like)).double() for v in vectors]
    return products, operator


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize(("dtype", "bound"), [(torch.float32, 1e-3), (torch.float64, 1e-6)])
def test_products_match_exact_products(name, dtype, bound):
    model, batch = _case(name, dtype)
    dim = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(1)
    vectors = [torch.randn(dim, generator=generator, dtype=torch.float64) for _ in range(3)]
    vectors = [v / v.norm() for v in vectors] + [3.0 * vectors[0] / vectors[0].norm()]
    weights = [p.detach().clone() for p in model.parameters()]
    exact, _ = _products(model, batch, "autograd", vectors)
    approximate, operator = _products(model, batch, "finite_difference", vectors)
    errors = [float((a - e).norm() / e.norm()) for a, e in zip(approximate, exact, strict=True)]
    assert max(errors) <= bound
    # the weights are the kept values, bit for bit
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))
    # the reported estimate is of the size of the true error, not a tolerance's echo
    assert errors[0] / 10 <= operator.hvp_error <= 10 * max(errors)


def test_weights_are_restored_when_a_gradient_fails():
    model, (x, y) = _case("mlp", torch.float32)
    weights = [p.detach().clone() for p in model.parameters()]
    calls = []

    def loss_fn(module, batch):
        calls.append(1)
        if len(calls) == 2:  # the gradient at w - e v
            raise RuntimeError("out of memory")
        return F.cross_entropy(module(batch[0]), batch[1])

    with pytest.raises(RuntimeError, match="out of memory"):
        hessian_eigenvalues(model, (x, y), loss_fn, hvp="finite_difference")
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))


def test_eigenvalues_match_the_dense_hessian_within_the_reported_errors():
    model, (x, y) = _case("mlp", torch.float64)
    exact = dense_eigenvalues(model, ce_loss(x, y))
    spectrum = hessian_eigenvalues(model, (x, y), top_k=2, tol=1e-6, hvp="finite_difference")
    assert spectrum.hvp == "finite_difference" and 0 < spectrum.hvp_error < 1e-6
    assert spectrum.converged
    truths = [exact[-1], exact[-2]]
    for value, error, truth in zip(spectrum.top, spectrum.top_errors, truths, strict=True):
        assert abs(value - float(truth)) <= error + 1e-12
    assert abs(spectrum.min - float(exact[0])) <= spectrum.bottom_errors[0] + 1e-12
    assert spectrum.as_dict()["hvp_error"] == spectrum.hvp_error
    assert "hvp_error" not in hessian_eigenvalues(model, (x, y)).as_dict()


def test_float32_products_too_coarse_for_tol_are_not_converged():
    model, batch = _case("mlp", torch.float32)
    spectrum = hessian_eigenvalues(model, batch, tol=1e-6, hvp="finite_difference")
    assert spectrum.hvp_error > 1e-6
    assert not spectrum.converged and "finite-difference" in spectrum.reason
    exact = hessian_eigenvalues(model, batch, tol=1e-6)
    assert spectrum.top_errors[0] >= spectrum.hvp_error * abs(exact.max)


def test_bad_hvp_arguments():
    model, batch = _case("mlp", torch.float32)
    with pytest.raises(ValueError, match="hvp"):
        hessian_eigenvalues(model, batch, hvp="forward")
    with pytest.raises(ValueError, match="pyhessian"):
        hessian_eigenvalues(model, batch, method="pyhessian", hvp="finite_difference")


def test_the_monitor_with_finite_differences_logs_the_exact_values_and_keeps_training(tmp_path):
    from helpers.lightning_models import fit

    from lightning_shortcut.callbacks import HessianEigenvalueMonitor

    settings = dict(every_n_steps=2, num_samples=48, tol=1e-4, edge_of_stability=False)
    difference = HessianEigenvalueMonitor(hvp="finite_difference", log_prefix="fd/", **settings)
    exact = HessianEigenvalueMonitor(**settings)
    _, monitored = fit(tmp_path, [difference, exact], max_steps=4)
    _, plain = fit(tmp_path, [], max_steps=4)
    for key, value in plain.state_dict().items():
        assert torch.equal(monitored.state_dict()[key], value)  # training bit for bit the same
    assert [r["step"] for r in difference.history] == [0, 2, 4]
    for approximate, truth in zip(difference.history, exact.history, strict=True):
        scale = abs(truth["max_eigenvalue"])
        assert 0 < approximate["hvp_error"] < 1e-3
        assert abs(approximate["max_eigenvalue"] - truth["max_eigenvalue"]) <= 1e-3 * scale
        assert abs(approximate["min_eigenvalue"] - truth["min_eigenvalue"]) <= 1e-3 * scale
        assert "hvp_error" not in truth
    with pytest.raises(ValueError, match="hvp"):
        HessianEigenvalueMonitor(hvp="forward")
    with pytest.raises(ValueError, match="pyhessian"):
        HessianEigenvalueMonitor(method="pyhessian", hvp="finite_difference")
