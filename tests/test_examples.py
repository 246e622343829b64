"""The scripts in ``examples/`` run on a tiny setting and do what their docstrings say."""

import importlib.util
import math
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers.reference import dense_hessian
from torch import nn

from lightning_shortcut import residual_weight_layers

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested():
    tested = {"monitor_existing_trainer", "swap_residual_stack", "edge_of_stability"}
    assert {path.stem for path in EXAMPLES.glob("*.py")} == tested


def test_monitor_on_an_existing_trainer(tmp_path):
    example = _load("monitor_existing_trainer")
    history = example.main(
        f"--max-epochs 1 --num-images 48 --batch-size 16 --every-n-steps 1 --out {tmp_path}".split()
    )
    assert [record["step"] for record in history] == [0, 1, 2, 3]
    for record in history:
        assert math.isfinite(record["max_eigenvalue"]) and math.isfinite(record["min_eigenvalue"])
        assert record["max_eigenvalue"] >= record["min_eigenvalue"]
    # Adam has no step sizes before its first step: no ratio at step 0, one at every later step
    assert math.isnan(history[0].get("stability", math.nan))
    assert all(record["stability"] > 0 for record in history[1:])


def test_swap_keeps_the_weight_layers_and_trains_both_bodies(tmp_path):
    example = _load("swap_residual_stack")
    plain, residual = example.plain_body(8, 3), example.residual_body(8, 3)
    assert len(residual_weight_layers(residual)) == sum(
        isinstance(m, nn.Linear) for m in plain.modules()
    )
    assert residual(torch.randn(5, 8)).shape == (5, 8)
    results = example.main(
        f"--num-units 2 --width 8 --max-epochs 1 --num-images 96 --every-n-epochs 1 --out {tmp_path}".split()
    )
    assert set(results) == {"plain", "residual"}
    for result in results.values():
        assert math.isfinite(result["train_loss"]) and 0.0 <= result["val_accuracy"] <= 1.0
    assert results["residual"]["measured_steps"] == [0, 2]  # fit start, then the epoch's end
    assert all(math.isfinite(value) for value in results["residual"]["max_eigenvalues"])


def test_edge_of_stability_ratio_is_lr_times_the_sharpness_over_two():
    example = _load("edge_of_stability")
    lr, hidden, num_images = 0.5, 4, 64
    rows = example.main(
        f"--lr {lr} --num-images {num_images} --hidden {hidden} --steps 6 --every-n-steps 2".split()
    )
    assert [row["step"] for row in rows] == [0, 2, 4, 6]
    for row in rows:
        assert row["stability"] == pytest.approx(lr * row["max_eigenvalue"] / 2, rel=1e-9)
    # the first measurement is the sharpness of the full-batch training loss at the initial weights
    pl.seed_everything(0)
    model = example.FullBatchMLP(lr, hidden).double()
    x, y = example.standardized_digits(num_images).tensors
    batch = (x.double(), y)
    eigenvalues = torch.linalg.eigvalsh(dense_hessian(model, lambda m: _loss(m, batch)))
    scale = float(eigenvalues.abs().max())
    assert rows[0]["max_eigenvalue"] == pytest.approx(float(eigenvalues[-1]), abs=1e-2 * scale)
    assert rows[0]["loss"] == pytest.approx(float(model.hessian_loss(batch)), rel=1e-5)


def _loss(module: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    target = nn.functional.one_hot(y, 10).to(x.dtype)
    return 0.5 * ((module(x) - target) ** 2).sum(dim=1).mean()
