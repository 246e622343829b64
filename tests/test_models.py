import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_shortcut import residual_parameters
from lightning_shortcut.models import ResidualClassifier, ResidualRegressor, regression_loss


@pytest.mark.parametrize(
    ("shape", "layer"), [((1, 8, 8), "linear"), ((3, 8, 8), "conv"), ((12,), "linear")]
)
def test_classifier_shapes_and_residual_parameters(shape, layer):
    model = ResidualClassifier(shape, 5, width=6, num_units=3, shortcut_depth=2, layer=layer)
    logits = model(torch.randn(4, *shape))
    assert logits.shape == (4, 5)
    residual = {id(p) for p in residual_parameters(model)}
    assert residual == {id(p) for p in model.stack.parameters()}


def test_regressor_is_the_stack():
    model = ResidualRegressor(width=12, num_units=2, num_classes=10)
    x = torch.randn(3, 12)
    torch.testing.assert_close(model(x), model.stack(x))
    assert regression_loss(model, (x, x)).item() == pytest.approx(
        0.5 * (model(x) - x).pow(2).sum(1).mean().item()
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_models_train_and_log(tmp_path, optimizer):
    pl.seed_everything(0)
    x = torch.randn(64, 1, 4, 4)
    y = (x.flatten(1).sum(1) > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    model = ResidualClassifier((1, 4, 4), 2, width=8, num_units=2, optimizer=optimizer, lr=0.05)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, loader, loader)
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(trainer.callback_metrics)
    assert trainer.callback_metrics["val_acc"] > 0.6
    trainer.test(model, loader)
    assert {"test_loss", "test_acc"} <= set(trainer.callback_metrics)
    predictions = trainer.predict(model, loader)
    assert predictions[0].shape == (16,)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: ResidualClassifier(optimizer="lbfgs"), "lbfgs"),
        (lambda: ResidualClassifier(lr=0.0), "lr"),
        (lambda: ResidualClassifier((1, 28), layer="conv"), "conv"),
        (lambda: ResidualClassifier((0, 3)), "input_shape"),
        (lambda: ResidualRegressor(width=8, num_classes=10), "num_classes"),
    ],
)
def test_bad_arguments(factory, match):
    with pytest.raises((ValueError, TypeError), match=match):
        factory()
