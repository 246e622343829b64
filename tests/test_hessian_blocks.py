"""Per-block eigenvalues, eigenvector profiles and the gradient overlap, against dense references."""

import math

import pytest
import torch
from helpers.models import TinyCNN, ce_loss, classification_data, mlp
from helpers.reference import dense_hessian
from torch import nn

from lightning_shortcut import ResidualStack, ZeroInit, half_mse_loss, zero_point_hessian
from lightning_shortcut.hessian import (
    block_eigenvalues,
    block_profile,
    gradient_overlap,
    hessian_eigenvalues,
    resolve_blocks,
)
from lightning_shortcut.hessian.blocks import REST


def _residual_classifier():
    """A linear stem, two tanh residual units of shortcut depth 2 and a head, away from zero."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(4, 5), ResidualStack(5, 2, 2, activation="tanh"), nn.Linear(5, 3)
    ).double()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(2.0)
    return model, classification_data((4,), num_samples=48)


def _mlp():
    model = mlp().double()
    return model, classification_data((4,), num_samples=48)


def _cnn():
    model = TinyCNN().double()
    x, y = classification_data((1, 6, 6), num_samples=16)
    model.train()
    model(x)  # BatchNorm running statistics that are not the initial ones
    model.eval()
    return model, (x, y)


# name -> (model and data, blocks)
CASES = {
    "residual_units": (_residual_classifier, "residual"),
    "mlp_modules": (_mlp, "modules"),
    "cnn_batchnorm_modules": (_cnn, "modules"),
}


def _dense_block_eigenvalues(model, data, params):
    x, y = data
    matrix = dense_hessian(model, ce_loss(x, y), params).detach()
    return torch.linalg.eigvalsh((matrix + matrix.T) / 2)


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
@pytest.mark.parametrize("case", list(CASES))
def test_block_values_are_within_tol_of_dense_blocks(case, tol):
    build, blocks = CASES[case]
    model, data = build()
    spectra = block_eigenvalues(model, data, blocks=blocks, top_k=2, bottom_k=2, tol=tol)
    resolved = resolve_blocks(model, blocks)
    assert spectra.names == list(resolved) and len(resolved) >= 2
    assert spectra.all_converged, spectra.reasons
    for name, params in resolved.items():
        reference = _dense_block_eigenvalues(model, data, params)
        assert spectra.sizes[name] == reference.numel()
        scale = float(reference.abs().max())
        for values, errors, exact in (
            (spectra[name].top, spectra[name].top_errors, reference.flip(0)[:2].tolist()),
            (spectra[name].bottom, spectra[name].bottom_errors, reference[:2].tolist()),
        ):
            for value, error, truth in zip(values, errors, exact, strict=True):
                assert abs(value - truth) <= tol * scale, (name, value, truth)
                assert error <= tol * scale * (1 + 1e-9)
        assert spectra.max[name] == spectra[name].top[0]
        assert spectra.min[name] == spectra[name].bottom[0]


def test_each_block_gets_the_run_of_a_whole_model_measurement_of_it():
    model, data = _residual_classifier()
    spectra = block_eigenvalues(model, data, blocks="modules", tol=1e-6, seed=3)
    total = 0
    for name, params in resolve_blocks(model, "modules").items():
        alone = hessian_eigenvalues(model, data, params=params, tol=1e-6, seed=3, vectors=True)
        assert spectra.max[name] == pytest.approx(alone.max, rel=1e-12)
        assert spectra.min[name] == pytest.approx(alone.min, rel=1e-12)
        assert spectra[name].top_errors == pytest.approx(alone.top_errors, rel=1e-6, abs=1e-14)
        assert spectra[name].num_hvps == alone.num_hvps
        total += alone.num_hvps
    assert spectra.num_hvps == total


def test_zero_point_units_give_plus_minus_singular_values_of_c_and_no_coupling():
    width, num_units = 3, 2
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, width, generator=generator, dtype=torch.float64)
    y = torch.randn(40, width, generator=generator, dtype=torch.float64)
    model = ZeroInit()(ResidualStack(width, num_units, shortcut_depth=2).double())
    loss_fn = lambda m, b: half_mse_loss(m(b[0]), b[1])  # noqa: E731
    count = width * width  # each sigma_i(C) is repeated d times in a unit's 2 d^2 eigenvalues
    spectra = block_eigenvalues(
        model, (x, y), loss_fn, blocks="residual", top_k=count, bottom_k=count, tol=1e-10
    )
    sigma = zero_point_hessian(x, y, shortcut_depth=2, num_units=num_units).singular_values
    expected = sigma.repeat_interleave(width).double()  # descending
    blocks = resolve_blocks(model, "residual")
    assert list(blocks) == [f"units.{k}" for k in range(num_units)]
    for name in blocks:
        assert spectra[name].converged, spectra.reasons[name]
        top, bottom = torch.tensor(spectra[name].top), torch.tensor(spectra[name].bottom)
        assert torch.allclose(top.double(), expected, atol=1e-6, rtol=0)
        assert torch.allclose(bottom.double(), -expected, atol=1e-6, rtol=0)
    # densely: the Hessian over all the units is block-diagonal by unit, each block +-sigma_i(C)
    params = [param for block in blocks.values() for param in block]
    matrix = dense_hessian(model, lambda m: half_mse_loss(m(x), y), params)
    size = 2 * width * width
    for row in range(num_units):
        for column in range(num_units):
            block = matrix[row * size : (row + 1) * size, column * size : (column + 1) * size]
            if row != column:
                assert float(block.abs().max()) == 0.0
            else:
                values = torch.linalg.eigvalsh(block)
                assert torch.allclose(values, torch.cat([-expected, expected.flip(0)]), atol=1e-12)


def _dense_eigenvectors(model, data):
    x, y = data
    matrix = dense_hessian(model, ce_loss(x, y))
    return torch.linalg.eigh((matrix + matrix.T) / 2)


def test_profiles_sum_to_one_and_match_a_dense_eigendecomposition():
    model, data = _mlp()
    spectrum = hessian_eigenvalues(model, data, tol=1e-10, vectors=True)
    profile = block_profile(model, spectrum, "modules")
    values, vectors = _dense_eigenvectors(model, data)
    assert spectrum.max == pytest.approx(float(values[-1]), rel=1e-8)
    sizes = {"0": 4 * 6 + 6, "2": 6 * 3 + 3}  # parameters in model order: weight then bias
    for shares, vector in ((profile.top, vectors[:, -1]), (profile.bottom, vectors[:, 0])):
        assert list(shares) == ["0", "2"]
        assert math.fsum(shares.values()) == pytest.approx(1.0, abs=1e-12)
        first = float(vector[: sizes["0"]].square().sum())
        assert shares["0"] == pytest.approx(first, abs=1e-6)
        assert shares["2"] == pytest.approx(1 - first, abs=1e-6)
    assert set(profile.as_dict()) == {
        "block/0/max_eigenvector_share", "block/0/min_eigenvector_share",
        "block/2/max_eigenvector_share", "block/2/min_eigenvector_share",
    }  # fmt: skip


def test_profile_of_blocks_that_leave_parameters_out_has_the_rest():
    model, data = _residual_classifier()
    spectrum = hessian_eigenvalues(model, data, tol=1e-6, vectors=True)
    profile = block_profile(model, spectrum, "residual")
    assert list(profile.top) == ["1.units.0", "1.units.1", REST]
    assert math.fsum(profile.top.values()) == pytest.approx(1.0, abs=1e-12)
    assert math.fsum(profile.bottom.values()) == pytest.approx(1.0, abs=1e-12)
    # over the residual parameters alone the units cover everything
    residual = hessian_eigenvalues(model, data, params="residual", tol=1e-6, vectors=True)
    alone = block_profile(model, residual, "residual", params="residual")
    assert REST not in alone.top and math.fsum(alone.top.values()) == pytest.approx(1.0)


def test_profile_of_a_failed_measurement_is_none():
    model, data = _mlp()
    x, y = data
    x = x.clone()
    x[0, 0] = math.nan
    spectrum = hessian_eigenvalues(model, (x, y), vectors=True)
    assert math.isnan(spectrum.max)
    profile = block_profile(model, spectrum, "modules")
    assert profile.top is None and profile.bottom is None and profile.as_dict() == {}


def test_gradient_overlap_matches_a_dense_eigendecomposition():
    model, data = _mlp()
    x, y = data
    spectrum = hessian_eigenvalues(model, data, top_k=3, bottom_k=0, tol=1e-10)
    result = gradient_overlap(model, data, spectrum=spectrum)
    _, vectors = _dense_eigenvectors(model, data)
    gradient = torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(ce_loss(x, y)(model), model.parameters())]
    )
    top = vectors[:, -3:].flip(1)
    components = (top.T @ gradient).square() / gradient.square().sum()
    assert result.overlap == pytest.approx(float(components.sum()), abs=1e-8)
    assert result.components == pytest.approx(components.tolist(), abs=1e-8)
    assert result.gradient_norm == pytest.approx(float(gradient.norm()), rel=1e-10)
    assert 0.0 < result.overlap < 1.0
    # the gradient computed for the call left no .grad behind
    assert all(param.grad is None for param in model.parameters())


def test_gradient_overlap_of_the_whole_space_is_one_and_of_no_vector_nan():
    model, data = _mlp()
    dim = sum(param.numel() for param in model.parameters())
    spectrum = hessian_eigenvalues(model, data, top_k=dim, bottom_k=0, tol=1e-8)
    assert gradient_overlap(model, data, spectrum=spectrum).overlap == pytest.approx(1.0)
    nothing = hessian_eigenvalues(model, data, top_k=0, bottom_k=1)
    assert math.isnan(gradient_overlap(model, data, spectrum=nothing).overlap)


def test_params_of_another_size_are_refused_by_profile_and_overlap():
    model, data = _residual_classifier()
    spectrum = hessian_eigenvalues(model, data, params="residual", vectors=True)
    with pytest.raises(ValueError, match="params the spectrum was measured with"):
        block_profile(model, spectrum, "residual")
    with pytest.raises(ValueError, match="params the spectrum was measured with"):
        gradient_overlap(model, data, spectrum=spectrum)


@pytest.mark.parametrize(
    ("blocks", "error", "message"),
    [
        ({"a": ["0"], "b": ["0.weight"]}, ValueError, "Blocks 'a' and 'b' overlap.*'0.weight'"),
        ({"a": ["0"], "b": []}, ValueError, "Block 'b' is empty"),
        ("residual", ValueError, "contains no ResidualStack"),
        ({"a": "encoder"}, ValueError, "Block 'a': 'encoder' matches no parameter"),
        ({"a": [nn.Parameter(torch.zeros(2))]}, ValueError, "Block 'a': member 0 .* not a param"),
        ({"a": [3]}, TypeError, "Block 'a': member 0 must be"),
        ({"": ["0"]}, ValueError, "non-empty string"),
        ("layers", ValueError, "'residual', 'modules', a mapping or a callable"),
        (lambda model: [model[0]], TypeError, "the callable returned"),
    ],
)
def test_bad_blocks_are_refused_naming_them(blocks, error, message):
    model, data = _mlp()
    with pytest.raises(error, match=message):
        block_eigenvalues(model, data, blocks=blocks)
    with pytest.raises(error, match=message):
        resolve_blocks(model, blocks)


def test_a_block_of_frozen_parameters_is_refused_and_left_out_of_modules():
    model, _ = _mlp()
    model[0].requires_grad_(False)
    with pytest.raises(ValueError, match="Block 'first' is empty"):
        resolve_blocks(model, {"first": "0"})
    assert list(resolve_blocks(model, "modules")) == ["2"]


def test_bad_solver_arguments_are_refused():
    model, data = _mlp()
    with pytest.raises(ValueError, match="runs on the model's gradients"):
        block_eigenvalues(model, data, blocks="modules", method="pyhessian")
    with pytest.raises(ValueError, match="`products` must be one of"):
        block_eigenvalues(model, data, blocks="modules", products="batched")
    with pytest.warns(FutureWarning, match="products='vmap'.* is deprecated"):
        block_eigenvalues(model, data, blocks="modules", products="vmap")
    with pytest.raises(ValueError, match="hvp='autograd'"):
        block_eigenvalues(model, data, blocks="modules", hvp="finite_difference")
    with pytest.raises(ValueError, match="takes no option 'basis'"):
        block_eigenvalues(model, data, blocks="modules", solver_options={"basis": 5})
    with pytest.raises(ValueError, match="`tol`"):
        block_eigenvalues(model, data, blocks="modules", tol=2.0)


def test_a_block_that_does_not_converge_is_nan_and_the_others_are_values():
    model, data = _mlp()
    spectra = block_eigenvalues(
        model, data, blocks={"big": "0.weight", "small": "2.bias"}, max_iter=3, tol=1e-12
    )
    assert not spectra["big"].converged and "max_iter=3" in spectra.reasons["big"]
    assert math.isnan(spectra.max["big"]) and math.isnan(spectra.min["big"])
    assert all(math.isnan(value) for value in spectra["big"].top + spectra["big"].bottom)
    # three products span the bias' 3-dimensional block: exact
    assert spectra["small"].converged and spectra.reasons["small"] == ""
    assert math.isfinite(spectra.max["small"])
    assert not spectra.all_converged


def test_a_non_finite_loss_gives_nan_for_every_block():
    model, (x, y) = _mlp()
    x = x.clone()
    x[3, 1] = math.nan
    spectra = block_eigenvalues(model, (x, y), blocks="modules")
    assert not any(spectrum.converged for spectrum in spectra.values())
    assert all("non-finite" in reason for reason in spectra.reasons.values())
    assert all(math.isnan(value) for value in [*spectra.max.values(), *spectra.min.values()])


def test_a_block_with_non_finite_products_is_nan_and_the_others_are_values():
    model, (x, y) = _mlp()
    x = x.clone()
    x[3, 1] = math.inf  # tanh makes the loss finite; only the first layer's products are not
    spectra = block_eigenvalues(model, (x, y), blocks="modules")
    assert not spectra["0"].converged and "non-finite" in spectra.reasons["0"]
    assert math.isnan(spectra.max["0"])
    assert spectra["2"].converged and math.isfinite(spectra.max["2"])


def test_batches_and_an_all_reduce_give_the_hessian_of_all_samples():
    model, (x, y) = _residual_classifier()
    whole = block_eigenvalues(model, (x, y), tol=1e-8)
    split = block_eigenvalues(model, [(x[:20], y[:20]), (x[20:], y[20:])], tol=1e-8)
    # two ranks holding the same data: sums and counts double
    doubled = block_eigenvalues(model, (x, y), tol=1e-8, all_reduce=lambda tensor: 2 * tensor)
    for other in (split, doubled):
        for name in whole.names:
            assert other.max[name] == pytest.approx(whole.max[name], rel=1e-9)
            assert other.min[name] == pytest.approx(whole.min[name], rel=1e-9)


def test_no_side_effects_and_train_mode_matches_a_whole_model_measurement_per_block():
    model, (x, y) = _cnn()
    model.train()
    model.head.eval()  # a mix of modes, to be kept
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    grads = [param.grad for param in model.parameters()]
    buffers = [buffer.clone() for buffer in model.buffers()]
    modes = [module.training for module in model.modules()]
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    spectra = block_eigenvalues(model, (x, y), blocks="modules", mode="train", tol=1e-6)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [module.training for module in model.modules()] == modes
    assert all(a is b for a, b in zip(grads, [p.grad for p in model.parameters()], strict=True))
    assert all(bool((p.grad == 1).all()) for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    # the same dropout masks and batch statistics as each block's own measurement
    for name, params in resolve_blocks(model, "modules").items():
        alone = hessian_eigenvalues(model, (x, y), params=params, mode="train", tol=1e-6)
        assert spectra.max[name] == pytest.approx(alone.max, rel=1e-10)


def test_as_dict_names_every_block():
    model, data = _residual_classifier()
    spectra = block_eigenvalues(model, data, top_k=2, bottom_k=1)
    assert set(spectra.as_dict()) == {
        f"block/1.units.{k}/{key}"
        for k in range(2)
        for key in ("max_eigenvalue", "min_eigenvalue", "top_1", "top_2")
    }


def test_errors_about_params_name_the_parameters_and_never_print_tensors():
    model, data = _mlp()
    params = [model[0].weight, model[0].bias]
    with pytest.raises(
        ValueError, match=r"Block 'b' is empty.*params=\['0.weight', '0.bias'\]"
    ) as info:
        block_eigenvalues(model, data, params=params, blocks={"a": "0", "b": "2"})
    assert "tensor(" not in str(info.value)
    spectrum = hessian_eigenvalues(model, data, params=params, vectors=True)
    for call in (
        lambda: block_profile(model, spectrum, "modules"),
        lambda: gradient_overlap(model, data, spectrum=spectrum, params=[model[2].weight]),
    ):
        with pytest.raises(ValueError, match="params the spectrum was measured with") as info:
            call()
        assert "tensor(" not in str(info.value)
    with pytest.raises(ValueError, match=r"params=\['2.weight'\]"):
        gradient_overlap(model, data, spectrum=spectrum, params=[model[2].weight])
