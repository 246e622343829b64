import dataclasses
from pathlib import Path

import pytest

from lightning_shortcut.data import (
    DATASETS,
    DatasetInfo,
    DigitsDataModule,
    FileDataModule,
    MNISTDataModule,
    get_dataset,
    register_dataset,
)
from lightning_shortcut.recipes import DATASETS as RECIPE_DATASETS
from lightning_shortcut.study.config import StudyConfig


def test_one_entry_per_dataset_read_by_recipes_and_study():
    assert list(DATASETS) == ["digits", "mnist", "fashion_mnist", "cifar10"]
    assert RECIPE_DATASETS is DATASETS
    assert dataclasses.fields(StudyConfig)[1].metadata["choices"] is DATASETS
    for name, info in DATASETS.items():
        assert info.name == name
        assert info.input_shape == info.datamodule.input_shape
        assert info.num_classes == info.datamodule.num_classes == 10


def test_study_datamodules():
    digits = get_dataset("digits").study_datamodule(Path("unused"), batch_size=8, seed=3)
    assert isinstance(digits, DigitsDataModule)
    assert (digits.task, digits.input_shape, digits.batch_size, digits.seed) == (
        "regression",
        (16,),
        8,
        3,
    )
    mnist = get_dataset("mnist").study_datamodule(Path("files"), batch_size=8, seed=3)
    assert isinstance(mnist, MNISTDataModule) and mnist.data_dir == Path("files")


def test_registering_and_looking_up():
    with pytest.raises(ValueError, match="registered already"):
        register_dataset(DATASETS["mnist"])
    with pytest.raises(ValueError, match=r"Unknown data 'imagenet'; expected one of \['digits'"):
        get_dataset("imagenet")
    assert isinstance(DATASETS["cifar10"], DatasetInfo)


def test_file_datamodules_must_name_their_folders():
    class Incomplete(FileDataModule):
        def _locate(self):
            return None

        def _download(self):
            pass

    with pytest.raises(TypeError, match="_candidates"):
        Incomplete()
