import pytest
import torch
from torch import nn

from lightning_shortcut import (
    OrthogonalInit,
    ResidualStack,
    XavierInit,
    ZeroInit,
    residual_parameters,
    residual_weight_layers,
)

STRATEGIES = [
    ZeroInit(),
    ZeroInit(scale=0.1),
    XavierInit(),
    XavierInit(distribution="normal"),
    OrthogonalInit(),
]


def _model():
    return nn.Sequential(
        nn.Linear(3, 6), ResidualStack(6, 3, 2, bias=True, activation="relu"), nn.Linear(6, 2)
    )


@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
def test_touches_only_residual_branches_and_returns_module(strategy):
    model = _model()
    others = {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if not name.startswith("1.")
    }
    for layer in residual_weight_layers(model):
        nn.init.constant_(layer.bias, 0.5)
    assert strategy(model) is model
    for name, param in model.named_parameters():
        if name in others:
            assert torch.equal(param, others[name]), name
    for layer in residual_weight_layers(model):
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_zero_init_is_exact_zero():
    model = ZeroInit()(_model())
    assert all(bool((p == 0).all()) for p in residual_parameters(model))


def test_small_init_has_the_requested_scale():
    stack = ResidualStack(64, 8, 2)
    ZeroInit(scale=0.01)(stack)
    weights = torch.cat([layer.weight.flatten() for layer in residual_weight_layers(stack)])
    assert weights.std().item() == pytest.approx(0.01, rel=0.02)
    assert weights.mean().abs().item() < 1e-3


def test_orthogonal_init_is_orthogonal_with_gain():
    stack = ResidualStack(16, 3, 2)
    OrthogonalInit(gain=2.0)(stack)
    for layer in residual_weight_layers(stack):
        gram = layer.weight @ layer.weight.T
        torch.testing.assert_close(gram, 4.0 * torch.eye(16), atol=1e-5, rtol=0)


def test_orthogonal_conv_kernels_are_orthogonal_when_flattened():
    stack = ResidualStack(4, 1, 2, layer="conv")
    OrthogonalInit()(stack)
    for layer in residual_weight_layers(stack):
        flat = layer.weight.reshape(4, -1)
        torch.testing.assert_close(flat @ flat.T, torch.eye(4), atol=1e-5, rtol=0)


def test_xavier_variance():
    stack = ResidualStack(200, 2, 2)
    XavierInit(distribution="normal")(stack)
    weights = torch.cat([layer.weight.flatten() for layer in residual_weight_layers(stack)])
    assert weights.var().item() == pytest.approx(2.0 / 400, rel=0.05)


@pytest.mark.parametrize(
    "strategy_cls",
    [
        lambda g: ZeroInit(0.1, generator=g),
        lambda g: XavierInit(generator=g),
        lambda g: OrthogonalInit(generator=g),
    ],
)
def test_deterministic_under_seed_and_generator(strategy_cls):
    torch.manual_seed(3)
    first = strategy_cls(None)(ResidualStack(5, 2, 2))
    torch.manual_seed(3)
    second = strategy_cls(None)(ResidualStack(5, 2, 2))
    third = strategy_cls(torch.Generator().manual_seed(7))(ResidualStack(5, 2, 2))
    fourth = strategy_cls(torch.Generator().manual_seed(7))(ResidualStack(5, 2, 2))
    for a, b, c, d in zip(
        first.parameters(),
        second.parameters(),
        third.parameters(),
        fourth.parameters(),
        strict=True,
    ):
        assert torch.equal(a, b)
        assert torch.equal(c, d)
        assert not torch.equal(a, c)


def test_generator_leaves_global_rng_alone():
    stack = ResidualStack(5, 2, 2)
    state = torch.get_rng_state()
    ZeroInit(0.1, generator=torch.Generator().manual_seed(0))(stack)
    assert torch.equal(state, torch.get_rng_state())


def test_same_weights_on_every_dtype():
    torch.manual_seed(1)
    a = ZeroInit(0.1)(ResidualStack(5, 2, 2))
    torch.manual_seed(1)
    b = ZeroInit(0.1)(ResidualStack(5, 2, 2).double())
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.double(), q)


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (lambda: ZeroInit(scale=-1.0), ValueError, "scale.*-1.0"),
        (lambda: ZeroInit(scale=float("nan")), ValueError, "scale.*nan"),
        (lambda: ZeroInit(scale="small"), TypeError, "scale.*'small'"),
        (lambda: OrthogonalInit(gain=-2.0), ValueError, "gain.*-2.0"),
        (lambda: XavierInit(distribution="cauchy"), ValueError, "cauchy"),
    ],
)
def test_bad_arguments(factory, error, match):
    with pytest.raises(error, match=match):
        factory()


def test_model_without_stacks_is_an_error():
    with pytest.raises(ValueError, match="no ResidualUnit.*Linear"):
        ZeroInit()(nn.Linear(3, 3))
