"""Run by test_hessian_monitor_fsdp.py: 2-process CPU (gloo) fits under ModelParallelStrategy.

Lightning's launcher starts rank 1 by running this same command again. Three fits in the same
processes: with the monitor (a checkpoint at step 2, then ``trainer.validate``), the same without
it, and a run resumed from the checkpoint. Each rank saves what the test compares.
"""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard

sys.path.insert(0, str(Path(__file__).parent))
from helpers.lightning_models import loader, trainer_kwargs

from lightning_shortcut.callbacks import HessianEigenvalueMonitor


class ShardedClassifier(pl.LightningModule):
    """Three linear layers, each sharded by fully_shard, and the module itself as FSDP's root."""

    def __init__(self, optimizer: str = "sgd") -> None:
        super().__init__()
        self.inp = nn.Linear(6, 10)
        self.hidden = nn.Linear(10, 10)
        self.head = nn.Linear(10, 3)
        self.optimizer = optimizer

    def configure_model(self):
        if isinstance(self, FSDPModule):
            return  # already sharded (Lightning calls this hook at every entry point)
        for layer in (self.inp, self.hidden, self.head):
            fully_shard(layer)
        fully_shard(self)

    def forward(self, x):
        return self.head(torch.tanh(self.hidden(torch.tanh(self.inp(x)))))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]), sync_dist=True)

    def configure_optimizers(self):
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=0.01)
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class SaveWeights(Callback):
    """The full weights after every step (an all-gather on every rank), and the monitor's records."""

    def __init__(self, out: Path, name: str, monitor: HessianEigenvalueMonitor | None) -> None:
        self.out, self.name, self.monitor, self.weights = out, name, monitor, {}

    def _save(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        self.weights[trainer.global_step] = {
            "model": {
                key: value.full_tensor().detach().clone()
                for key, value in pl_module.state_dict().items()
            },
            "optimizer": [
                {
                    key: value.full_tensor() if hasattr(value, "full_tensor") else value.clone()
                    for key, value in optimizer.state.get(param, {}).items()
                }
                for param in pl_module.parameters()
            ],
        }

    def on_train_start(self, trainer, pl_module):
        self._save(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        monitor = self.monitor
        torch.save(
            {
                "weights": self.weights,
                "history": monitor.history if monitor else None,
                "batches": monitor._batches["fit"] if monitor else None,
                # the warm-start vectors the tracker keeps (its WarmStart, or none)
                "vectors": None
                if monitor is None
                else [v.numel() for v in getattr(monitor._tracker._start, "vectors", [])],
            },
            self.out / f"{self.name}_{trainer.global_rank}.pt",
        )


def fit(out: Path, name: str, monitor, optimizer: str, max_steps: int, ckpt=None, **kwargs):
    pl.seed_everything(0, verbose=False)
    saver = SaveWeights(out, name, monitor)
    callbacks = [monitor, saver] if monitor else [saver]
    settings = trainer_kwargs(out, max_steps=max_steps, **kwargs)
    settings.update(strategy=ModelParallelStrategy(), devices=2, deterministic=False)
    settings["callbacks"] = callbacks + settings.get("callbacks", [])
    trainer = pl.Trainer(**settings)
    model = ShardedClassifier(optimizer)
    trainer.fit(model, loader(shuffle=True), ckpt_path=ckpt)
    return trainer, model


def monitor(**kwargs) -> HessianEigenvalueMonitor:
    return HessianEigenvalueMonitor(
        every_n_steps=1,
        num_samples=42,
        chunk_size=16,
        top_k=2,
        tol=1e-6,
        warm_start=True,
        **kwargs,
    )


if __name__ == "__main__":
    out, optimizer = Path(sys.argv[1]), sys.argv[2]
    checkpoint = ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=2, save_top_k=-1)
    monitored = monitor(stages=("fit", "validate"))
    trainer, model = fit(
        out, "monitored", monitored, optimizer, 4, callbacks=[checkpoint], enable_checkpointing=True
    )
    trainer.validate(model, loader(shuffle=False))  # the same first 42 samples, the final weights
    torch.save(monitored.history, out / f"validated_{trainer.global_rank}.pt")
    fit(out, "plain", None, optimizer, 4)
    fit(out, "resumed", monitor(), optimizer, 4, ckpt=out / "ckpt" / "epoch=0-step=2.ckpt")
