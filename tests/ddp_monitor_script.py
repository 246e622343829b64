"""Run by test_hessian_monitor_ddp.py: a 2-process CPU (gloo) DDP fit with the monitor.

Lightning's DDP launcher starts rank 1 by running this same command again.
"""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).parent))
from helpers.lightning_models import Classifier, clocked_monitor, loader, trainer_kwargs

from lightning_shortcut.callbacks import HessianEigenvalueMonitor


class SaveStart(Callback):
    def __init__(
        self, out: Path, monitor: HessianEigenvalueMonitor, budgeted: HessianEigenvalueMonitor
    ) -> None:
        self.out, self.monitor, self.budgeted = out, monitor, budgeted

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


if __name__ == "__main__":
    out = Path(sys.argv[1])
    pl.seed_everything(0)
    # at the initial point only
    monitor = HessianEigenvalueMonitor(
        num_samples=42, chunk_size=8, top_k=2, tol=1e-6, max_overhead=0, density_snapshots=1
    )
    # self-scheduling within half of the training time: rank 0's clock allows steps 2 and 3;
    # measurements cost 0.5 s on rank 0 but 5 s on rank 1 (steps: 1 s), so the ranks agree on the
    # budgeted schedule only if rank 0 decides for both
    budgeted, clock = clocked_monitor(
        cost=(0.5, 5.0), num_samples=42, max_overhead=0.5, log_prefix="budgeted/"
    )
    callbacks = [clock, SaveStart(out, monitor, budgeted), monitor, budgeted]
    kwargs = trainer_kwargs(out, callbacks=callbacks, max_steps=3)
    # a logger: the density snapshot's file is written by rank 0 into a folder every rank asks for
    logger = pl.loggers.CSVLogger(out, name="logs")
    kwargs.update(strategy="ddp", devices=2, deterministic=False, logger=logger)
    trainer = pl.Trainer(**kwargs)
    trainer.fit(Classifier(), loader(shuffle=True))
