"""``shortcut-study``: the paper's comparisons as a table and figures.

Five parts, all written into ``--out``:

1. The zero point: the condition number of the Hessian over the residual parameters of exactly
   zero-initialized stacks, measured with the Lanczos engine, against the number of units for each
   shortcut depth, beside the theory's prediction (``kappa_zero_point.csv/png``).
2. Training: a grid shortcut depth x init x number of units, each run a Lightning ``Trainer`` with
   :class:`~lightning_shortcut.callbacks.HessianEigenvalueMonitor`; ``summary.csv``/``summary.md``
   hold the condition number at the initial point (``kappa_init``), the eigenvalues at the first and
   last measurement, the final loss over the training set and the validation accuracy;
   ``loss_curves.png`` and ``eigenvalue_trajectories.png`` show the runs.
3. The learning rate against depth: each shortcut depth from small weights over a grid of learning
   rates, beside the initial ``2 / lambda_max`` (``lr_sweep.csv``, ``lr_sweep_summary.csv``,
   ``lr_sweep.png``).
4. The edge of stability (Cohen et al. 2021, Fig. 1): full-batch gradient descent on a tanh MLP at
   several learning rates, ``lambda_max`` along training against ``2 / lr``
   (``edge_of_stability.csv``, ``edge_of_stability.png``).
5. Where the curvature lives along training: the largest eigenvalue of each residual unit's
   diagonal block of the Hessian at a few steps of SGD, for every shortcut depth, from small
   weights and from Xavier (``unit_curvature.csv``, ``unit_curvature.png``).

The default runs offline on scikit-learn's ``digits`` in the theory's exact setting: inputs are
the images' whitened PCA coordinates in 16 dimensions, targets the one-hot labels in the first 10 of
16 outputs, the model a bias-free linear :class:`~lightning_shortcut.ResidualStack` on
``0.5 * mean ||f(x) - y||^2`` trained by SGD. ``--data mnist|fashion_mnist|cifar10`` runs the
classifier (input projection, stack, head) on those datasets instead.

The package: :mod:`~.config` (``StudyConfig``, the budgets), :mod:`~.parts` (``StudyPart``, the
base of a part, and ``Table``), :mod:`~.zero_point`, :mod:`~.training`, :mod:`~.lr_sweep`,
:mod:`~.edge_of_stability` and :mod:`~.unit_curvature` (the parts), :mod:`~.results` (their result
types), :mod:`~.report` (CSV and Markdown), :mod:`~.figures` (which reads only :mod:`~.results`
and table rows), :mod:`~.runner` (``run_study`` and ``PARTS``, the parts in order) and :mod:`~.cli`
(``main``, the command line).
"""

from lightning_shortcut.study.cli import main
from lightning_shortcut.study.config import BUDGETS, INIT_NAMES, StudyConfig
from lightning_shortcut.study.results import RunResult
from lightning_shortcut.study.runner import run_study

__all__ = ["BUDGETS", "INIT_NAMES", "RunResult", "StudyConfig", "main", "run_study"]
