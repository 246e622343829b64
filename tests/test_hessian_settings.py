"""``HessianSettings``: every option refused once, where it enters, the same way from every entry
point; the settings travel whole, and whether a model is sharded is asked once per call."""

import dataclasses
import re

import pytest
import torch
from helpers.models import ce_loss, classification_data, mlp
from helpers.reference import dense_hessian
from torch import nn

from lightning_shortcut.callbacks import HessianEigenvalueMonitor
from lightning_shortcut.hessian import (
    HessianSettings,
    block_eigenvalues,
    context,
    edge_of_stability,
    gradient_overlap,
    hessian_eigenvalues,
    hessian_trace,
    sharded,
    spectral_density,
)
from lightning_shortcut.hessian.spectrum import compute_spectrum


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"method": "exact"}, ValueError, r"Unknown method 'exact'; expected one of \['lanczos'"),
        ({"top_k": -1}, ValueError, r"`top_k` must be an int >= 0, got -1"),
        ({"top_k": 1.5}, TypeError, r"`top_k` must be an int >= 0, got 1.5 \(float\)"),
        ({"bottom_k": True}, TypeError, r"`bottom_k` must be an int >= 0, got True"),
        ({"top_k": 0, "bottom_k": 0}, ValueError, "Nothing to compute"),
        ({"min_abs": "yes"}, TypeError, r"`min_abs` must be a bool, got 'yes'"),
        ({"min_abs": True, "method": "power"}, ValueError, r"min_abs=True` needs .*'lanczos'"),
        ({"tol": 0}, ValueError, r"`tol` must be a float in \(0, 1\), got 0"),
        ({"tol": "1e-3"}, TypeError, r"`tol` must be a float in \(0, 1\), got '1e-3'"),
        ({"max_iter": 0}, ValueError, r"`max_iter` must be a positive int \(>= 1\), got 0"),
        ({"seed": -1}, ValueError, r"`seed` must be an int >= 0, got -1"),
        ({"mode": "inference"}, ValueError, r"Unknown mode 'inference'; expected .*'train'\]"),
        ({"hvp": "forward"}, ValueError, r"Unknown hvp 'forward'; expected .*'finite_difference'"),
        (
            {"hvp": "finite_difference", "method": "pyhessian"},
            ValueError,
            r"hvp='finite_difference' needs a solver of the operator .*method='pyhessian' runs on",
        ),
        ({"params": "weights"}, ValueError, r"`params` must be 'all', .*got 'weights'"),
        ({"params": 3}, TypeError, r"`params` must be .*an iterable of parameters, got int"),
        ({"all_reduce": 3}, TypeError, r"`all_reduce` must be None or a callable"),
        ({"solver_options": [("max_basis", 4)]}, TypeError, r"`solver_options` must be a map"),
        ({"solver_options": {"max_basis": 2}}, ValueError, r"max_basis.*>= 3, got 2"),
        ({"solver_options": {"basis": 4}}, ValueError, r"takes no option 'basis'"),
        ({"stderr": "always"}, ValueError, r"`stderr` must be True, False or 'cold', got 'alw"),
        ({"stderr": True, "mode": "train"}, ValueError, r"`stderr=True` needs mode='eval'"),
    ],
)
def test_each_bad_value_is_refused_naming_it_and_what_is_accepted(options, error, match):
    with pytest.raises(error, match=match):
        HessianSettings(**options)
    # a variant is checked as well: no combination escapes through replace
    with pytest.raises(error, match=match):
        dataclasses.replace(HessianSettings(), **options)


def test_settings_are_frozen_and_hold_what_they_read_more_than_once():
    model = mlp().double()
    settings = HessianSettings(params=model.parameters(), solver_options={"max_basis": 8})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.tol = 0.5
    assert settings.solver.name == "lanczos"
    assert settings.products_per_run == 300
    assert dataclasses.replace(settings, min_abs=True).products_per_run == 1000
    assert settings.fixed_seed is None and HessianSettings(mode="train", seed=3).fixed_seed == 3
    # a generator of parameters is read once, where it enters: the settings serve many calls
    x, y = classification_data((4,), num_samples=32)
    first = compute_spectrum(model, (x, y), None, settings)
    again = compute_spectrum(model, (x, y), None, settings)
    exact = torch.linalg.eigvalsh(dense_hessian(model, ce_loss(x, y)))
    for spectrum in (first, again):
        assert abs(spectrum.max - float(exact[-1])) <= spectrum.top_errors[0] + 1e-12
        assert abs(spectrum.min - float(exact[0])) <= spectrum.bottom_errors[0] + 1e-12


class CountingMLP(nn.Module):
    """An MLP that counts its forwards."""

    def __init__(self):
        super().__init__()
        self.net = mlp().double()
        self.forwards = 0

    def forward(self, x):
        self.forwards += 1
        return self.net(x)


def test_every_entry_point_refuses_a_bad_value_the_same_way_before_any_forward():
    model = CountingMLP()
    x, y = classification_data((4,), num_samples=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = [
        lambda **bad: hessian_eigenvalues(model, (x, y), **bad),
        lambda **bad: edge_of_stability(model, (x, y), optimizer, **bad),
        lambda **bad: block_eigenvalues(model, (x, y), blocks="modules", **bad),
        lambda **bad: hessian_trace(model, (x, y), **bad),
        lambda **bad: spectral_density(model, (x, y), **bad),
    ]
    for call in calls:
        for bad, match in [({"mode": "test"}, "Unknown mode 'test'"), ({"seed": -2}, "`seed`")]:
            with pytest.raises(ValueError, match=match):
                call(**bad)
    assert model.forwards == 0  # refused where the values enter, before anything is computed
    spectrum = hessian_eigenvalues(model, (x, y))
    model.forwards = 0
    with pytest.raises(ValueError, match=re.escape("Unknown mode 'test'")):
        gradient_overlap(model, (x, y), spectrum=spectrum, mode="test")
    assert model.forwards == 0


def test_whether_a_model_is_sharded_is_asked_once_per_call(monkeypatch):
    asked = []
    real = sharded.fsdp_modules

    def counting(model):
        asked.append(model)
        return real(model)

    monkeypatch.setattr(sharded, "fsdp_modules", counting)
    monkeypatch.setattr(context, "fsdp_modules", counting)
    model = mlp().double()
    x, y = classification_data((4,), num_samples=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(x).sum().backward()
    optimizer.step()  # Adam has state: the preconditioned eigenvalue run
    optimizer.zero_grad()
    report = edge_of_stability(model, (x, y), optimizer)
    assert report.num_hvps > 0 and len(asked) == 1
    asked.clear()
    hessian_eigenvalues(model, (x, y), stderr=True)
    assert len(asked) == 1


def test_the_monitor_refuses_at_construction_and_keeps_one_settings_object():
    with pytest.raises(TypeError, match=r"`stderr` must be a bool or an int n >= 1, got 'yes'"):
        HessianEigenvalueMonitor(stderr="yes")
    with pytest.raises(ValueError, match=r"`seed` must be an int >= 0, got -1"):
        HessianEigenvalueMonitor(seed=-1)
    with pytest.raises(ValueError, match=r"`blocks` needs top_k >= 1 or bottom_k >= 1"):
        HessianEigenvalueMonitor(blocks="residual", top_k=0, bottom_k=0, min_abs=True)
    monitor = HessianEigenvalueMonitor(tol=1e-3, max_iter=50, solver_options={"max_basis": 8})
    assert monitor.settings == HessianSettings(
        tol=1e-3, max_iter=50, solver_options={"max_basis": 8}, stderr="cold", vectors=False
    )
    # standard errors come with eval mode; in train mode the monitor logs none, refusing nothing
    assert HessianEigenvalueMonitor(mode="train").settings.stderr is False
    assert HessianEigenvalueMonitor(stderr=False).settings.stderr is False
