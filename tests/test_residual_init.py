import pytest
from helpers.lightning_models import Classifier, fit
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_shortcut import OrthogonalInit, ZeroInit, residual_parameters
from lightning_shortcut.callbacks import ResidualInit


def test_residual_init_applies_from_scratch_only(tmp_path):
    init = ResidualInit(ZeroInit())
    _trainer, model = fit(
        tmp_path,
        [init, ModelCheckpoint(dirpath=tmp_path / "c", save_last=True)],
        max_epochs=1,
        enable_checkpointing=True,
        model=lambda: Classifier(lr=0.0),
    )
    assert init.applied
    assert all(bool((p == 0).all()) for p in residual_parameters(model))
    # resume: the checkpoint's weights win, the strategy does not run
    resumed_init = ResidualInit(OrthogonalInit())
    _, resumed = fit(
        tmp_path,
        [resumed_init],
        max_epochs=2,
        model=lambda: Classifier(lr=0.0),
        ckpt_path=str(tmp_path / "c" / "last.ckpt"),
    )
    assert not resumed_init.applied
    assert all(bool((p == 0).all()) for p in residual_parameters(resumed))


def test_residual_init_rejects_non_strategies():
    with pytest.raises(TypeError, match="InitStrategy"):
        ResidualInit("zero")
