"""No side effects, ever: grads, modes, buffers, RNG and graphs are as they were."""

import gc
import weakref

import pytest
import torch
from helpers.models import TinyCNN, classification_data

from lightning_shortcut.hessian import hessian_eigenvalues, hessian_trace, spectral_density

METHODS = ["lanczos", "power", "pyhessian"]


def _snapshot(model):
    return {
        "modes": {name: m.training for name, m in model.named_modules()},
        "buffers": {name: b.clone() for name, b in model.named_buffers()},
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "grad_ids": {
            name: id(p.grad) if p.grad is not None else None for name, p in model.named_parameters()
        },
        "grads": {
            name: p.grad.clone() if p.grad is not None else None
            for name, p in model.named_parameters()
        },
        "rng": torch.get_rng_state(),
    }


def _assert_unchanged(model, before):
    after = _snapshot(model)
    assert after["modes"] == before["modes"]
    for key in ("buffers", "params"):
        for name, value in before[key].items():
            assert torch.equal(after[key][name], value), name
    assert after["grad_ids"] == before["grad_ids"]
    for name, value in before["grads"].items():
        if value is None:
            assert after["grads"][name] is None, name
        else:
            assert torch.equal(after["grads"][name], value), name
    for param in model.parameters():
        assert param.grad is None or (param.grad.grad_fn is None and not param.grad.requires_grad)
    assert torch.equal(after["rng"], before["rng"])


def _prepared_model():
    torch.manual_seed(0)
    model = TinyCNN(dropout=0.5)
    x, y = classification_data((1, 6, 6), num_samples=16, dtype=torch.float32)
    model.train()
    torch.nn.functional.cross_entropy(model(x), y).backward()  # real .grad on every parameter
    model.head.bias.grad = None  # and one None
    model.drop.eval()  # mixed modes must come back exactly
    return model, (x, y)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_no_side_effects(method, mode):
    model, data = _prepared_model()
    before = _snapshot(model)
    spectrum = hessian_eigenvalues(
        model, [data, data], method=method, mode=mode, top_k=2, max_iter=30
    )
    _assert_unchanged(model, before)
    assert all(isinstance(v, float) for v in spectrum.top + spectrum.bottom)


@pytest.mark.parametrize("method", METHODS)
def test_no_side_effects_single_batch(method):
    model, data = _prepared_model()
    before = _snapshot(model)
    hessian_eigenvalues(model, data, method=method, mode="train", max_iter=30)
    _assert_unchanged(model, before)


def test_trace_and_density_have_no_side_effects():
    model, data = _prepared_model()
    before = _snapshot(model)
    hessian_trace(model, data, num_probes=3, mode="train")
    spectral_density(model, data, num_steps=5, mode="train")
    _assert_unchanged(model, before)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_under_no_grad_and_inference_mode(context):
    model, data = _prepared_model()
    expected = hessian_eigenvalues(model, data, tol=1e-6)
    with context():
        x, y = data[0].clone(), data[1].clone()  # inference tensors under inference_mode
        spectrum = hessian_eigenvalues(model, (x, y), tol=1e-6)
        assert not torch.is_grad_enabled()
    assert spectrum.top == pytest.approx(expected.top, rel=1e-5)


def test_pyhessian_does_not_leave_eval_mode_or_graph_grads():
    model, data = _prepared_model()
    model.train()
    hessian_eigenvalues(model, data, method="pyhessian", max_iter=20)
    assert all(m.training for m in model.modules())
    assert all(p.grad is None or p.grad.grad_fn is None for p in model.parameters())


def test_graph_is_released():
    model, data = _prepared_model()
    captured = []

    def loss_fn(m, batch):
        loss = torch.nn.functional.cross_entropy(m(batch[0]), batch[1])
        captured.append(weakref.ref(loss))
        return loss

    hessian_eigenvalues(model, data, loss_fn, max_iter=10)
    gc.collect()
    assert captured and all(ref() is None for ref in captured)


def test_private_generator_makes_results_reproducible_and_seed_dependent():
    model, data = _prepared_model()
    a = hessian_eigenvalues(model, data, seed=1, max_iter=3, tol=1e-12)
    b = hessian_eigenvalues(model, data, seed=1, max_iter=3, tol=1e-12)
    c = hessian_eigenvalues(model, data, seed=2, max_iter=3, tol=1e-12)
    assert a.top == b.top
    assert a.top != c.top
