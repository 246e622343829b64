import numpy as np
import pytest
import torch
from helpers.fake_data import write_cifar10, write_mnist

from lightning_shortcut.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    LinearTeacherDataModule,
    MNISTDataModule,
    read_idx,
)


def _all_stages(datamodule):
    datamodule.prepare_data()
    for stage in ("fit", "validate", "test", "predict"):
        datamodule.setup(stage)
    return (
        next(iter(datamodule.train_dataloader())),
        next(iter(datamodule.val_dataloader())),
        next(iter(datamodule.test_dataloader())),
        next(iter(datamodule.predict_dataloader())),
    )


def test_digits_classification_split_is_seeded_and_disjoint():
    first = DigitsDataModule(seed=3)
    first.setup("fit")
    second = DigitsDataModule(seed=3)
    second.setup("fit")
    assert torch.equal(first.train_set.tensors[0], second.train_set.tensors[0])
    sizes = len(first.train_set) + len(first.val_set) + len(first.test_set)
    assert sizes == 1797
    x, y = _all_stages(first)[0]
    assert x.shape[1:] == (1, 8, 8) and y.dtype == torch.long
    train_rows = {tuple(r.flatten().tolist()) for r in first.train_set.tensors[0]}
    assert not train_rows & {tuple(r.flatten().tolist()) for r in first.test_set.tensors[0]}
    other = DigitsDataModule(seed=4)
    other.setup()
    assert not torch.equal(first.train_set.tensors[0], other.train_set.tensors[0])


def test_digits_regression_is_whitened_with_one_hot_targets():
    datamodule = DigitsDataModule(task="regression", width=16)
    datamodule.setup()
    x, y = (
        torch.cat(t)
        for t in zip(datamodule.train_set.tensors, datamodule.val_set.tensors, strict=True)
    )
    assert x.shape[1] == 16 and y.shape[1] == 16
    covariance = x.T @ x / (len(x) - 1)  # whitened on the split it was fitted on: train + val
    torch.testing.assert_close(covariance, torch.eye(16), atol=1e-4, rtol=0)
    assert torch.equal(y.sum(dim=1), torch.ones(len(y)))
    assert float(y[:, 10:].abs().sum()) == 0.0
    assert datamodule.input_shape == (16,)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("cls", [MNISTDataModule, FashionMNISTDataModule])
def test_idx_datamodules_read_flat_folders(tmp_path, cls, gz):
    write_mnist(tmp_path, gz=gz)
    datamodule = cls(tmp_path, batch_size=8, val_fraction=0.25)
    train, val, test, _ = _all_stages(datamodule)
    assert train[0].shape == (8, 1, 28, 28) and train[1].dtype == torch.long
    assert val[0].shape[1:] == test[0].shape[1:] == (1, 28, 28)
    assert (
        len(datamodule.train_set) == 45
        and len(datamodule.val_set) == 15
        and len(datamodule.test_set) == 20
    )
    assert abs(float(datamodule.train_set.tensors[0].mean())) < 0.2


def test_idx_datamodule_reads_torchvision_layout(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", gz=False)
    datamodule = MNISTDataModule(tmp_path)
    datamodule.setup("fit")
    assert len(datamodule.train_set) == 54


def test_read_idx_round_trip(tmp_path):
    write_mnist(tmp_path, num_train=5, num_test=3)
    images = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert images.shape == (5, 28, 28) and images.dtype == np.uint8
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "bad")


def test_missing_files_give_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"download=True.*dataset-fashion-mnist"):
        FashionMNISTDataModule(tmp_path).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*download=True"):
        CIFAR10DataModule(tmp_path).setup("fit")


def test_failed_download_is_reported_clearly(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(RuntimeError, match=r"Could not download MNIST.*download=False"):
        MNISTDataModule(tmp_path, download=True).prepare_data()


def test_cifar10(tmp_path):
    write_cifar10(tmp_path)
    datamodule = CIFAR10DataModule(tmp_path, batch_size=4, val_fraction=0.25)
    train, *_ = _all_stages(datamodule)
    assert train[0].shape == (4, 3, 32, 32)
    assert len(datamodule.train_set) == 30 and len(datamodule.test_set) == 10
    means = datamodule.train_set.tensors[0].mean(dim=(0, 2, 3))
    assert float(means.abs().max()) < 0.3


def test_linear_teacher_is_exactly_linear():
    datamodule = LinearTeacherDataModule(width=4, num_train=50, num_test=10)
    datamodule.setup()
    x, y = (
        torch.cat(t)
        for t in zip(datamodule.train_set.tensors, datamodule.val_set.tensors, strict=True)
    )
    solution = torch.linalg.lstsq(x, y).solution
    torch.testing.assert_close(x @ solution, y, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: DigitsDataModule(task="clustering"), "clustering"),
        (lambda: DigitsDataModule(task="regression", width=8), "width=8"),
        (lambda: DigitsDataModule(batch_size=0), "batch_size"),
        (lambda: DigitsDataModule(val_fraction=1.5), "val_fraction"),
        (lambda: MNISTDataModule(num_workers=-1), "num_workers"),
    ],
)
def test_bad_arguments(factory, match):
    with pytest.raises((ValueError, TypeError), match=match):
        factory()
