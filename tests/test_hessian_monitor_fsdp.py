"""ModelParallelStrategy (FSDP2, fully_shard) with 2 CPU processes: the monitor logs what one
process logs on the same samples, training is unchanged, and a resumed run continues."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_shortcut.hessian import edge_of_stability, hessian_eigenvalues

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "fsdp_monitor_script.py"


class Unsharded(nn.Module):
    """The script's ShardedClassifier without Lightning or sharding, to load its full weights."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 10)
        self.hidden = nn.Linear(10, 10)
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.hidden(torch.tanh(self.inp(x)))))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    subprocess.run(
        [sys.executable, str(SCRIPT), str(out), "adam"], check=True, timeout=600, cwd=out
    )
    return {
        name: [torch.load(out / f"{name}_{rank}.pt", weights_only=False) for rank in range(2)]
        for name in ("monitored", "plain", "resumed", "validated")
    }


def _reference(saved, step, x, y):
    """One process on the union of the ranks' samples, with the weights and Adam state of ``step``."""
    model = Unsharded()
    model.load_state_dict(saved["weights"][step]["model"])
    spectrum = hessian_eigenvalues(model, (x, y), top_k=2, tol=1e-7)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for param, state in zip(model.parameters(), saved["weights"][step]["optimizer"], strict=True):
        if state:
            optimizer.state[param] = dict(state)
    report = edge_of_stability(model, (x, y), optimizer, tol=1e-7) if step > 0 else None
    return spectrum, report


def test_two_sharded_processes_log_what_one_process_logs_on_the_same_samples(runs):
    ranks = runs["monitored"]
    assert [r["step"] for r in ranks[0]["history"]] == [0, 1, 2, 3, 4]
    records = [{k: v for k, v in r.items() if k != "seconds"} for r in ranks[0]["history"]]
    assert records == [{k: v for k, v in r.items() if k != "seconds"} for r in ranks[1]["history"]]
    x = torch.cat([batch[0] for rank in ranks for batch in rank["batches"]])
    y = torch.cat([batch[1] for rank in ranks for batch in rank["batches"]])
    # each rank holds its 21 of the 42 samples, in chunks of chunk_size=16
    assert [len(batch[0]) for rank in ranks for batch in rank["batches"]] == [16, 5, 16, 5]
    assert len({tuple(row.tolist()) for row in x}) == 42  # no sample twice
    for name in ("monitored", "resumed"):
        saved = runs[name][0]
        for record in saved["history"]:
            if name == "resumed" and record["step"] <= 2:
                continue  # the checkpoint's records, compared below
            single, report = _reference(saved, record["step"], x, y)
            scale = abs(single.top[0])
            assert abs(record["top_1"] - single.top[0]) <= 1e-4 * scale
            assert abs(record["top_2"] - single.top[1]) <= 1e-4 * scale
            assert abs(record["min_eigenvalue"] - single.min) <= 1e-4 * scale
            if report is None:
                assert "stability" not in record  # Adam before its first step: not a measurement
            else:
                assert abs(record["stability"] - report.stability) <= 1e-4 * report.stability
    # the warm-start vectors are sharded: each rank holds its rows (213 parameters in all)
    # (2 top, 1 bottom and the neighbours of the ends)
    sizes = [rank["vectors"] for rank in ranks]
    assert len(sizes[0]) == len(sizes[1]) >= 3
    assert set(sizes[0]) == {112} and set(sizes[1]) == {101}


def test_trainer_validate_measures_the_final_weights(runs):
    history, other = (
        [{k: v for k, v in r.items() if k != "seconds"} for r in rank] for rank in runs["validated"]
    )
    assert history == other
    fit, validate = history[-2], history[-1]
    assert (fit["stage"], fit["step"], validate["stage"]) == ("fit", 4, "validate")
    for key in ("top_1", "top_2", "min_eigenvalue"):  # the same samples and weights, a cold start
        assert abs(validate[key] - fit[key]) <= 1e-4 * abs(fit["top_1"])


def test_training_is_the_same_with_and_without_the_monitor(runs):
    for monitored, plain in zip(runs["monitored"], runs["plain"], strict=True):
        for step, saved in monitored["weights"].items():
            weights = plain["weights"][step]["model"]
            assert all(torch.equal(value, weights[key]) for key, value in saved["model"].items())


def test_a_resumed_run_continues(runs):
    monitored, resumed = runs["monitored"][0], runs["resumed"][0]
    assert [r["step"] for r in resumed["history"]] == [0, 1, 2, 3, 4]
    assert resumed["history"][:3] == monitored["history"][:3]  # restored from the checkpoint
    start = resumed["weights"][2]["model"]
    assert all(
        torch.equal(value, start[key]) for key, value in monitored["weights"][2]["model"].items()
    )
