"""The step preconditioner against the real torch.optim classes on quadratics.

Each threshold is checked the way it is defined: on ``f(x) = x^T A x / 2`` the real optimizer, at a
learning rate where the module's ratio is 0.95, converges, and at 1.05 diverges.

Adaptive optimizers adapt ``D`` as the gradients change, which the linearization holds fixed. So the
tests freeze it legitimately: the state is prefilled with a second moment ``v0``, a zero first
moment and ``step = 1e18``, with ``beta2`` (RMSprop's ``alpha``) equal to ``1 - 1e-15``. Then both
bias corrections are 1 to double precision (``beta^1e18 = 0``) and each step moves ``v`` by
``1e-15 * (g^2 - v)``, nothing over a run that stops once the norm has grown 1e4-fold; the tests
assert that ``v`` did not move.
"""

import math

import pytest
import torch
from torch import nn

from lightning_shortcut.hessian import MatrixOperator
from lightning_shortcut.hessian.optimizers import (
    UnsupportedOptimizerError,
    select_optimizer,
    step_preconditioner,
)

DIM = 8
SPLITS = {"one": [(0, DIM)], "two": [(0, 3), (3, DIM)]}
FROZEN = 1 - 1e-15
F64 = torch.float64


def _spd(eigenvalues, seed=0):
    generator = torch.Generator().manual_seed(seed)
    size = len(eigenvalues)
    basis, _ = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=F64))
    return basis @ torch.diag(torch.as_tensor(eigenvalues, dtype=F64)) @ basis.T


CURVATURE = _spd(torch.linspace(0.5, 5.0, DIM))
START = torch.randn(DIM, generator=torch.Generator().manual_seed(1), dtype=F64)
SECOND_MOMENT = 0.25 + 3.75 * torch.rand(DIM, generator=torch.Generator().manual_seed(2), dtype=F64)


def _groups(params, scale, *settings):
    """One param group per param, with ``lr`` scaled by ``scale``."""
    return [
        {"params": [param], **dict(options, lr=options["lr"] * scale)}
        for param, options in zip(params, settings, strict=True)
    ]


# name -> (splits, optimizer factory (params, lr scale) -> optimizer)
CASES = {
    "sgd": ("one", lambda ps, s: torch.optim.SGD(ps, lr=0.1 * s)),
    "sgd_momentum": ("one", lambda ps, s: torch.optim.SGD(ps, lr=0.1 * s, momentum=0.9)),
    "sgd_momentum_dampening": (
        "one",
        lambda ps, s: torch.optim.SGD(ps, lr=0.1 * s, momentum=0.9, dampening=0.5),
    ),
    "sgd_nesterov": (
        "one",
        lambda ps, s: torch.optim.SGD(ps, lr=0.1 * s, momentum=0.9, nesterov=True),
    ),
    "sgd_coupled_decay": ("one", lambda ps, s: torch.optim.SGD(ps, lr=0.1 * s, weight_decay=1.0)),
    "sgd_unequal_lrs": (
        "two",
        lambda ps, s: torch.optim.SGD(
            _groups(ps, s, {"lr": 0.1}, {"lr": 0.02, "weight_decay": 0.5})
        ),
    ),
    "sgd_unequal_momenta": (
        "two",
        lambda ps, s: torch.optim.SGD(_groups(ps, s, {"lr": 0.1, "momentum": 0.9}, {"lr": 0.3})),
    ),
    "adam": ("one", lambda ps, s: torch.optim.Adam(ps, lr=s, betas=(0.9, FROZEN), foreach=False)),
    "adam_coupled_decay": (
        "one",
        lambda ps, s: torch.optim.Adam(
            ps, lr=s, betas=(0.5, FROZEN), weight_decay=1.0, foreach=False
        ),
    ),
    "adam_amsgrad": (
        "one",
        lambda ps, s: torch.optim.Adam(ps, lr=s, betas=(0.9, FROZEN), amsgrad=True, foreach=False),
    ),
    "adamw": (
        "one",
        lambda ps, s: torch.optim.AdamW(
            ps, lr=s, betas=(0.9, FROZEN), weight_decay=0.04, foreach=False
        ),
    ),
    "adamw_no_decay_group": (
        "two",
        lambda ps, s: torch.optim.AdamW(
            _groups(ps, s, {"lr": 1.0, "weight_decay": 0.0}, {"lr": 2.0, "weight_decay": 0.3}),
            betas=(0.5, FROZEN),
            foreach=False,
        ),
    ),
    "rmsprop_momentum_centered": (
        "one",
        lambda ps, s: torch.optim.RMSprop(
            ps, lr=0.1 * s, alpha=FROZEN, momentum=0.5, centered=True, foreach=False
        ),
    ),
}


def _make(name, scale):
    splits, factory = CASES[name]
    params = [nn.Parameter(START[a:b].clone()) for a, b in SPLITS[splits]]
    optimizer = factory(params, scale)
    for param, (a, b) in zip(params, SPLITS[splits], strict=True):
        second = SECOND_MOMENT[a:b].clone()
        if isinstance(optimizer, torch.optim.Adam):
            optimizer.state[param].update(
                step=torch.tensor(1e18), exp_avg=torch.zeros_like(param), exp_avg_sq=second,
                max_exp_avg_sq=1.5 * second,
            )  # fmt: skip
        elif isinstance(optimizer, torch.optim.RMSprop):
            optimizer.state[param].update(
                step=torch.tensor(1e18), square_avg=second, grad_avg=0.6 * second.sqrt(),
                momentum_buffer=torch.zeros_like(param),
            )  # fmt: skip
    return params, optimizer


def _dense(preconditioner, dim=DIM, curvature=CURVATURE):
    product = preconditioner.operator(MatrixOperator(curvature))
    return torch.stack([product(basis) for basis in torch.eye(dim, dtype=F64)], dim=1)


def _stability(name, scale):
    params, optimizer = _make(name, scale)
    preconditioner = step_preconditioner(optimizer, params)
    dense = _dense(preconditioner)
    top = float(torch.linalg.eigvalsh((dense + dense.T) / 2).max())
    return preconditioner, top


def _scale_for(name, target):
    """The lr scale at which the module's ratio is ``target``: one step when the ratio is linear
    in the scale, a fast fixed point under AdamW's lr-dependent constant."""
    scale = 1.0
    for _ in range(100):
        preconditioner, top = _stability(name, scale)
        ratio = preconditioner.stability(top) / target
        if abs(ratio - 1) < 1e-13:
            return scale
        scale /= ratio
    raise AssertionError(f"no lr scale gives a ratio of {target} for {name}")


def _growth(name, scale, steps=2000):
    """``|x_end| / |x_0|`` under the real optimizer; stops at 1e4 growth or 1e-8 decay."""
    params, optimizer = _make(name, scale)
    moments = [dict(optimizer.state[p]) for p in params]
    for _ in range(steps):
        point = torch.cat([p.detach() for p in params])
        gradient = CURVATURE @ point
        for param, piece in zip(params, gradient.split([p.numel() for p in params]), strict=True):
            param.grad = piece.clone()
        optimizer.step()
        ratio = float(torch.cat([p.detach() for p in params]).norm() / START.norm())
        if not 1e-8 < ratio < 1e4:
            break
    for param, before in zip(params, moments, strict=True):
        for key in ("exp_avg_sq", "max_exp_avg_sq", "square_avg"):
            if key in before:  # the frozen second moment really stayed put
                assert torch.allclose(optimizer.state[param][key], before[key], rtol=1e-6)
    return ratio


@pytest.mark.parametrize("name", list(CASES))
def test_threshold_separates_convergence_from_divergence(name):
    assert _growth(name, _scale_for(name, 0.95)) < 1e-2
    assert _growth(name, _scale_for(name, 1.05)) > 1e3


@pytest.mark.parametrize(
    "name", ["sgd", "sgd_momentum", "sgd_unequal_lrs", "adam", "adamw", "adamw_no_decay_group"]
)
def test_max_stable_lr(name):
    preconditioner, top = _stability(name, 0.5)
    max_lr = preconditioner.max_stable_lr(top)
    scale = max_lr / preconditioner.lr * 0.5  # the lr scale that gives max_lr
    assert _growth(name, 0.97 * scale) < 1e-2
    exact = _scale_for(name, 1.0)
    if name == "adamw_no_decay_group":  # unequal decays: a conservative bound
        assert 0.9 * exact < scale <= exact * (1 + 1e-9)
    else:
        assert scale == pytest.approx(exact, rel=1e-9)
        assert _growth(name, 1.03 * scale) > 1e3
    assert preconditioner.max_stable_lr(-1.0) == math.inf


def test_uniform_sgd_needs_no_extra_eigenvalue_run():
    preconditioner, top = _stability("sgd_coupled_decay", 1.0)
    assert preconditioner.uniform_step == pytest.approx(0.1)
    assert not preconditioner.needs_preconditioned_run
    hessian_top = float(torch.linalg.eigvalsh(CURVATURE).max())
    assert preconditioner.stability_from_hessian(hessian_top) == pytest.approx(
        preconditioner.stability(top), rel=1e-12
    )
    unequal, _ = _stability("sgd_unequal_lrs", 1.0)
    assert unequal.uniform_step is None and unequal.needs_preconditioned_run
    with pytest.raises(ValueError, match=r"operator\(hessian\)"):
        unequal.stability_from_hessian(hessian_top)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("kind", [torch.optim.Adam, torch.optim.AdamW])
def test_adam_step_sizes_match_its_state(kind, amsgrad):
    generator = torch.Generator().manual_seed(3)
    inputs, targets = (
        torch.randn(32, 4, generator=generator),
        torch.randn(32, 3, generator=generator),
    )
    model = nn.Linear(4, 3)
    unused = nn.Parameter(torch.zeros(2))  # never gets a gradient, so never stepped
    betas = (0.8, 0.99)
    optimizer = kind(
        [{"params": [model.weight], "lr": 0.3}, {"params": [model.bias, unused], "eps": 1e-3}],
        lr=0.05, betas=betas, amsgrad=amsgrad,
    )  # fmt: skip
    params = [model.bias, model.weight, unused]
    assert step_preconditioner(optimizer, params) is None  # no state yet: D undefined
    for _ in range(6):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
    preconditioner = step_preconditioner(optimizer, params)
    for param, step_size in zip(params[:2], preconditioner.step_sizes, strict=False):
        group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
        state = optimizer.state[param]
        steps = float(state["step"])
        second = state["max_exp_avg_sq"] if amsgrad else state["exp_avg_sq"]
        if amsgrad:
            assert (state["max_exp_avg_sq"] > state["exp_avg_sq"]).any()
        expected = group["lr"] / (
            (1 - betas[0] ** steps) * ((second / (1 - betas[1] ** steps)).sqrt() + group["eps"])
        )
        torch.testing.assert_close(step_size, expected, rtol=1e-6, atol=0)
    assert torch.equal(preconditioner.step_sizes[2], torch.zeros(2))
    assert preconditioner.lr == 0.3


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_preconditioned_operator_matches_dense(kind):
    weight, bias, held_only = (
        nn.Parameter(torch.randn(*shape, dtype=F64)) for shape in [(2, 3), (4,), (5,)]
    )
    groups = [
        {"params": [weight, held_only], "lr": 0.3, "weight_decay": 0.2},
        {"params": [bias], "lr": 0.05, "weight_decay": 0.7},
    ]  # fmt: skip
    if kind == "sgd":
        optimizer = torch.optim.SGD(groups, momentum=0.5)
    else:
        optimizer = torch.optim.Adam(groups, betas=(0.6, 0.9))
        for param in (weight, bias, held_only):
            param.grad = torch.randn_like(param)
        optimizer.step()
    params = [bias, weight]  # a subset of the optimizer's parameters, in its own order
    preconditioner = step_preconditioner(optimizer, params)
    curvature = _spd(torch.linspace(-1.0, 3.0, 10), seed=4)
    steps, decays = [], []
    for param, lr, decay in [(bias, 0.05, 0.7), (weight, 0.3, 0.2)]:
        step = torch.full((param.numel(),), lr, dtype=F64)
        if kind == "adam":  # first step: both bias corrections are 1 - beta
            second = optimizer.state[param]["exp_avg_sq"].reshape(-1)
            step = step / (0.4 * ((second / 0.1).sqrt() + 1e-8))
        steps.append(step)
        decays.append(torch.full((param.numel(),), decay, dtype=F64))
    root = torch.cat(steps).sqrt()
    expected = root[:, None] * (curvature + torch.diag(torch.cat(decays))) * root[None, :]
    torch.testing.assert_close(_dense(preconditioner, 10, curvature), expected)


class _Custom(torch.optim.Optimizer):
    def __init__(self, params):
        super().__init__(params, {"lr": 0.1})

    def step(self, closure=None):
        return None


class _SGDSubclass(torch.optim.SGD):
    pass


@pytest.mark.parametrize(
    "factory",
    [
        lambda ps: torch.optim.LBFGS(ps),
        lambda ps: _Custom(ps),
        lambda ps: _SGDSubclass(ps, lr=0.1),
        lambda ps: torch.optim.SGD(ps, lr=0.1, maximize=True),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.5, dampening=1.0),
        lambda ps: torch.optim.AdamW(ps, lr=10.0, weight_decay=0.5),
    ],
)
def test_unsupported_optimizers(factory):
    params = [nn.Parameter(torch.zeros(3))]
    with pytest.raises(UnsupportedOptimizerError):
        step_preconditioner(factory(params), params)


def test_params_and_optimizers_are_checked():
    first, second, stray = (nn.Parameter(torch.zeros(n)) for n in (2, 3, 4))
    sgd, adam = torch.optim.SGD([first], lr=0.1), torch.optim.Adam([second])
    with pytest.raises(ValueError, match=r"params\[1\]` \(shape \(4,\)\) is not held by SGD"):
        step_preconditioner(sgd, [first, stray])
    with pytest.raises(ValueError, match="empty"):
        step_preconditioner(sgd, [])
    assert select_optimizer([sgd, adam], [second]) is adam
    with pytest.raises(ValueError, match=r"several optimizers \(0 \(SGD\), 1 \(Adam\)\)"):
        select_optimizer([sgd, adam], [first, second])
    with pytest.raises(ValueError, match=r"params\[0\]` \(shape \(4,\)\) is held by none"):
        select_optimizer([sgd, adam], [stray])
    with pytest.raises(ValueError, match="empty"):
        select_optimizer([], [first])
