"""Every shipped recipe parses and instantiates; one per dataset and model kind runs through the CLI
with a tiny budget on offline data (the TorchGeo pattern)."""

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from helpers.fake_data import write_cifar10, write_mnist
from torch import nn

from lightning_shortcut import ResidualStack, residual_parameters
from lightning_shortcut.callbacks import HessianEigenvalueMonitor, ResidualInit
from lightning_shortcut.cli import ShortcutCLI, cli, main
from lightning_shortcut.data.registry import DATASETS
from lightning_shortcut.recipes import (
    all_recipes,
    list_recipes,
    recipe_name,
    recipe_text,
    recipes_dir,
    resolve_recipe,
)

RECIPES = [recipe_name(*spec) for spec in all_recipes()]
#: The recipes fitted through the CLI: every dataset (its datamodule, its model kind: linear layers
#: or convolutions), every shortcut depth, init and branch at least once. Every other recipe differs
#: from one of these only in values the instantiation test checks.
FITTED = [
    "digits/shortcut2_small_relu",
    "mnist/shortcut1_xavier_linear",
    "fashion_mnist/shortcut3_orthogonal_relu",
    "cifar10/shortcut2_zero_linear",
]


def test_fitted_recipes_cover_every_dataset_depth_init_and_branch():
    specs = [spec for spec in all_recipes() if recipe_name(*spec) in FITTED]
    assert len(specs) == len(FITTED)
    for position, values in enumerate(zip(*all_recipes(), strict=True)):
        assert {spec[position] for spec in specs} == set(values)
    assert {DATASETS[spec[0]].layer for spec in specs} == {"linear", "conv"}


@pytest.fixture(scope="module")
def offline_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist(root / "mnist")
    write_mnist(root / "fashion", gz=True, seed=1)
    write_cifar10(
        root / "cifar", per_batch=2, num_test=4
    )  # conv HVPs on 32x32 images are the costly part
    return {"mnist": root / "mnist", "fashion_mnist": root / "fashion", "cifar10": root / "cifar"}


def test_shipped_recipes_are_the_generated_grid():
    assert sorted(RECIPES) == list_recipes()
    assert len(RECIPES) == 4 * 3 * 4 * 2
    for spec in all_recipes():
        assert resolve_recipe(recipe_name(*spec)).read_text() == recipe_text(*spec)


@pytest.fixture(scope="module")
def recipe_parser():
    """LightningCLI's parser, built once (building it takes longer than parsing a recipe); without
    the checkpoint instantiators, which would give every model the hyperparameters of the config
    this parser was built with (the fits below go through them)."""
    args = ["--config", FITTED[0], "--trainer.logger", "false"]
    return ShortcutCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=False,
        load_from_checkpoint_support=False,
    ).parser


@pytest.mark.parametrize("spec", all_recipes(), ids=RECIPES)
def test_recipe_instantiates_and_its_model_runs(spec, recipe_parser):
    """LightningCLI's parser reads the recipe and builds everything it names; the model, initialized
    as the recipe's ResidualInit does, takes a batch of the dataset's shape and backpropagates."""
    dataset, depth, init, activation = spec
    config = recipe_parser.parse_args(["--config", str(resolve_recipe(recipe_name(*spec)))])
    assert config.trainer.logger.init_args.name == recipe_name(*spec)
    objects = recipe_parser.instantiate_classes(config)
    model, datamodule = objects.model, objects.data
    callbacks = objects.trainer.callbacks
    assert isinstance(datamodule, DATASETS[dataset].datamodule)
    (stack,) = [m for m in model.modules() if isinstance(m, ResidualStack)]
    assert stack.shortcut_depth == depth
    between_layers = [m for m in stack.units[0].branch if not isinstance(m, nn.Linear | nn.Conv2d)]
    assert len(between_layers) == (depth - 1 if activation == "relu" else 0)
    (residual_init,) = [c for c in callbacks if isinstance(c, ResidualInit)]
    (monitor,) = [c for c in callbacks if isinstance(c, HessianEigenvalueMonitor)]
    assert monitor.settings.params == "residual" and monitor.at_fit_start
    residual_init.strategy(model)
    weights = residual_parameters(model)
    if init == "zero":
        assert all(torch.count_nonzero(w) == 0 for w in weights)
    else:
        assert all(torch.count_nonzero(w) > 0 for w in weights)
    inputs = torch.randn(2, *DATASETS[dataset].input_shape)
    outputs = model(inputs)
    assert outputs.shape == (2, DATASETS[dataset].num_classes)
    outputs.square().sum().backward()
    assert all(p.grad is not None for p in weights)


@pytest.mark.parametrize("name", FITTED)
def test_recipe_fits_with_a_tiny_budget(name, tmp_path, offline_data):
    dataset = name.split("/")[0]
    args = [
        "fit",
        "--config", name,
        "--trainer.max_steps", "2",
        "--trainer.limit_val_batches", "1",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.accelerator", "cpu",
    ]  # fmt: skip
    if dataset == "cifar10":  # the conv stack on 32x32 images, narrower: its products cost seconds
        args += ["--model.init_args.width", "8", "--model.init_args.num_units", "2"]
    if dataset in offline_data:
        args += [
            "--data.init_args.data_dir",
            str(offline_data[dataset]),
            "--data.init_args.download",
            "false",
        ]
    result = cli(args)
    assert result.trainer.global_step == 2
    monitor = next(
        c for c in result.trainer.callbacks if type(c).__name__ == "HessianEigenvalueMonitor"
    )
    assert monitor.history and monitor.history[0]["step"] == 0
    metrics = Path(result.trainer.logger.log_dir) / "metrics.csv"
    with open(metrics) as handle:
        header = next(csv.reader(handle))
    assert "hessian/max_eigenvalue" in header


def test_recipe_by_path_and_validate(tmp_path):
    path = recipes_dir() / "digits" / "shortcut2_small_linear.yaml"
    common = [
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
    ]
    result = cli(["validate", "--config", str(path), *common])
    assert "val_loss" in result.trainer.callback_metrics
    config = yaml.safe_load(path.read_text())
    assert config["model"]["init_args"]["shortcut_depth"] == 2


def test_unknown_recipe_and_listing(capsys):
    with pytest.raises(FileNotFoundError, match="lightning-shortcut recipes"):
        cli(["fit", "--config", "digits/shortcut9_magic_linear"])
    main(["recipes"])
    assert "digits/shortcut2_small_relu" in capsys.readouterr().out


def _train_size(dataset, data_args):
    """Training samples after the validation split, from the dataset's published size (digits:
    scikit-learn's bundled copy) and the datamodule's own split."""
    import inspect

    from lightning_shortcut.data import DigitsDataModule

    if dataset == "digits":
        datamodule = DigitsDataModule(**data_args)
        datamodule.setup("fit")
        return len(datamodule.train_set)
    published = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000}[dataset]
    parameters = inspect.signature(DATASETS[dataset].datamodule).parameters
    return published - round(parameters["val_fraction"].default * published)


@pytest.mark.parametrize("dataset", sorted({spec[0] for spec in all_recipes()}))
def test_recipe_schedules_draw_curves_of_20_points(dataset):
    configs = [
        yaml.safe_load(resolve_recipe(name).read_text())
        for name in RECIPES
        if name.startswith(f"{dataset}/")
    ]
    (data_args,) = {yaml.safe_dump(c["data"]["init_args"]) for c in configs}  # one data per dataset
    data_args = yaml.safe_load(data_args)
    steps_per_epoch = math.ceil(_train_size(dataset, data_args) / data_args["batch_size"])
    assert DATASETS[dataset].recipe.steps_per_epoch == steps_per_epoch
    for config in configs:
        steps = config["trainer"]["max_epochs"] * steps_per_epoch
        (monitor,) = [
            c["init_args"] for c in config["trainer"]["callbacks"] if "Hessian" in c["class_path"]
        ]
        assert "max_overhead" not in monitor  # a fixed schedule that no time budget cuts
        assert monitor["at_fit_start"] and 1 + steps // monitor["every_n_steps"] >= 20


def test_digits_recipe_run_logs_a_curve(tmp_path):
    """The recipe's own schedule, on 4 of its 40 epochs and a model small enough for seconds: the
    measurements the schedule test counts are the ones a run makes, the last step's included."""
    args = [
        "fit",
        "--config", "digits/shortcut2_small_relu",
        "--model.init_args.num_units", "1",
        "--model.init_args.width", "8",
        "--trainer.max_epochs", "4",
        "--trainer.limit_val_batches", "0",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.accelerator", "cpu",
    ]  # fmt: skip
    result = cli(args)
    monitor = next(
        c for c in result.trainer.callbacks if type(c).__name__ == "HessianEigenvalueMonitor"
    )
    every = monitor.every_n_steps
    assert result.trainer.global_step == 4 * 21 == 2 * every
    assert [r["step"] for r in monitor.history] == [0, every, 2 * every]
    with open(Path(result.trainer.logger.log_dir) / "metrics.csv") as handle:
        logged = [r["step"] for r in csv.DictReader(handle) if r.get("hessian/max_eigenvalue")]
    assert logged == ["0", str(every), str(2 * every)]
