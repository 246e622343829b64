"""``shortcut-study``: the paper's comparisons as tables and figures, written into ``--out``.

Five parts (:data:`~lightning_shortcut.study.runner.PARTS`; docs/study.md shows what they find):

1. The zero point: the Hessian's condition number over the residual weights of exactly
   zero-initialized stacks against the number of units, beside the theory's
   (``kappa_zero_point.csv/png``).
2. Training: shortcut depth x init x number of units, each a ``Trainer`` with
   :class:`~lightning_shortcut.callbacks.HessianEigenvalueMonitor` (``summary.csv``,
   ``summary.md``, ``loss_curves.png``, ``eigenvalue_trajectories.png``).
3. The learning rate against depth, beside the initial ``2 / lambda_max`` (``lr_sweep.csv``,
   ``lr_sweep_summary.csv``, ``lr_sweep.png``).
4. The edge of stability (Cohen et al. 2021, Fig. 1): ``lambda_max`` along full-batch gradient
   descent against ``2 / lr`` (``edge_of_stability.csv/png``).
5. Each residual unit's ``lambda_max`` along SGD (``unit_curvature.csv/png``).

The default runs offline on scikit-learn's ``digits`` in the theory's exact setting (a bias-free
linear :class:`~lightning_shortcut.ResidualStack` on ``0.5 * mean ||f(x) - y||^2``); ``--data
mnist|fashion_mnist|cifar10`` trains the classifier instead. Modules: :mod:`~.config`,
:mod:`~.parts` (the base of a part), one module per part, :mod:`~.results`, :mod:`~.report`,
:mod:`~.figures`, :mod:`~.runner` and :mod:`~.cli`.
"""

from lightning_shortcut.study.cli import main
from lightning_shortcut.study.config import BUDGETS, INIT_NAMES, StudyConfig
from lightning_shortcut.study.results import RunResult
from lightning_shortcut.study.runner import run_study

__all__ = ["BUDGETS", "INIT_NAMES", "RunResult", "StudyConfig", "main", "run_study"]
