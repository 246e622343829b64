"""``ResidualInit``: apply an init strategy to every ResidualStack when fitting starts from scratch."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_shortcut.init import InitStrategy, ZeroInit
from lightning_shortcut.residual import residual_weight_layers

__all__ = ["ResidualInit"]


class ResidualInit(Callback):
    """Initialize the residual branches of the model with ``strategy`` at the start of ``fit``.

    Chooses the paper's initialization from the Trainer or a YAML config without touching the
    model. It runs in ``setup("fit")``, before the strategy broadcasts the model (every DDP rank
    gets rank zero's weights), and only when fitting starts from scratch: a checkpoint's weights win
    (:attr:`applied` turns ``False``), and a second ``fit`` after steps were taken does nothing.

    Args:
        strategy: an :class:`~lightning_shortcut.InitStrategy`; default the exact zero point.

    Example:
        ```python
        trainer = Trainer(callbacks=[ResidualInit(ZeroInit(scale=1e-3))])
        ```
    """

    def __init__(self, strategy: InitStrategy | None = None) -> None:
        super().__init__()
        if strategy is not None and not isinstance(strategy, InitStrategy):
            raise TypeError(
                f"`strategy` must be an InitStrategy such as ZeroInit(), got {strategy!r}."
            )
        self.strategy = strategy if strategy is not None else ZeroInit()
        self.applied = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.ckpt_path is not None or trainer.global_step > 0:
            return
        if not residual_weight_layers(pl_module):
            rank_zero_warn(
                f"ResidualInit: {type(pl_module).__name__} contains no ResidualStack; nothing to do."
            )
            return
        self.strategy(pl_module)
        self.applied = True

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.applied = False  # the checkpoint's weights replace the initialization
