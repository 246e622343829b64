"""What the engine accepts: parameter specs, losses it can and cannot read, compiled models."""

import pytest
import torch
import torch.nn.functional as F
from helpers.models import ce_loss, classification_data, mlp
from helpers.reference import dense_eigenvalues
from torch import nn

from lightning_shortcut import ResidualStack, ZeroInit, half_mse_loss, residual_parameters
from lightning_shortcut.hessian import hessian_eigenvalues


class StackModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 3)
        self.stack = ResidualStack(3, 2, 2)
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        return self.head(self.stack(self.inp(x)))


def _stack_case():
    model = StackModel().double()
    ZeroInit(scale=0.1)(model)
    return model, classification_data((4,))


@pytest.mark.parametrize(
    "spec",
    ["residual", "all", None, lambda m: m.head.parameters(), "list"],
    ids=["residual", "all", "None", "callable", "list"],
)
def test_params_specs_match_dense_hessians(spec):
    model, (x, y) = _stack_case()
    expected_params = {
        "residual": residual_parameters(model),
        "all": list(model.parameters()),
        None: list(model.parameters()),
        "list": list(model.head.parameters()),
    }.get(spec if isinstance(spec, str | None) else "list")
    if spec == "list":
        spec = list(model.head.parameters())
    reference = dense_eigenvalues(model, ce_loss(x, y), expected_params)
    spectrum = hessian_eigenvalues(model, (x, y), params=spec, tol=1e-9)
    assert spectrum.max == pytest.approx(float(reference[-1]), abs=1e-7)
    assert spectrum.min == pytest.approx(float(reference[0]), abs=1e-7)


def test_bad_params_specs():
    model, (x, y) = _stack_case()
    with pytest.raises(ValueError, match="'residual', a callable"):
        hessian_eigenvalues(model, (x, y), params="branches")
    with pytest.raises(ValueError, match="contains no ResidualStack"):
        hessian_eigenvalues(mlp().double(), (x, y), params="residual")
    with pytest.raises(TypeError, match="iterable of parameters"):
        hessian_eigenvalues(model, (x, y), params=3)


class TupleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp().double()

    def forward(self, x):
        return self.net(x), x.sum()


def test_default_loss_explains_a_tuple_output():
    x, y = classification_data((4,))
    with pytest.raises(ValueError, match=r"returned a tuple.*loss_fn"):
        hessian_eigenvalues(TupleModel(), (x, y))
    spectrum = hessian_eigenvalues(
        TupleModel(), (x, y), lambda m, b: F.cross_entropy(m(b[0])[0], b[1])
    )
    assert spectrum.converged


def test_default_loss_refuses_regression_targets():
    model = nn.Linear(4, 3).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"not class probabilities.*loss_fn"):
        hessian_eigenvalues(model, (x, torch.randn(16, 3, dtype=torch.float64)))
    with pytest.raises(ValueError, match="loss_fn"):
        hessian_eigenvalues(model, (x, torch.randn(16, dtype=torch.float64)))


def test_default_loss_reads_probabilities_as_soft_labels_with_a_warning():
    model = mlp().double()
    x, _ = classification_data((4,))
    soft = torch.softmax(torch.randn(32, 3, dtype=torch.float64), dim=1)
    reference = dense_eigenvalues(model, lambda m: F.cross_entropy(m(x), soft))
    with pytest.warns(UserWarning, match="soft labels"):
        spectrum = hessian_eigenvalues(model, (x, soft), tol=1e-9)
    assert spectrum.max == pytest.approx(float(reference[-1]), abs=1e-7)


def _regression_case():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(24, 4, generator=generator)
    y = torch.randn(24, 4, generator=generator)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), ResidualStack(4, 2, 2), nn.Linear(4, 4))
    ZeroInit(scale=0.2)(model)
    return model, (x, y), lambda m, b: half_mse_loss(m(b[0]), b[1])


@pytest.mark.parametrize("where", ["model", "submodule", "module.compile"])
def test_compiled_models_give_the_eager_spectrum(where):
    """aot_autograd has no double backward; the engine runs compiled code eagerly."""
    model, batch, loss_fn = _regression_case()
    eager = hessian_eigenvalues(model, batch, loss_fn, tol=1e-6)
    if where == "model":
        compiled = torch.compile(model, backend="aot_eager")
    elif where == "submodule":
        compiled = model
        compiled[2] = torch.compile(model[2], backend="aot_eager")
    else:
        compiled = model
        compiled.compile(backend="aot_eager")
    compiled(batch[0]).sum().backward()  # the compiled graph is in use, with first-order autograd
    grads = [p.grad.clone() for p in compiled.parameters()]
    spectrum = hessian_eigenvalues(compiled, batch, loss_fn, tol=1e-6)
    assert spectrum.converged
    assert spectrum.max == eager.max and spectrum.min == eager.min
    assert all(torch.equal(p.grad, g) for p, g in zip(compiled.parameters(), grads, strict=True))
    # the stance is restored: compiled code runs compiled again (no recompile, same outputs)
    assert torch.compiler.is_compiling() is False
    torch.testing.assert_close(compiled(batch[0]), model(batch[0]))
    torch._dynamo.reset()


def test_low_precision_parameters_use_float32_solver_vectors():
    model, batch, loss_fn = _regression_case()
    reference = hessian_eigenvalues(model, batch, loss_fn, tol=1e-6, vectors=True)
    low = hessian_eigenvalues(
        model.to(torch.bfloat16),
        tuple(t.to(torch.bfloat16) for t in batch),
        loss_fn,
        tol=1e-2,
        vectors=True,
    )
    assert low.vectors[0].dtype == torch.float32
    assert low.max == pytest.approx(reference.max, rel=5e-2)


@pytest.mark.parametrize("batches", [1, 3])
def test_a_view_is_the_diagonal_block_of_the_dense_hessian(batches):
    from helpers.reference import dense_hessian

    from lightning_shortcut.hessian import HessianSettings
    from lightning_shortcut.hessian.context import hessian_operator

    model, (x, y) = _stack_case()
    data = [(x[i::batches], y[i::batches]) for i in range(batches)] if batches > 1 else (x, y)
    params = list(model.parameters())
    block = [next(iter(model.stack.units[1].parameters())), model.head.bias]  # apart in params
    dense = dense_hessian(model, ce_loss(x, y), block).detach()
    vector = torch.randn(dense.shape[0], generator=torch.Generator().manual_seed(0)).double()
    forwards = []

    def counted(model, batch):
        forwards.append(1)
        return F.cross_entropy(model(batch[0]), batch[1])

    with hessian_operator(model, data, counted, HessianSettings(), keep_graphs=True) as operator:
        view = operator.view(block)
        assert view.dim == dense.shape[0] and operator.dim == sum(p.numel() for p in params)
        for _ in range(2):
            assert torch.allclose(view(vector), dense @ vector, atol=1e-10)
    assert len(forwards) == batches  # each batch's graph built once and kept
    settings = HessianSettings(hvp="finite_difference")
    with (
        hessian_operator(model, (x, y), None, settings) as operator,
        pytest.raises(ValueError, match="A view takes its products by double backward"),
    ):
        operator.view(block)
