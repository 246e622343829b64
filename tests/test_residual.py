import pytest
import torch
from torch import nn

from lightning_shortcut import (
    ResidualStack,
    ResidualUnit,
    residual_parameters,
    residual_weight_layers,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("shortcut_depth", [1, 2, 3, 5])
@pytest.mark.parametrize("activation", [None, "relu", "tanh", nn.GELU()])
def test_linear_stack_keeps_shape_and_structure(shortcut_depth, activation):
    stack = ResidualStack(6, num_units=4, shortcut_depth=shortcut_depth, activation=activation)
    x = torch.randn(3, 7, 6)
    assert stack(x).shape == x.shape
    assert len(stack.units) == 4
    for unit in stack.units:
        assert len(unit.weight_layers) == shortcut_depth
        activations = [m for m in unit.branch if not isinstance(m, nn.Linear)]
        assert len(activations) == (0 if activation is None else shortcut_depth - 1)
    assert len(residual_weight_layers(stack)) == 4 * shortcut_depth


def test_unit_computes_identity_plus_branch():
    unit = ResidualUnit(5, shortcut_depth=2, activation="relu", bias=True)
    x = torch.randn(4, 5)
    first, second = unit.weight_layers
    expected = x + second(torch.relu(first(x)))
    torch.testing.assert_close(unit(x), expected)


def test_post_activation_applies_after_addition():
    unit = ResidualUnit(5, shortcut_depth=1, post_activation="relu")
    x = torch.randn(4, 5)
    torch.testing.assert_close(unit(x), torch.relu(x + unit.weight_layers[0](x)))


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_conv_stack_keeps_shape(kernel_size):
    stack = ResidualStack(4, 3, 2, layer="conv", activation="relu", kernel_size=kernel_size)
    x = torch.randn(2, 4, 9, 7)
    assert stack(x).shape == x.shape
    assert stack(x[0]).shape == x[0].shape
    assert all(isinstance(layer, nn.Conv2d) for layer in residual_weight_layers(stack))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_devices_and_dtypes(device, dtype):
    stack = ResidualStack(8, 3, 2, activation="tanh").to(device=device, dtype=dtype)
    x = torch.randn(5, 8, device=device, dtype=dtype)
    out = stack(x)
    assert out.dtype == dtype and out.device.type == device


def test_meta_device_builds_without_memory():
    stack = ResidualStack(1024, 64, 2).to("meta")
    assert stack(torch.empty(2, 1024, device="meta")).shape == (2, 1024)


def test_torch_compile_matches_eager():
    stack = ResidualStack(8, 3, 2, activation="relu")
    x = torch.randn(4, 8)
    compiled = torch.compile(stack, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), stack(x))


def test_residual_parameters_finds_nested_stacks_once():
    stack = ResidualStack(4, 2, 2, bias=True)
    model = nn.Sequential(nn.Linear(3, 4), stack, nn.Linear(4, 2))
    params = residual_parameters(model)
    assert len(params) == 2 * 2 * 2  # units x layers x (weight, bias)
    assert {id(p) for p in params} == {id(p) for p in stack.parameters()}
    assert all(id(p) not in {id(q) for q in params} for p in model[0].parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_units": 0}, ValueError, "num_units.*0"),
        ({"num_units": -1}, ValueError, "num_units.*-1"),
        ({"num_units": 1.5}, TypeError, "num_units.*1.5"),
        ({"num_units": "2"}, TypeError, "num_units.*'2'"),
        ({"num_units": True}, TypeError, "num_units.*True"),
        ({"shortcut_depth": 0}, ValueError, "shortcut_depth.*0"),
        ({"shortcut_depth": -1}, ValueError, "shortcut_depth.*-1"),
        ({"shortcut_depth": 1.5}, TypeError, "shortcut_depth.*1.5"),
        ({"shortcut_depth": "2"}, TypeError, "shortcut_depth.*'2'"),
        ({"shortcut_depth": True}, TypeError, "shortcut_depth.*True"),
        ({"width": 0}, ValueError, "width.*0"),
        ({"activation": "swishy"}, ValueError, "swishy"),
        ({"activation": 3}, TypeError, "activation.*3"),
        ({"layer": "dense"}, ValueError, "dense"),
        ({"post_activation": "nope"}, ValueError, "nope"),
        ({"kernel_size": 2, "layer": "conv"}, ValueError, "kernel_size.*2"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, error, match):
    arguments = {"width": 4, "num_units": 2, "shortcut_depth": 2} | kwargs
    with pytest.raises(error, match=match):
        ResidualStack(**arguments)


def test_unknown_activation_fails_even_for_depth_one():
    with pytest.raises(ValueError, match="swishy"):
        ResidualStack(4, 2, 1, activation="swishy")


def test_wrong_feature_size_says_so():
    stack = ResidualStack(4, 2, 2)
    with pytest.raises(ValueError, match=r"width=4.*\(3, 5\)"):
        stack(torch.randn(3, 5))
    conv = ResidualStack(4, 2, 2, layer="conv")
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        conv(torch.randn(2, 3, 8, 8))
