"""GPU checks (skipped without CUDA): the engine and the monitor on a CUDA device."""

import pytest
import torch
from helpers.models import TinyCNN, classification_data

from lightning_shortcut.hessian import hessian_eigenvalues

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("method", ["lanczos", "power", "pyhessian"])
def test_cuda_matches_cpu_and_keeps_cuda_rng(method):
    torch.manual_seed(0)
    model = TinyCNN(dropout=0.3).double()
    x, y = classification_data((1, 6, 6), num_samples=16)
    cpu = hessian_eigenvalues(model, (x, y), method=method, tol=1e-9, max_iter=3000)
    model.cuda()
    torch.cuda.manual_seed(1)
    state = torch.cuda.get_rng_state()
    gpu = hessian_eigenvalues(
        model, (x.cuda(), y.cuda()), method=method, mode="train", tol=1e-9, max_iter=3000
    )
    assert torch.equal(state, torch.cuda.get_rng_state())
    assert all(b.is_cuda for b in model.buffers())
    eval_gpu = hessian_eigenvalues(
        model, (x.cuda(), y.cuda()), method=method, tol=1e-9, max_iter=3000
    )
    rel = 1e-5 if method == "pyhessian" else 1e-6  # pyhessian's own stopping rule
    assert eval_gpu.max == pytest.approx(cpu.max, rel=rel)
    assert eval_gpu.min == pytest.approx(cpu.min, rel=rel)
    assert gpu.converged or method == "pyhessian"  # pyhessian stops by its own rule


def test_monitor_on_gpu_trainer(tmp_path):
    import lightning.pytorch as pl
    from helpers.lightning_models import Classifier, loader

    from lightning_shortcut.callbacks import HessianEigenvalueMonitor

    monitor = HessianEigenvalueMonitor(every_n_steps=2, num_samples=32, top_k=2, min_abs=True)
    pl.seed_everything(0)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="gpu",
        devices=1,
        max_epochs=1,
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(Classifier(), loader())
    assert len(monitor.history) >= 3
    assert all(r["max_eigenvalue"] >= r["min_eigenvalue"] for r in monitor.history)
