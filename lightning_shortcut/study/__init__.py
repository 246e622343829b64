"""``shortcut-study``: the paper's comparisons as tables and figures, written into ``--out``.

Five parts (:data:`~lightning_shortcut.study.runner.PARTS`): the zero point, training, the learning
rate against depth, the edge of stability and each unit's curvature; docs/study.md shows what they
find. The default runs offline on scikit-learn's ``digits`` in the theory's exact setting.
"""

from lightning_shortcut.study.cli import main
from lightning_shortcut.study.config import BUDGETS, INIT_NAMES, StudyConfig
from lightning_shortcut.study.results import RunResult
from lightning_shortcut.study.runner import run_study

__all__ = ["BUDGETS", "INIT_NAMES", "RunResult", "StudyConfig", "main", "run_study"]
