"""``StudyConfig``: what the study runs, the one source of its defaults and of its command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_shortcut.data.registry import DATASETS
from lightning_shortcut.hessian._validation import (
    check_choice,
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
)

__all__ = ["BUDGETS", "INIT_NAMES", "StudyConfig"]

#: The sizes of the study: the grid's depths, the zero point's depths, steps and measurements.
BUDGETS: dict[str, dict[str, Any]] = {
    # for tests and smoke runs: seconds
    "quick": {
        "num_units": (1, 4),
        "kappa_units": (1, 2, 4),
        "max_steps": 30,
        "hessian_every": 15,
        "sweep_lrs": (0.01, 0.3, 3.0),
        "sweep_steps": 20,
        "edge_lrs": (2 / 4, 2 / 8),
        "edge_steps": 400,
        "edge_every": 25,
        "curvature_units": (2, 4),
        "curvature_points": 3,
    },
    # the README's default: a few minutes on two CPU cores
    "default": {
        "num_units": (2, 8, 32),
        "kappa_units": (1, 2, 4, 8, 16, 32, 64),
        "max_steps": 600,
        "hessian_every": 50,
        "sweep_lrs": (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
        "sweep_steps": 300,
        # 2 / lr = 4, 6, 8: each run reaches its edge within the first half of its steps
        "edge_lrs": (2 / 4, 2 / 6, 2 / 8),
        "edge_steps": 2000,
        "edge_every": 40,
        # 2 units: every initialization trains; 8: Xavier diverges at the study's lr
        "curvature_units": (2, 8),
        "curvature_points": 5,
    },
    "full": {
        "num_units": (1, 4, 16, 64),
        "kappa_units": (1, 2, 4, 8, 16, 32, 64),
        "max_steps": 3000,
        "hessian_every": 100,
        "sweep_lrs": (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 1.5, 2.0, 3.0),
        "sweep_steps": 1000,
        "edge_lrs": (2 / 4, 2 / 6, 2 / 8, 2 / 10),
        "edge_steps": 5000,
        "edge_every": 25,
        "curvature_units": (2, 8, 32),
        "curvature_points": 7,
    },
}
#: The initializations the study trains from (names of :data:`~lightning_shortcut.init.INIT_STRATEGIES`).
INIT_NAMES = ("small", "xavier", "orthogonal")

_INT_TUPLES = ("shortcut_depths", "num_units", "kappa_units", "curvature_units")
_POSITIVE_INTS = ("max_steps", "hessian_every", "sweep_steps", "edge_steps", "edge_every")
_POSITIVE_INTS += ("curvature_points", "edge_samples", "batch_size", "hessian_samples")


@dataclass
class StudyConfig:
    """What the study runs. ``budget`` fills the fields its :data:`BUDGETS` entry names unless
    they are given.

    Every field is a flag of ``shortcut-study`` (``--data_dir`` or ``--data-dir``; a tuple takes
    several values, ``--num-units 2 8``) and a key of its ``--config`` YAML.

    Args:
        out: output folder.
        data: dataset (digits: offline).
        data_dir: where MNIST/CIFAR files are.
        budget: size of the grid.
        shortcut_depths: shortcut depths n to compare.
        inits: initializations to train from.
        num_units: depths to train (default: the budget's).
        kappa_units: depths of the zero-point sweep (default: the budget's).
        max_steps: SGD steps per run (default: the budget's).
        hessian_every: steps between Hessian measurements during training (default: the budget's).
        sweep_lrs: the learning rates of the sweep (default: the budget's; 0.01 to 2).
        sweep_steps: SGD steps per run of the sweep (default: the budget's).
        edge_lrs: the learning rates of the edge-of-stability runs (default: the budget's).
        edge_steps: full-batch gradient-descent steps per edge-of-stability run (default: the
            budget's).
        edge_every: steps between its lambda_max measurements (default: the budget's).
        edge_samples: training samples of its full batch.
        curvature_units: depths of the per-unit curvature runs (default: the budget's).
        curvature_points: each per-unit curvature run's measurements of every unit's lambda_max,
            evenly spaced from step 0 to ``max_steps`` (default: the budget's).
        lr: SGD learning rate.
        small_scale: standard deviation of the small initialization.
        batch_size: SGD batch size.
        hessian_samples: training samples of the Hessian batch (twice the monitor's default: the
            curvature figures are the study's results).
        seed: seed of the data split, the initialization and training.
        workers: processes that run the study's runs side by side, one CPU thread each (default:
            one per core; 1: in this process). The results do not depend on it.
    """

    out: Path = Path("study_out")
    data: str = field(default="digits", metadata={"choices": DATASETS})
    data_dir: Path = Path("data")
    budget: str = field(default="default", metadata={"choices": BUDGETS})
    shortcut_depths: tuple[int, ...] = (1, 2, 3)
    inits: tuple[str, ...] = field(default=INIT_NAMES, metadata={"choices": INIT_NAMES})
    num_units: tuple[int, ...] | None = None
    kappa_units: tuple[int, ...] | None = None
    max_steps: int | None = None
    hessian_every: int | None = None
    sweep_lrs: tuple[float, ...] | None = None
    sweep_steps: int | None = None
    edge_lrs: tuple[float, ...] | None = None
    edge_steps: int | None = None
    edge_every: int | None = None
    edge_samples: int = 1000
    curvature_units: tuple[int, ...] | None = None
    curvature_points: int | None = None
    lr: float = 0.1
    small_scale: float = 1e-3
    batch_size: int = 64
    hessian_samples: int = 512
    seed: int = 0
    workers: int | None = None

    def __post_init__(self) -> None:
        check_choice("budget", self.budget, BUDGETS)
        check_choice("data", self.data, DATASETS)
        if unknown := [i for i in self.inits if i not in INIT_NAMES]:
            raise ValueError(f"Unknown inits {unknown}; expected some of {list(INIT_NAMES)}.")
        for key, value in BUDGETS[self.budget].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.inits = tuple(self.inits)
        for name in ("sweep_lrs", "edge_lrs", *_INT_TUPLES):
            setattr(self, name, tuple(getattr(self, name)))  # a YAML or CLI list, say
            check = check_positive_float if name.endswith("_lrs") else check_positive_int
            for value in getattr(self, name):
                check(name, value)
        for name in _POSITIVE_INTS:
            check_positive_int(name, getattr(self, name))
        if self.workers is not None:
            check_positive_int("workers", self.workers)
        check_positive_float("lr", self.lr)
        check_non_negative_float("small_scale", self.small_scale)
        self.out = Path(self.out)
        self.data_dir = Path(self.data_dir)
