from pathlib import Path

import pytest
import torch

from lightning_shortcut.data import DigitsDataModule, get_dataset
from lightning_shortcut.tasks import CLASSIFICATION, REGRESSION


def test_tasks_evaluate_and_build():
    digits = get_dataset("digits").study_datamodule(Path("unused"), batch_size=8, seed=0)
    digits.setup()
    model = REGRESSION.build_model(digits, layer="linear", num_units=2, shortcut_depth=2, lr=0.1)
    loss, accuracy = REGRESSION.evaluate(model, digits.val_set, digits.num_classes)
    inputs, targets = digits.val_set.tensors
    with torch.no_grad():
        outputs = model(inputs)
    assert loss == pytest.approx(float(0.5 * (outputs - targets).pow(2).sum(dim=1).mean()))
    expected = (outputs[:, :10].argmax(1) == targets[:, :10].argmax(1)).float().mean()
    assert accuracy == pytest.approx(float(expected))
    classifier = DigitsDataModule(batch_size=8)
    classifier.setup()
    model = CLASSIFICATION.build_model(
        classifier, layer="linear", num_units=1, shortcut_depth=2, lr=0.1
    )
    loss, accuracy = CLASSIFICATION.evaluate(model, classifier.val_set, 10)
    assert loss > 0 and 0 <= accuracy <= 1
