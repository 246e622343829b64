"""Run by test_callbacks_ddp.py: a 2-process CPU (gloo) DDP fit with the monitor.

Lightning's DDP launcher starts rank 1 by running this same command again.
"""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).parent))
from lightning_models import Classifier, loader, trainer_kwargs

from lightning_shortcut.callbacks import HessianEigenvalueMonitor


class SaveStart(Callback):
    def __init__(self, out: Path, monitor: HessianEigenvalueMonitor) -> None:
        self.out, self.monitor = out, monitor

    def on_train_start(self, trainer, pl_module):
        torch.save(pl_module.state_dict(), self.out / f"weights_{trainer.global_rank}.pt")

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {"batches": self.monitor._batches["fit"], "history": self.monitor.history},
            self.out / f"rank_{trainer.global_rank}.pt",
        )


if __name__ == "__main__":
    out = Path(sys.argv[1])
    pl.seed_everything(0)
    monitor = HessianEigenvalueMonitor(
        num_samples=42, batch_size=8, top_k=2, tol=1e-6, every_n_epochs=None
    )
    kwargs = trainer_kwargs(out, callbacks=[SaveStart(out, monitor), monitor], max_steps=2)
    kwargs.update(strategy="ddp", devices=2, deterministic=False)
    trainer = pl.Trainer(**kwargs)
    trainer.fit(Classifier(), loader(shuffle=True))
