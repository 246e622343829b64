"""DDP with 2 CPU processes: every rank gets the spectrum of the union of the ranks' data."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.lightning_models import Classifier

from lightning_shortcut.hessian import hessian_eigenvalues

SCRIPT = Path(__file__).parent / "ddp_monitor_script.py"


@pytest.mark.slow
def test_ddp_ranks_agree_with_a_single_process_on_the_union(tmp_path):
    subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], check=True, timeout=300, cwd=tmp_path
    )
    ranks = [torch.load(tmp_path / f"rank_{r}.pt", weights_only=False) for r in range(2)]

    def values(history):
        return [{k: v for k, v in record.items() if k != "seconds"} for record in history]

    assert values(ranks[0]["history"]) == values(ranks[1]["history"])  # identical on every rank
    assert list(tmp_path.glob("logs/version_*/hessian_density.csv"))  # written, nothing hung
    # the time budget is rank 0's decision (rank 1's own clock would skip steps 2 and 3)
    assert [r["step"] for r in ranks[0]["budgeted"]] == [0, 2, 3]
    assert values(ranks[0]["budgeted"]) == values(ranks[1]["budgeted"])
    shares = [sum(len(b[0]) for b in rank["batches"]) for rank in ranks]
    assert shares == [21, 21]  # each rank holds its share of the 42 samples
    union_x = torch.cat([b[0] for rank in ranks for b in rank["batches"]])
    union_y = torch.cat([b[1] for rank in ranks for b in rank["batches"]])
    assert len({tuple(row.tolist()) for row in union_x}) == 42  # no sample twice
    model = Classifier()
    model.load_state_dict(torch.load(tmp_path / "weights_0.pt"))
    single = hessian_eigenvalues(model, (union_x, union_y), top_k=2, tol=1e-6)
    first = ranks[0]["history"][0]
    assert first["step"] == 0
    assert abs(first["top_1"] - single.top[0]) < 1e-4 * abs(single.top[0])
    assert abs(first["top_2"] - single.top[1]) < 1e-4 * abs(single.top[0])
    assert abs(first["min_eigenvalue"] - single.min) < 1e-4 * abs(single.top[0])
