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

from lightning_shortcut.callbacks import HessianEigenvalueMonitor, hessian_monitor


class SaveStart(Callback):
    def __init__(self, out: Path, monitor: HessianEigenvalueMonitor) -> None:
        self.out, self.monitor = out, monitor

    def on_train_start(self, trainer, pl_module):
        torch.save(pl_module.state_dict(), self.out / f"weights_{trainer.global_rank}.pt")

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {
                "batches": self.monitor._batches["fit"],
                "history": self.monitor.history,
                "budgeted": self.budgeted.history,
            },
            self.out / f"rank_{trainer.global_rank}.pt",
        )


class RankClock(Callback):
    """A fake clock on which measurements cost 0.5 s on rank 0 but 5 s on rank 1 (steps: 1 s),
    so the ranks agree on the budgeted schedule only if rank 0 decides for both."""

    def __init__(self, monitor: HessianEigenvalueMonitor) -> None:
        self.monitor, self.trainer = monitor, None

    def setup(self, trainer, pl_module, stage):
        self.trainer = trainer

    def __call__(self) -> float:
        cost = 0.5 if self.trainer.global_rank == 0 else 5.0
        return self.trainer.global_step + cost * len(self.monitor.history)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    pl.seed_everything(0)
    monitor = HessianEigenvalueMonitor(
        num_samples=42, batch_size=8, top_k=2, tol=1e-6, every_n_epochs=None
    )
    # self-scheduling within half of the training time: rank 0's clock allows steps 2 and 3
    budgeted = HessianEigenvalueMonitor(num_samples=42, max_overhead=0.5, log_prefix="budgeted/")
    clock = RankClock(budgeted)
    hessian_monitor._clock = clock
    save = SaveStart(out, monitor)
    save.budgeted = budgeted
    callbacks = [clock, save, monitor, budgeted]
    kwargs = trainer_kwargs(out, callbacks=callbacks, max_steps=3)
    kwargs.update(strategy="ddp", devices=2, deterministic=False)
    trainer = pl.Trainer(**kwargs)
    trainer.fit(Classifier(), loader(shuffle=True))
